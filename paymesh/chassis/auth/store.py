"""The operators' side of the keys: create, list, roll and revoke them in the KV bucket."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from paymesh.chassis.auth.bucket import BUCKET, ENTRY_PREFIX, ensure_bucket, entry_name, used_entry
from paymesh.chassis.auth.keys import ApiKey, ApiKeyRecord, Pepper, new_key, successor
from paymesh.chassis.auth.registry import utc_now
from paymesh.chassis.auth.scopes import Scope
from paymesh.chassis.errors import FailedPrecondition, NotFound

# Two operators changing the same key at once: each change reads, then writes only if nobody wrote
# in between (the entry's revision), and reads again if somebody did.
WRITE_ATTEMPTS = 5


class KeyNotFound(NotFound):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key {key_id}: `paymesh keys list` shows the keys", reason="KEY_NOT_FOUND",
                         metadata={"key_id": key_id})


class KeyStore:
    """Writes records under `key.<key_id>`; every KeyRegistry following the bucket sees each write."""

    def __init__(self, kv: KeyValue, pepper: Pepper, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._kv = kv
        self._pepper = pepper
        self._clock = clock

    @classmethod
    async def open(cls, js: JetStreamContext, pepper: Pepper, *, replicas: int = 1, bucket: str = BUCKET,
                   clock: Callable[[], datetime] = utc_now) -> KeyStore:
        return cls(await ensure_bucket(js, replicas, bucket), pepper, clock=clock)

    async def create(
        self,
        merchant_id: str,
        scopes: frozenset[Scope],
        expires_in: timedelta | None = None,
        operator: bool = False,
    ) -> tuple[ApiKeyRecord, ApiKey]:
        """A new key; the secret is returned here and nowhere else, ever."""
        record, secret = new_key(self._pepper, merchant_id, scopes, self._clock(),
                                 expires_in=expires_in, operator=operator)
        await self._kv.create(entry_name(record.key_id), record.to_json())
        return record, secret

    async def put(self, record: ApiKeyRecord) -> None:
        await self._kv.put(entry_name(record.key_id), record.to_json())

    async def get(self, key_id: str) -> ApiKeyRecord:
        return (await self._read(key_id))[0]

    async def list(self, merchant_id: str | None = None) -> list[ApiKeyRecord]:
        """Records (never secrets), oldest first; one merchant's if named."""
        try:
            names = await self._kv.keys()
        except NoKeysError:
            return []
        records = []
        for name in names:
            if not name.startswith(ENTRY_PREFIX):
                continue
            try:
                record = (await self._read(name[len(ENTRY_PREFIX):]))[0]
            except KeyNotFound:
                continue  # deleted since the names were listed
            if merchant_id is None or record.merchant_id == merchant_id:
                records.append(record)
        return sorted(records, key=lambda r: (r.created_at, r.key_id))

    async def last_used(self, key_id: str) -> datetime | None:
        """When a replica last admitted the key, to within LAST_USE_GRAIN; None: never (or not yet written)."""
        try:
            entry = await self._kv.get(used_entry(key_id))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return datetime.fromisoformat(entry.value.decode()) if entry.value else None

    async def revoke(self, key_id: str, now: datetime | None = None) -> ApiKeyRecord:
        """Refused by every replica as soon as it sees this write; revoking twice keeps the first time."""
        when = self._clock() if now is None else now
        for _ in range(WRITE_ATTEMPTS):
            record, revision = await self._read(key_id)
            revoked = record.revoked(when)
            if revoked is record:
                return record
            if await self._write(revoked, revision):
                return revoked
        raise FailedPrecondition(f"API key {key_id} kept changing while being revoked; try again",
                                 reason="KEY_CONTENDED", metadata={"key_id": key_id})

    async def roll(self, key_id: str, grace: timedelta, now: datetime | None = None) -> tuple[ApiKeyRecord, ApiKey]:
        """A new key with the old one's merchant and scopes; the old one works until now + grace."""
        if grace < timedelta(0):
            raise ValueError(f"grace must not be negative, got {grace}")
        when = self._clock() if now is None else now
        for _ in range(WRITE_ATTEMPTS):
            old, revision = await self._read(key_id)
            if old.revoked_at is not None:
                raise FailedPrecondition(f"API key {key_id} is revoked; create a new key instead of rolling it",
                                         reason="KEY_REVOKED", metadata={"key_id": key_id})
            if old.expires_at is not None and old.expires_at <= when:
                raise FailedPrecondition(f"API key {key_id} has expired; create a new key instead of rolling it",
                                         reason="KEY_EXPIRED", metadata={"key_id": key_id})
            new, secret = successor(self._pepper, old, when)
            # The new key first: if the second write fails, the old key is untouched and still works.
            await self._kv.create(entry_name(new.key_id), new.to_json())
            if await self._write(old.rolled(new.key_id, when, grace), revision):
                return new, secret
            await self._kv.delete(entry_name(new.key_id))  # lost a race with another change: undo, read again
        raise FailedPrecondition(f"API key {key_id} kept changing while being rolled; try again",
                                 reason="KEY_CONTENDED", metadata={"key_id": key_id})

    async def _read(self, key_id: str) -> tuple[ApiKeyRecord, int]:
        try:
            entry = await self._kv.get(entry_name(key_id))
        except (KeyNotFoundError, KeyDeletedError):
            raise KeyNotFound(key_id) from None
        if not entry.value or entry.revision is None:
            raise KeyNotFound(key_id)
        return ApiKeyRecord.from_json(entry.value), entry.revision

    async def _write(self, record: ApiKeyRecord, revision: int) -> bool:
        try:
            await self._kv.update(entry_name(record.key_id), record.to_json(), last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True
