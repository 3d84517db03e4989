"""Standard Webhooks signatures: the endpoint secrets (`whsec_...`), the headers that sign a delivery, and the
check a receiver makes of them (`verify`)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _random
import time
from collections.abc import Mapping, Sequence

PREFIX = "whsec_"
SECRET_BYTES = 24
HINT_CHARS = 4
USER_AGENT = "paymesh-webhooks/1"
# How far a delivery's webhook-timestamp may be from the receiver's clock (the spec's and Stripe's 5 minutes):
# a captured delivery replayed later is refused.
TOLERANCE_S = 300


class InvalidSecret(ValueError):
    """A stored secret that is not `whsec_` and base64; the message never holds the secret itself."""


class InvalidSignature(ValueError):
    """A delivery that does not verify: a header missing or malformed, its timestamp outside the tolerance, or
    no signature made with the secret. The message never holds the secret or a signature."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(_random.token_bytes(SECRET_BYTES)).decode("ascii")


def _key(secret: str) -> bytes:
    if not secret.startswith(PREFIX):
        raise InvalidSecret(f"a webhook signing secret starts with {PREFIX}")
    try:
        # Padding is added as the standardwebhooks package does, so a secret it accepts is accepted here.
        key = base64.b64decode(secret[len(PREFIX):] + "==")
    except (binascii.Error, ValueError):
        raise InvalidSecret(f"a webhook signing secret is {PREFIX} followed by base64") from None
    if not key:
        raise InvalidSecret("a webhook signing secret may not be empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """During a secret roll the old and the new secret both sign, so a receiver holding either verifies."""
    if not secrets:
        raise InvalidSecret("a delivery needs at least one signing secret")
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def secret_hint(secret: str) -> str:
    """Enough to tell two secrets apart on a screen, too little to sign with."""
    rest = secret[len(PREFIX):] if secret.startswith(PREFIX) else secret
    return PREFIX + rest[:HINT_CHARS]


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, tolerance_s: int = TOLERANCE_S) -> None:
    """Return when `body` and `headers` are a delivery signed with `secret` within `tolerance_s` of now; raise
    InvalidSignature otherwise. Header names are matched in any case; any one `v1,` signature of the
    space-separated header may match (two sign during a secret roll), each compared in constant time."""
    named = {name.lower(): value for name, value in headers.items()}
    msg_id, raw_timestamp, signatures = (named.get(h, "") for h in
                                         ("webhook-id", "webhook-timestamp", "webhook-signature"))
    missing = [h for h, v in (("webhook-id", msg_id), ("webhook-timestamp", raw_timestamp),
                              ("webhook-signature", signatures)) if not v]
    if missing:
        raise InvalidSignature(f"missing header {', '.join(missing)}")
    if not (raw_timestamp.isascii() and raw_timestamp.isdigit()):
        raise InvalidSignature("webhook-timestamp is not whole seconds since the epoch")
    timestamp = int(raw_timestamp)
    skew = time.time() - timestamp
    if skew > tolerance_s:
        raise InvalidSignature(f"webhook-timestamp is {skew:.0f}s old, past the {tolerance_s}s tolerance")
    if -skew > tolerance_s:
        raise InvalidSignature(f"webhook-timestamp is {-skew:.0f}s ahead, past the {tolerance_s}s tolerance")
    expected = base64.b64decode(sign(secret, msg_id, timestamp, body).removeprefix("v1,"))
    matched = False
    for versioned in signatures.split(" "):
        version, _, given = versioned.partition(",")
        if version != "v1":
            continue  # a scheme this receiver does not know (v1a: asymmetric) is not a failure by itself
        try:
            candidate = base64.b64decode(given, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Every candidate is compared, so the time taken says nothing about which (if any) matched.
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise InvalidSignature("no v1 signature in webhook-signature matches the secret")
