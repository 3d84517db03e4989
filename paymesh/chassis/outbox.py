"""Transactional outbox: events committed with the state change, then relayed to JetStream."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Insert

from paymesh.chassis import tracing
from paymesh.chassis.backoff import Backoff
from paymesh.chassis.db import Database, as_utc
from paymesh.chassis.events import TRACEPARENT, OutboundEvent
from paymesh.chassis.jetstream import DuplicateInBatch, publish_atomic, publish_each
from paymesh.chassis.periodic import pause

if TYPE_CHECKING:
    from paymesh.chassis.observability import Telemetry

log = logging.getLogger(__name__)


# Up to this many rows are published one by one (~0.45 ms each here); more go as one
# atomic batch, whose commit costs ~3.5 ms whatever its size but one ack for all.
SEQUENTIAL_MAX = 6
# Between attempts to publish the same oldest rows while NATS is away.
PUBLISH_RETRY = Backoff(base_s=0.1, cap_s=2.0)


def outbox_table(metadata: MetaData) -> Table:
    if "outbox" in metadata.tables:
        return metadata.tables["outbox"]
    table = Table(
        "outbox",
        metadata,
        # Integer on SQLite so it is the rowid alias and autoincrements; 64-bit elsewhere.
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("subject", String(255), nullable=False),
        Column("type", String(255), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("headers", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("sent_at", DateTime(timezone=True), nullable=True),
    )
    unsent = table.c.sent_at.is_(None)
    Index("ix_outbox_unsent", table.c.id, sqlite_where=unsent, postgresql_where=unsent)
    Table(
        "outbox_lease",
        metadata,
        Column("name", String(50), primary_key=True),
        Column("holder", String(64), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
    )
    return table


@functools.cache
def _insert(outbox: Table) -> Insert:
    """Built once per table: SQLAlchemy then skips building and keying it on every commit."""
    return insert(outbox)


async def add(conn: AsyncConnection, outbox: Table, events: Sequence[OutboundEvent]) -> None:
    """Write events in the caller's transaction (one executemany); they commit or vanish with it."""
    if not events:
        return
    now = datetime.now(UTC)
    await conn.execute(
        _insert(outbox),
        [
            {
                "event_id": e.event_id,
                "subject": e.subject,
                "type": e.type,
                "payload": e.payload,
                "headers": json.dumps(e.headers),
                "created_at": now,
            }
            for e in events
        ],
    )


class OutboxRelay:
    """Publishes unsent outbox rows in commit (id) order as JetStream atomic batches.

    Woken by `wake()` after each commit; polls every `poll_interval_s` as a fallback.
    A row is marked sent only after JetStream acknowledged its batch, so a crash
    in between resends it, and the stream drops the resend by its Nats-Msg-Id.
    Through a NATS outage it retries the same oldest rows with backoff: nothing is
    skipped, nothing overtakes.
    """

    def __init__(
        self,
        db: Database,
        outbox: Table,
        nc: NATS,
        *,
        batch_size: int = 100,
        poll_interval_s: float = 1.0,
        ack_timeout_s: float = 5.0,
        retention: timedelta = timedelta(hours=24),
        lease_ttl: timedelta = timedelta(seconds=10),
        holder: str | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.db = db
        self.telemetry = telemetry
        self.lease = outbox.metadata.tables["outbox_lease"]
        self.lease_ttl = lease_ttl
        # A replica's stable name (service, host, address): restarted after a crash, it takes
        # its lease back at once instead of waiting out the dead process's TTL.
        self.holder = (holder or uuid.uuid4().hex)[:64]
        self._lease_until: datetime | None = None
        self.outbox = outbox
        self._pending = (
            select(outbox).where(outbox.c.sent_at.is_(None)).order_by(outbox.c.id).limit(bindparam("limit"))
        )
        self._mark_sent = (
            update(outbox)
            .where(outbox.c.event_id.in_(bindparam("event_ids", expanding=True)))
            .values(sent_at=bindparam("sent_at"))
        )
        self.nc = nc
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.ack_timeout_s = ack_timeout_s
        self.retention = retention
        self.published = 0
        self.failures = 0  # publish attempts that failed, over the relay's life
        self._next_purge = 0.0
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        try:
            await self.release_lease()  # a standby replica takes over at once
        except Exception as exc:  # the database is going away too: the lease expires on its own
            log.warning("outbox relay: lease not released: %s", exc)

    async def run(self) -> None:
        streak = 0
        while not self._stopping:
            try:
                if not await self.hold_lease():
                    await self._sleep(self.poll_interval_s)  # standby while another replica relays
                    continue
                sent = await self.relay_once()
                streak = 0
            except Exception as exc:
                streak += 1
                self.failures += 1
                delay = PUBLISH_RETRY.delay(streak)
                log.warning("outbox relay: %s; retrying in %.2fs", exc, delay)
                await self._sleep(delay)
                continue
            if sent == self.batch_size:
                continue  # more may be waiting
            if sent == 0:
                await self._purge_sent()
            await self._sleep(self.poll_interval_s)

    async def _sleep(self, seconds: float) -> None:
        """Wait for a wake-up (a commit) or the timeout, whichever comes first."""
        await pause(seconds, self._wake)
        self._wake.clear()

    async def hold_lease(self) -> bool:
        """Whether this relay is the outbox's one active relay, taking or renewing the lease.

        One relay per outbox keeps events in commit order on the stream even with several
        replicas of a service; the others stand by and take over when the lease expires.
        Renewed at half its TTL, so a busy relay writes the lease about once every 5 s.
        """
        now = datetime.now(UTC)
        if self._lease_until is not None and now < self._lease_until - self.lease_ttl / 2:
            return True
        until = now + self.lease_ttl
        lease = self.lease
        async with self.db.unit_of_work() as uow:
            taken = await uow.conn.execute(
                update(lease)
                .where(lease.c.name == "outbox", (lease.c.holder == self.holder) | (lease.c.expires_at < now))
                .values(holder=self.holder, expires_at=until)
            )
            held = taken.rowcount == 1
            if not held:
                exists = await uow.conn.execute(select(lease.c.name).where(lease.c.name == "outbox"))
                if exists.first() is None:
                    await uow.conn.execute(insert(lease).values(name="outbox", holder=self.holder, expires_at=until))
                    held = True
            await uow.commit()
        self._lease_until = until if held else None
        return held

    async def release_lease(self) -> None:
        if self._lease_until is None:
            return
        self._lease_until = None
        async with self.db.unit_of_work() as uow:
            await uow.conn.execute(
                update(self.lease)
                .where(self.lease.c.name == "outbox", self.lease.c.holder == self.holder)
                .values(expires_at=datetime.now(UTC) - self.lease_ttl)
            )
            await uow.commit()

    async def pending(self) -> list[OutboundEvent]:
        async with self.db.read() as conn:
            rows = await conn.execute(self._pending, {"limit": self.batch_size})
            return [
                OutboundEvent(r.event_id, r.subject, r.type, r.payload, json.loads(r.headers)) for r in rows
            ]

    async def relay_once(self) -> int:
        """Publish the oldest unsent batch and mark it sent; returns how many rows were sent."""
        events = await self.pending()
        if not events:
            return 0
        spans: list[tracing.SpanHandle] = []
        if self.telemetry is not None and self.telemetry.tracing.recording:
            events, spans = self._traced(events)
        try:
            await self._publish(events)
        except BaseException as exc:
            for span in spans:
                span.fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            for span in spans:
                span.end()
        await self.mark_sent([e.event_id for e in events])
        self.published += len(events)
        if self.telemetry is not None:
            self.telemetry.metrics.outbox_relayed.inc(len(events))
        return len(events)

    def _traced(self, events: list[OutboundEvent]) -> tuple[list[OutboundEvent], list[tracing.SpanHandle]]:
        """A producer span per event under the context its row was written in; each goes out in its span's."""
        assert self.telemetry is not None
        out, spans = [], []
        for event in events:
            span = self.telemetry.tracing.start(
                f"publish {event.subject.rpartition('.')[0]}", tracing.PRODUCER, event.headers.get(TRACEPARENT),
                {"messaging.system": "nats", "messaging.operation.type": "send",
                 "messaging.destination.name": event.subject, "messaging.message.id": event.event_id})
            spans.append(span)
            out.append(replace(event, headers={**event.headers, TRACEPARENT: span.traceparent}))
        return out, spans

    async def _publish(self, events: list[OutboundEvent]) -> None:
        if len(events) <= SEQUENTIAL_MAX:
            # Small batches go one by one, each acked before the next: the same order and
            # dedupe, without the atomic commit's fixed ~3.5 ms (benchmarks/README.md).
            await publish_each(self.nc.jetstream(), events, timeout=self.ack_timeout_s)
        else:
            try:
                await publish_atomic(self.nc, events, timeout=self.ack_timeout_s)
            except DuplicateInBatch:
                # A resend after a crash between ack and mark-sent.
                await publish_each(self.nc.jetstream(), events, timeout=self.ack_timeout_s)

    async def mark_sent(self, event_ids: list[str]) -> None:
        async with self.db.unit_of_work() as uow:
            await uow.conn.execute(self._mark_sent, {"event_ids": event_ids, "sent_at": datetime.now(UTC)})
            await uow.commit()

    async def _purge_sent(self) -> None:
        """Forget rows sent longer ago than `retention`, at most once a minute, when idle."""
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + 60
        cutoff = datetime.now(UTC) - self.retention
        async with self.db.unit_of_work() as uow:
            await uow.conn.execute(
                delete(self.outbox).where(self.outbox.c.sent_at.is_not(None), self.outbox.c.sent_at < cutoff)
            )
            await uow.commit()

    async def unsent_count(self) -> int:
        return (await self.backlog())[0]

    async def backlog(self) -> tuple[int, datetime | None]:
        """How many rows are unsent, and when the oldest of them was written."""
        async with self.db.read() as conn:
            result = await conn.execute(
                select(func.count(), func.min(self.outbox.c.created_at))
                .select_from(self.outbox).where(self.outbox.c.sent_at.is_(None))
            )
            count, oldest = result.one()
            if isinstance(oldest, str):  # SQLite returns an aggregate of a DateTime column as its text
                oldest = datetime.fromisoformat(oldest)
            return int(count), None if oldest is None else as_utc(oldest)
