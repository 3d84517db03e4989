"""API keys, pure: making a secret, its keyed hash, the stored record, and checking one at a call."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from paymesh.chassis.auth.errors import ApiKeyExpired, ApiKeyInvalid, ApiKeyRevoked, ScopeMissing
from paymesh.chassis.auth.scopes import PLATFORM_SCOPES, Scope

# The prefix says what a key is, as Stripe's `sk_live_`: a person (or a secret scanner on a
# pushed commit) recognises a paymesh credential, and tells a merchant's key from an operator's,
# at a glance. `sk` is a merchant's secret key, `ok` an operator's, `pl` the platform's own (what
# payment_svc shows the bank); `mesh` names the issuer.
MERCHANT_PREFIX = "sk_mesh_"
OPERATOR_PREFIX = "ok_mesh_"
PLATFORM_PREFIX = "pl_mesh_"
KEY_PREFIXES = (MERCHANT_PREFIX, OPERATOR_PREFIX, PLATFORM_PREFIX)
# The merchant_id of a principal that is paymesh itself (the platform key) or one of its operators.
PLATFORM_MERCHANT = "platform"
KEY_ID_PREFIX = "key_"
SECRET_BYTES = 32  # 256 bits from `secrets`; DESIGN.md asks at least 128
DISPLAY_CHARS = 12  # `sk_mesh_AbCd`: the prefix and 4 of 43 random characters, enough to tell keys apart

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(raw: bytes) -> str:
    """Fixed width for the byte count, so every key has the same length; no `-` or `_` in it, so a
    double-click selects it whole."""
    number = int.from_bytes(raw, "big")
    width = 1
    while 62**width < 256 ** len(raw):
        width += 1
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(reversed(chars))


SECRET_LENGTH = len(MERCHANT_PREFIX) + len(_base62(bytes(SECRET_BYTES)))


@dataclass(frozen=True)
class ApiKey:
    """The secret itself, shown once at creation; its repr and str hide all but the display prefix."""

    value: str = field(repr=False)

    def reveal(self) -> str:
        """The secret, for the one place that prints it to the operator who asked for it."""
        return self.value

    def __repr__(self) -> str:
        return f"ApiKey({self.value[:DISPLAY_CHARS]}…)"

    __str__ = __repr__


@dataclass(frozen=True)
class Pepper:
    """The server-side HMAC key; never printed."""

    value: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "Pepper(<hidden>)"

    __str__ = __repr__


def new_secret(*, operator: bool = False, prefix: str | None = None) -> ApiKey:
    prefix = prefix or (OPERATOR_PREFIX if operator else MERCHANT_PREFIX)
    return ApiKey(prefix + _base62(secrets.token_bytes(SECRET_BYTES)))


def new_platform_key() -> ApiKey:
    """The secret the bank (gateway_mock) knows paymesh by: `paymesh up` makes one and gives it to both."""
    return new_secret(prefix=PLATFORM_PREFIX)


def new_key_id() -> str:
    """Public, to name a key in lists, logs and commands; unrelated to the secret."""
    return KEY_ID_PREFIX + _base62(secrets.token_bytes(12))


def digest(pepper: Pepper, secret: str) -> str:
    """HMAC-SHA256(pepper, secret), hex: what is stored and looked up. A slow password hash buys
    nothing for 256 random bits and would cost every call."""
    return hmac.new(pepper.value, secret.encode(), hashlib.sha256).hexdigest()


def looks_like_key(secret: str) -> bool:
    """A cheap refusal of what cannot be a key, before hashing it."""
    return len(secret) == SECRET_LENGTH and secret.startswith(KEY_PREFIXES)


def is_platform_key(secret: str) -> bool:
    """Whether a setting holds a platform key (`pl_mesh_` and its random part), as `new_platform_key` makes."""
    return looks_like_key(secret) and secret.startswith(PLATFORM_PREFIX)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _parse_time(value: object) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class ApiKeyRecord:
    """A key as stored: its keyed hash, never the secret. Times are timezone-aware (UTC)."""

    key_id: str
    digest: str = field(repr=False)  # useless without the pepper, still nobody's business in a log
    display_prefix: str
    merchant_id: str
    scopes: frozenset[Scope]
    created_at: datetime
    operator: bool = False
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    replaced_by: str | None = None  # the key a roll made; this one expires at the end of the grace

    def revoked(self, now: datetime) -> ApiKeyRecord:
        return self if self.revoked_at is not None else replace(self, revoked_at=now)

    def rolled(self, successor: str, now: datetime, grace: timedelta) -> ApiKeyRecord:
        """This key after a roll: valid until now + grace (or its own expiry, if sooner)."""
        end = now + grace
        if self.expires_at is not None and self.expires_at < end:
            end = self.expires_at
        return replace(self, expires_at=end, replaced_by=successor)

    def to_json(self) -> bytes:
        return json.dumps({
            "key_id": self.key_id,
            "digest": self.digest,
            "display_prefix": self.display_prefix,
            "merchant_id": self.merchant_id,
            "scopes": sorted(s.value for s in self.scopes),
            "operator": self.operator,
            "created_at": _time(self.created_at),
            "expires_at": _time(self.expires_at),
            "revoked_at": _time(self.revoked_at),
            "replaced_by": self.replaced_by,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ApiKeyRecord:
        """Unknown fields are ignored, and unknown scopes dropped: a newer writer's record still reads."""
        raw: dict[str, Any] = json.loads(data)
        created = _parse_time(raw.get("created_at"))
        if created is None:
            raise ValueError(f"API key record {raw.get('key_id')} has no created_at")
        return cls(
            key_id=str(raw["key_id"]),
            digest=str(raw["digest"]),
            display_prefix=str(raw["display_prefix"]),
            merchant_id=str(raw["merchant_id"]),
            scopes=frozenset(Scope(s) for s in raw.get("scopes", []) if s in Scope._value2member_map_),
            created_at=created,
            operator=bool(raw.get("operator", False)),
            expires_at=_parse_time(raw.get("expires_at")),
            revoked_at=_parse_time(raw.get("revoked_at")),
            replaced_by=raw.get("replaced_by"),
        )


def new_key(
    pepper: Pepper,
    merchant_id: str,
    scopes: frozenset[Scope],
    now: datetime,
    *,
    expires_in: timedelta | None = None,
    operator: bool = False,
) -> tuple[ApiKeyRecord, ApiKey]:
    """A fresh key and its record. A merchant key cannot hold `operator`; an operator key always does."""
    if not merchant_id:
        raise ValueError("a key belongs to a merchant: merchant_id is empty")
    if scopes & PLATFORM_SCOPES and not operator:
        held = ", ".join(sorted(s.value for s in scopes & PLATFORM_SCOPES))
        raise ValueError(f"scope {held} is for operator keys only (create one with operator=True)")
    if operator:
        scopes = scopes | {Scope.OPERATOR}
    if not scopes:
        raise ValueError("a key needs at least one scope")
    if expires_in is not None and expires_in <= timedelta(0):
        raise ValueError(f"expires_in must be positive, got {expires_in}")
    secret = new_secret(operator=operator)
    record = ApiKeyRecord(
        key_id=new_key_id(),
        digest=digest(pepper, secret.reveal()),
        display_prefix=secret.reveal()[:DISPLAY_CHARS],
        merchant_id=merchant_id,
        scopes=frozenset(scopes),
        created_at=now,
        operator=operator,
        expires_at=None if expires_in is None else now + expires_in,
    )
    return record, secret


def successor(pepper: Pepper, old: ApiKeyRecord, now: datetime) -> tuple[ApiKeyRecord, ApiKey]:
    """The key a roll makes: the same merchant, scopes and kind, and the same lifetime if it had one."""
    lifetime = None if old.expires_at is None else old.expires_at - old.created_at
    return new_key(pepper, old.merchant_id, old.scopes - {Scope.OPERATOR}, now,
                   expires_in=lifetime, operator=old.operator)


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the handler receives it: never a string fished out of metadata."""

    merchant_id: str
    key_id: str
    scopes: frozenset[Scope]
    is_operator: bool

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise ScopeMissing(scope, self.key_id)


def check(record: ApiKeyRecord | None, now: datetime) -> Principal:
    """The caller a looked-up record names, or the refusal: unknown, revoked, expired (in that order)."""
    if record is None:
        raise ApiKeyInvalid()
    # A revocation counts from when a replica sees it, whatever the revoking operator's clock said.
    if record.revoked_at is not None:
        raise ApiKeyRevoked(record.key_id, record.revoked_at.isoformat())
    if record.expires_at is not None and record.expires_at <= now:
        raise ApiKeyExpired(record.key_id, record.expires_at.isoformat())
    return Principal(
        merchant_id=record.merchant_id,
        key_id=record.key_id,
        scopes=record.scopes,
        is_operator=record.operator and Scope.OPERATOR in record.scopes,
    )



@dataclass(frozen=True)
class TrustedKey:
    """A key a service trusts from its own settings, not from the bucket: the bank's platform key. It
    cannot be revoked from the bucket; a new one is a new setting and a restart."""

    name: str  # stands for the key id in logs and refusals: the setting it came from
    secret: ApiKey
    scopes: frozenset[Scope]

    def record(self, pepper: Pepper, now: datetime) -> ApiKeyRecord:
        return ApiKeyRecord(key_id=self.name, digest=digest(pepper, self.secret.reveal()),
                            display_prefix=self.secret.reveal()[:DISPLAY_CHARS], merchant_id=PLATFORM_MERCHANT,
                            scopes=self.scopes, created_at=now)
