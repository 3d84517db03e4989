"""The merchants that own keys: a record per merchant under `merchant.<merchant_id>` in the keys' bucket."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import InvalidKeyError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from paymesh.chassis.auth.bucket import BUCKET, ensure_bucket
from paymesh.chassis.auth.registry import utc_now
from paymesh.chassis.errors import AlreadyExists, InvalidArgument, NotFound

# Beside the keys, so one bucket (one replication, one backup) holds who may call; the registry
# reads only `key.` entries, so these cost a replica nothing but the watch.
MERCHANT_PREFIX = "merchant."
MERCHANT_ID_PREFIX = "mer_"
MAX_NAME_CHARS = 200
MERCHANT_ID_MAX = 40  # the stores' merchant_id column (paymesh.chassis.schema_steps.MERCHANT_ID_LENGTH)


def merchant_entry(merchant_id: str) -> str:
    return MERCHANT_PREFIX + merchant_id


def new_merchant_id() -> str:
    return MERCHANT_ID_PREFIX + secrets.token_hex(8)


class MerchantNotFound(NotFound):
    def __init__(self, merchant_id: str) -> None:
        super().__init__(f"no merchant {merchant_id}: `paymesh merchants list` shows the merchants",
                         reason="MERCHANT_NOT_FOUND", metadata={"merchant_id": merchant_id})


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    name: str
    created_at: datetime

    def to_json(self) -> bytes:
        return json.dumps({
            "merchant_id": self.merchant_id,
            "name": self.name,
            "created_at": self.created_at.astimezone(UTC).isoformat(),
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Merchant:
        """Unknown fields are ignored: a newer writer's record still reads."""
        raw: dict[str, Any] = json.loads(data)
        return cls(merchant_id=str(raw["merchant_id"]), name=str(raw["name"]),
                   created_at=datetime.fromisoformat(str(raw["created_at"])))


def checked_name(name: str) -> str:
    """A name a person gave, trimmed; refused if empty, too long or holding control characters."""
    trimmed = name.strip()
    if not trimmed:
        raise InvalidArgument("a merchant needs a name", reason="MERCHANT_NAME_EMPTY")
    if len(trimmed) > MAX_NAME_CHARS:
        raise InvalidArgument(f"a merchant name has at most {MAX_NAME_CHARS} characters, this one {len(trimmed)}",
                              reason="MERCHANT_NAME_TOO_LONG")
    if not trimmed.isprintable():
        raise InvalidArgument("a merchant name cannot hold control characters (newlines, tabs, ...)",
                              reason="MERCHANT_NAME_INVALID")
    return trimmed


class MerchantStore:
    """Create, read and list merchants; names need not be unique (the id is what keys and rows carry)."""

    def __init__(self, kv: KeyValue, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._kv = kv
        self._clock = clock

    @classmethod
    async def open(cls, js: JetStreamContext, *, replicas: int = 1, bucket: str = BUCKET,
                   clock: Callable[[], datetime] = utc_now) -> MerchantStore:
        return cls(await ensure_bucket(js, replicas, bucket), clock=clock)

    async def create(self, name: str, merchant_id: str | None = None) -> Merchant:
        """A new merchant; `merchant_id` picks its id (one already taken is refused ALREADY_EXISTS)."""
        merchant = Merchant(merchant_id or new_merchant_id(), checked_name(name), self._clock())
        if not merchant.merchant_id.startswith(MERCHANT_ID_PREFIX) or len(merchant.merchant_id) > MERCHANT_ID_MAX:
            raise InvalidArgument(f"a merchant id starts {MERCHANT_ID_PREFIX} and has at most {MERCHANT_ID_MAX} "
                                  "characters", reason="MERCHANT_ID_INVALID")
        try:
            await self._kv.create(merchant_entry(merchant.merchant_id), merchant.to_json())
        except KeyWrongLastSequenceError:
            raise AlreadyExists(f"merchant {merchant.merchant_id} exists already", reason="MERCHANT_EXISTS",
                                metadata={"merchant_id": merchant.merchant_id}) from None
        return merchant

    async def get(self, merchant_id: str) -> Merchant:
        try:
            entry = await self._kv.get(merchant_entry(merchant_id))
        except (KeyNotFoundError, KeyDeletedError, InvalidKeyError):  # an id no entry name can hold: none such
            raise MerchantNotFound(merchant_id) from None
        if not entry.value:
            raise MerchantNotFound(merchant_id)
        return Merchant.from_json(entry.value)

    async def list(self) -> list[Merchant]:
        """Oldest first."""
        try:
            names = await self._kv.keys()
        except NoKeysError:
            return []
        merchants = []
        for name in names:
            if not name.startswith(MERCHANT_PREFIX):
                continue
            try:
                merchants.append(await self.get(name[len(MERCHANT_PREFIX):]))
            except MerchantNotFound:
                continue  # deleted since the names were listed
        return sorted(merchants, key=lambda m: (m.created_at, m.merchant_id))
