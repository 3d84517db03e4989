"""Every replica's copy of the API keys: a dict by keyed hash, following the KV bucket as it changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from paymesh.chassis import periodic
from paymesh.chassis.auth.bucket import BUCKET, ENTRY_PREFIX, bind_bucket, used_entry
from paymesh.chassis.auth.errors import ApiKeyInvalid, ApiKeyMissing
from paymesh.chassis.auth.keys import ApiKeyRecord, Pepper, Principal, TrustedKey, check, digest, looks_like_key

log = logging.getLogger(__name__)

# How often the registry asks its connection whether it reconnected (a local counter, no network).
RECONNECT_CHECK_S = 0.25
# "Last used" is kept coarse: a replica writes a key's last use at most once per grain, from a periodic
# flush, so a call costs a dict store and the bucket a write per key per replica per grain.
LAST_USE_GRAIN = timedelta(minutes=5)
LAST_USE_FLUSH_S = 30.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Index:
    """Records by digest (for the call) and by key id (for a delete, which carries only the entry's name)."""

    def __init__(self) -> None:
        self.by_digest: dict[str, ApiKeyRecord] = {}
        self.by_key_id: dict[str, ApiKeyRecord] = {}

    def apply(self, entry: KeyValue.Entry) -> None:
        if not entry.key.startswith(ENTRY_PREFIX):
            return
        self.remove(entry.key[len(ENTRY_PREFIX):])
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            return
        try:
            record = ApiKeyRecord.from_json(entry.value)
        except (ValueError, KeyError, TypeError):
            log.error("API key entry %s (revision %s) is unreadable; skipped", entry.key, entry.revision)
            return
        self.by_digest[record.digest] = record
        self.by_key_id[record.key_id] = record

    def remove(self, key_id: str) -> None:
        old = self.by_key_id.pop(key_id, None)
        if old is not None:
            self.by_digest.pop(old.digest, None)


class KeyRegistry:
    """`lookup` is one HMAC and a dict lookup, no network: the watcher keeps the dict current.

    `start` waits for the bucket (the operator makes it: a service's NATS user may only read it) and returns
    once every key it holds is loaded. After a NATS reconnect the watcher
    is made again and the whole dict reloaded from it, so a change missed while away is not kept.
    """

    def __init__(
        self,
        nc: NATS,
        pepper: Pepper,
        *,
        bucket: str = BUCKET,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._nc = nc
        self._pepper = pepper
        self._bucket = bucket
        self._clock = clock
        self._index = _Index()
        self._trusted: dict[str, ApiKeyRecord] = {}  # by digest; kept across reloads of the bucket
        self._kv: KeyValue | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._follow: asyncio.Task[None] | None = None
        self._guard: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._reconnects = 0
        self._used: dict[str, datetime] = {}  # key id -> last admitted here, not yet written
        self._written: dict[str, datetime] = {}  # key id -> the last use this replica wrote
        self._flusher: asyncio.Task[None] | None = None
        self.loads = 0  # how many times the dict was loaded whole: 1 after start, +1 per reconnect

    async def start(self, timeout: float = 10.0) -> None:
        self._kv = await bind_bucket(self._nc.jetstream(), self._bucket)
        self._reconnects = self._nc.stats["reconnects"]
        await self._load(timeout)
        self._guard = asyncio.create_task(
            periodic.every(RECONNECT_CHECK_S, self._reload_after_reconnect, stop=self._stop, name="key registry"))
        self._flusher = asyncio.create_task(
            periodic.every(LAST_USE_FLUSH_S, self.flush_last_use, stop=self._stop, name="key last use"))

    async def stop(self) -> None:
        self._stop.set()
        for task in (self._guard, self._follow, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._stop_watcher(self._watcher)
        self._watcher = None

    def lookup(self, secret: str | None, now: datetime | None = None) -> Principal:
        """The caller this secret names, or an Unauthenticated refusal that never repeats the secret."""
        if not secret:
            raise ApiKeyMissing()
        if not looks_like_key(secret):
            raise ApiKeyInvalid("this is not a paymesh API key (they start sk_mesh_, ok_mesh_ or pl_mesh_)")
        # A dict lookup by the HMAC, not a compare of secrets: what timing could reveal is about
        # the digest, which the caller cannot steer without the pepper; no constant-time compare needed.
        hashed = digest(self._pepper, secret)
        record = self._index.by_digest.get(hashed)
        when = self._clock() if now is None else now
        if record is None:
            return check(self._trusted.get(hashed), when)  # a key from settings has no last use to keep
        principal = check(record, when)
        self._used[record.key_id] = when
        return principal

    async def flush_last_use(self) -> None:
        """Write `used.<key_id>` for each key admitted since the last flush whose last write here is a grain old."""
        if self._kv is None:
            return
        due = {k: t for k, t in self._used.items() if t - self._written.get(k, datetime.min.replace(tzinfo=UTC))
               >= LAST_USE_GRAIN}
        self._used = {k: t for k, t in self._used.items() if k not in due}
        for key_id, when in due.items():
            await self._kv.put(used_entry(key_id), when.astimezone(UTC).isoformat(timespec="seconds").encode())
            self._written[key_id] = when

    def trust(self, key: TrustedKey) -> None:
        """Admit a key from the service's settings (the bank's platform key) beside the bucket's."""
        record = key.record(self._pepper, self._clock())
        self._trusted[record.digest] = record

    def record(self, key_id: str) -> ApiKeyRecord | None:
        return self._index.by_key_id.get(key_id)

    def __len__(self) -> int:
        return len(self._index.by_key_id)

    async def _load(self, timeout: float) -> None:
        """A new watcher: its initial values (up to the None marker) become the new dict, swapped in whole."""
        assert self._kv is not None
        watcher = await self._kv.watchall()
        fresh = _Index()
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"API keys of bucket {self._bucket} not loaded within {timeout:.0f}s")
                try:
                    entry = await watcher.updates(timeout=left)  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
                except nats.errors.TimeoutError:
                    continue
                if entry is None:  # the marker: every current key delivered
                    break
                fresh.apply(entry)
        except BaseException:
            await self._stop_watcher(watcher)
            raise
        old_watcher, old_follow = self._watcher, self._follow
        self._index, self._watcher = fresh, watcher
        self._follow = asyncio.create_task(self._follow_changes(watcher, fresh))
        self.loads += 1
        log.info("API key registry loaded: %d keys", len(fresh.by_key_id))
        if old_follow is not None:
            old_follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await old_follow
        await self._stop_watcher(old_watcher)

    async def _follow_changes(self, watcher: KeyValue.KeyWatcher, index: _Index) -> None:
        async for entry in watcher:
            if entry is not None:
                index.apply(entry)

    async def _reload_after_reconnect(self) -> None:
        reconnects = self._nc.stats["reconnects"]
        if reconnects == self._reconnects or not self._nc.is_connected:
            return
        log.info("NATS reconnected: reloading the API key registry")
        await self._load(timeout=10.0)
        self._reconnects = reconnects  # only once loaded: a failed reload is tried again next period

    @staticmethod
    async def _stop_watcher(watcher: KeyValue.KeyWatcher | None) -> None:
        if watcher is None:
            return
        with contextlib.suppress(Exception):  # its subscription may be gone with the old connection
            await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
