"""Page tokens (AIP-158): opaque, signed, and valid only for the list, merchant and filters they were issued for.

A token is `base64url(version || fields || mac)`, unpadded: `version` one byte, each cursor field a 2-byte
length and its UTF-8 bytes, `mac` the first 16 bytes of HMAC-SHA256 over the binding (method, merchant, filters,
each length-prefixed), the version and the fields. The binding is signed, not carried: a token says
nothing of the query it came from, and one replayed for another merchant or other filters fails the MAC like a
tampered one. The fields are a flat list of strings the issuer fixes per list, checked only after the MAC, so
nothing a client sends is parsed beyond base64: no nesting, no JSON.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from paymesh.chassis.auth.keys import Pepper
from paymesh.chassis.validation import Violations

VERSION = 1
MAC_BYTES = 16  # 128 bits: forging one is as hard as guessing a key; the token stays short
MAX_TOKEN_CHARS = 512  # far past any cursor we issue; longer is refused before it is decoded
# Why the key is not the pepper: a pepper hashes API keys, and a key used for two purposes lets one
# purpose's outputs be replayed in the other. HMAC under a fixed label gives a key of its own.
KEY_LABEL = b"paymesh page token v1"
REFUSAL = ("is not valid or has expired (a token works only with the filters of the call that returned it); "
           "start again without one")
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")


def _encoded(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _framed(parts: Sequence[str], width: int = 2) -> bytes:
    """Each part as a `width`-byte length and its bytes: no two different lists frame to the same bytes."""
    out = bytearray()
    for part in parts:
        raw = part.encode()
        if len(raw) >= 1 << (8 * width):
            raise ValueError(f"a page token part is {len(raw)} bytes; at most {(1 << (8 * width)) - 1}")
        out += len(raw).to_bytes(width, "big") + raw
    return bytes(out)


def _unframed(raw: bytes, count: int) -> tuple[str, ...] | None:
    """Exactly `count` framed parts filling `raw`, else None."""
    parts: list[str] = []
    at = 0
    while at < len(raw) and len(parts) < count:
        size = int.from_bytes(raw[at : at + 2], "big")
        at += 2
        if at + size > len(raw):
            return None
        try:
            parts.append(raw[at : at + size].decode())
        except UnicodeDecodeError:
            return None
        at += size
    return tuple(parts) if len(parts) == count and at == len(raw) else None


@dataclass(frozen=True)
class PageTokens:
    """The signer of one mesh's page tokens; every replica derives the same key from the pepper they share."""

    key: bytes = field(repr=False)

    @classmethod
    def from_pepper(cls, pepper: Pepper) -> PageTokens:
        return cls(hmac.new(pepper.value, KEY_LABEL, hashlib.sha256).digest())

    def bind(self, method: str, merchant_id: str, filters: Sequence[str] = ()) -> TokenBinding:
        """Tokens of `method` (its full name) for `merchant_id`, under these exact filter values. Any values: a
        request's filters are bound before they are validated (its violations are reported all at once), and
        grpc lets a string be megabytes long."""
        return TokenBinding(self.key, _framed([method, merchant_id, *filters], width=4))


@dataclass(frozen=True)
class TokenBinding:
    """Issues and reads the tokens of one query: a list, a merchant, its filters."""

    key: bytes = field(repr=False)
    context: bytes

    def _mac(self, body: bytes) -> bytes:
        framed_context = len(self.context).to_bytes(8, "big") + self.context
        return hmac.new(self.key, framed_context + body, hashlib.sha256).digest()[:MAC_BYTES]

    def issue(self, cursor: Sequence[str]) -> str:
        """The token of the page after `cursor` (the fields its reader will be handed back, in order)."""
        body = bytes([VERSION]) + _framed(cursor)
        return _encoded(body + self._mac(body))

    def read(self, v: Violations, token: str, fields: int) -> tuple[str, ...] | None:
        """The `fields` cursor fields of a token this binding issued; None for the first page (no token) or a
        token refused on `v` (altered, for another merchant or other filters, from an older release)."""
        if not token:
            return None
        cursor = self._verified(token, fields)
        if cursor is None:
            v.add("page_token", REFUSAL)
        return cursor

    def _verified(self, token: str, fields: int) -> tuple[str, ...] | None:
        if len(token) > MAX_TOKEN_CHARS or not _ALPHABET.fullmatch(token):
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        if _encoded(raw) != token:  # another spelling of the same bytes (the last character's spare bits)
            return None
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if len(raw) <= MAC_BYTES or not hmac.compare_digest(mac, self._mac(body)):
            return None
        if body[0] != VERSION:
            return None
        return _unframed(body[1:], fields)
