"""webhook_svc's tables and the repository of endpoints, events and deliveries. The chassis adds outbox and inbox.

Every row is one merchant's and every read a merchant makes names it in its SQL, so another merchant's endpoint or
event is found exactly as a missing one is. Only the sender reads across merchants: it claims due deliveries of
every merchant by lease, so replicas share them and none is in flight twice at once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from paymesh.chassis.db import as_utc, pairs_in, pairs_params
from paymesh.chassis.schema_steps import MERCHANT_ID_LENGTH
from webhook_svc.domain import (
    Attempt,
    Delivery,
    DeliveryStatus,
    DisabledReason,
    Endpoint,
    FailureReason,
    MerchantEvent,
)

# (merchant_id, order_id): whose sequence an event takes.
OrderKey = tuple[str, str]


def metadata() -> MetaData:
    """A fresh MetaData per runtime holding webhook_svc's tables; nothing is created or connected at import."""
    md = MetaData()
    tables(md)
    return md


def tables(md: MetaData) -> Tables:
    if "endpoints" in md.tables:
        return Tables(*(md.tables[name] for name in ("endpoints", "events", "order_sequences", "deliveries",
                                                     "delivery_attempts")))
    endpoints = Table(
        "endpoints",
        md,
        Column("endpoint_id", String(40), primary_key=True),
        Column("merchant_id", String(MERCHANT_ID_LENGTH), nullable=False),
        Column("url", String(2048), nullable=False),
        Column("enabled_events", JSON, nullable=False),
        Column("description", String(200), nullable=False),
        # Kept as given: every delivery is signed with it (an HMAC key, not a password to hash).
        Column("secret", String(80), nullable=False),
        Column("previous_secret", String(80), nullable=False),
        Column("previous_secret_expire_time", DateTime(timezone=True)),
        Column("disabled_reason", String(20)),
        Column("failing_since", DateTime(timezone=True)),
        Column("create_time", DateTime(timezone=True), nullable=False),
        Column("update_time", DateTime(timezone=True), nullable=False),
    )
    Index("ix_endpoints_merchant_newest", endpoints.c.merchant_id, endpoints.c.create_time, endpoints.c.endpoint_id)
    events = Table(
        "events",
        md,
        Column("event_id", String(40), primary_key=True),
        Column("merchant_id", String(MERCHANT_ID_LENGTH), nullable=False),
        Column("type", String(40), nullable=False),
        Column("order_id", String(40), nullable=False),
        Column("sequence", BigInteger, nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False),
        Column("body", Text, nullable=False),
        Column("source_event_id", String(64), nullable=False),
    )
    Index("ix_events_merchant_newest", events.c.merchant_id, events.c.create_time, events.c.event_id)
    Index("ix_events_merchant_order", events.c.merchant_id, events.c.order_id, events.c.sequence)
    sequences = Table(
        "order_sequences",
        md,
        Column("merchant_id", String(MERCHANT_ID_LENGTH), primary_key=True),
        Column("order_id", String(40), primary_key=True),
        Column("last_sequence", BigInteger, nullable=False),
    )
    deliveries = Table(
        "deliveries",
        md,
        Column("delivery_id", String(40), primary_key=True),
        Column("event_id", String(40), nullable=False),
        Column("endpoint_id", String(40), nullable=False),
        Column("merchant_id", String(MERCHANT_ID_LENGTH), nullable=False),
        Column("status", String(12), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("next_attempt_time", DateTime(timezone=True)),
        Column("failure_reason", String(24)),
        # Who is sending it now, and until when that holds: another replica takes it only after the lease.
        Column("lease_owner", String(120)),
        Column("lease_until", DateTime(timezone=True)),
        Column("create_time", DateTime(timezone=True), nullable=False),
    )
    # The sender's claim: pending deliveries by when they are due.
    Index("ix_deliveries_due", deliveries.c.status, deliveries.c.next_attempt_time)
    Index("ix_deliveries_event", deliveries.c.event_id)
    Index("ix_deliveries_endpoint_status", deliveries.c.endpoint_id, deliveries.c.status)
    Index("ix_deliveries_merchant_newest", deliveries.c.merchant_id, deliveries.c.create_time,
          deliveries.c.delivery_id)
    attempts = Table(
        "delivery_attempts",
        md,
        Column("delivery_id", String(40), primary_key=True),
        Column("attempt", Integer, primary_key=True),
        Column("attempt_time", DateTime(timezone=True), nullable=False),
        Column("http_status", Integer, nullable=False),
        Column("error", String(300), nullable=False),
        Column("latency_ms", BigInteger, nullable=False),
    )
    return Tables(endpoints, events, sequences, deliveries, attempts)


@dataclass(frozen=True)
class Tables:
    endpoints: Table
    events: Table
    sequences: Table
    deliveries: Table
    attempts: Table


@dataclass(frozen=True)
class Cursor:
    """Where a page stopped: the last row it returned, newest first."""

    create_time: datetime
    id: str


@dataclass(frozen=True)
class EventCounts:
    pending: int = 0
    succeeded: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Claimed:
    """A delivery the sender holds the lease of, with what it needs to send it."""

    delivery: Delivery
    endpoint: Endpoint
    body: str


def _newer_than(t: Table, id_column: str, after: Cursor | None) -> Any:
    if after is None:
        return None
    return or_(t.c.create_time < after.create_time,
               and_(t.c.create_time == after.create_time, t.c[id_column] < after.id))


class WebhookRepository:
    """Endpoints, events, deliveries and attempts in and out of their tables."""

    def __init__(self, t: Tables) -> None:
        self.t = t
        e, d = t.endpoints, t.deliveries
        self._get_endpoint = select(e).where(e.c.merchant_id == bindparam("merchant_id"),
                                             e.c.endpoint_id == bindparam("endpoint_id"))
        self._subscribers = select(e).where(e.c.merchant_id.in_(bindparam("merchants", expanding=True)),
                                            e.c.disabled_reason.is_(None))
        q = t.sequences
        self._lock_sequences = select(q).where(pairs_in(q.c.merchant_id, q.c.order_id)).with_for_update()
        self._insert_sequence = insert(q)
        self._move_sequence = (
            update(q)
            .where(q.c.merchant_id == bindparam("key_merchant_id"), q.c.order_id == bindparam("key_order_id"))
            .values(last_sequence=bindparam("last_sequence"))
        )
        self._insert_event = insert(t.events)
        self._insert_delivery = insert(d)
        self._insert_attempt = insert(t.attempts)
        self._save_delivery = (
            update(d)
            .where(d.c.delivery_id == bindparam("key_delivery_id"))
            .values(status=bindparam("status"), attempts=bindparam("attempts"),
                    next_attempt_time=bindparam("next_attempt_time"), failure_reason=bindparam("failure_reason"),
                    lease_owner=None, lease_until=None)
        )

    # -- endpoints ---------------------------------------------------------------------

    async def add_endpoint(self, conn: AsyncConnection, endpoint: Endpoint) -> None:
        await conn.execute(insert(self.t.endpoints), _endpoint_row(endpoint))

    async def get_endpoint(self, conn: AsyncConnection, merchant_id: str, endpoint_id: str,
                           *, lock: bool = False) -> Endpoint | None:
        """The merchant's endpoint; None when there is none, or it is another merchant's."""
        query = self._get_endpoint.with_for_update() if lock else self._get_endpoint
        row = (await conn.execute(query, {"merchant_id": merchant_id, "endpoint_id": endpoint_id})).first()
        return None if row is None else _endpoint(row)

    async def save_endpoint(self, conn: AsyncConnection, endpoint: Endpoint) -> None:
        e = self.t.endpoints
        row = _endpoint_row(endpoint)
        del row["endpoint_id"], row["merchant_id"], row["create_time"]
        await conn.execute(update(e).where(e.c.merchant_id == endpoint.merchant_id,
                                           e.c.endpoint_id == endpoint.endpoint_id).values(row))

    async def delete_endpoint(self, conn: AsyncConnection, endpoint: Endpoint) -> None:
        e = self.t.endpoints
        await conn.execute(delete(e).where(e.c.merchant_id == endpoint.merchant_id,
                                           e.c.endpoint_id == endpoint.endpoint_id))

    async def count_endpoints(self, conn: AsyncConnection, merchant_id: str) -> int:
        e = self.t.endpoints
        return int((await conn.execute(select(func.count()).where(e.c.merchant_id == merchant_id))).scalar_one())

    async def endpoints_page(self, conn: AsyncConnection, merchant_id: str, after: Cursor | None,
                             limit: int) -> list[Endpoint]:
        e = self.t.endpoints
        query = select(e).where(e.c.merchant_id == merchant_id)
        if (newer := _newer_than(e, "endpoint_id", after)) is not None:
            query = query.where(newer)
        rows = await conn.execute(query.order_by(e.c.create_time.desc(), e.c.endpoint_id.desc()).limit(limit))
        return [_endpoint(row) for row in rows]

    async def subscribers(self, conn: AsyncConnection, merchants: Iterable[str]) -> dict[str, list[Endpoint]]:
        """The enabled endpoints of each merchant named, in one SELECT."""
        names = sorted(set(merchants))
        found: dict[str, list[Endpoint]] = defaultdict(list)
        if names:
            for row in await conn.execute(self._subscribers, {"merchants": names}):
                found[row.merchant_id].append(_endpoint(row))
        return found

    # -- events ------------------------------------------------------------------------

    async def next_sequences(self, conn: AsyncConnection, keys: Sequence[OrderKey]) -> list[int]:
        """A rising number per order for each key in turn (a key named twice gets two), in three statements
        whatever the batch: the orders' rows read locked until commit (so two replicas never hand out the same
        number; a row another replica is inserting at once fails this batch, which the consumer retries), the
        new ones inserted, the others moved on."""
        if not keys:
            return []
        wanted: dict[OrderKey, int] = defaultdict(int)
        for key in keys:
            wanted[key] += 1
        rows = await conn.execute(self._lock_sequences, pairs_params(wanted))
        last: dict[OrderKey, int] = {(r.merchant_id, r.order_id): r.last_sequence for r in rows}
        new = [{"merchant_id": m, "order_id": o, "last_sequence": n}
               for (m, o), n in wanted.items() if (m, o) not in last]
        if new:
            await conn.execute(self._insert_sequence, new)
        moved = [{"key_merchant_id": m, "key_order_id": o, "last_sequence": last[(m, o)] + n}
                 for (m, o), n in wanted.items() if (m, o) in last]
        if moved:
            await conn.execute(self._move_sequence, moved)
        out: list[int] = []
        for key in keys:
            last[key] = last.get(key, 0) + 1
            out.append(last[key])
        return out

    async def add_events(self, conn: AsyncConnection, events: Sequence[MerchantEvent],
                         deliveries: Sequence[Delivery]) -> None:
        if events:
            await conn.execute(self._insert_event, [_event_row(ev) for ev in events])
        if deliveries:
            await conn.execute(self._insert_delivery, [_delivery_row(dv) for dv in deliveries])

    async def get_event(self, conn: AsyncConnection, merchant_id: str, event_id: str) -> MerchantEvent | None:
        ev = self.t.events
        row = (await conn.execute(select(ev).where(ev.c.merchant_id == merchant_id,
                                                   ev.c.event_id == event_id))).first()
        return None if row is None else _event(row)

    async def events_page(self, conn: AsyncConnection, merchant_id: str, *, type: str, order_id: str,
                          delivery_success: bool | None, after: Cursor | None,
                          limit: int) -> list[tuple[MerchantEvent, EventCounts]]:
        ev, d = self.t.events, self.t.deliveries
        query = select(ev).where(ev.c.merchant_id == merchant_id)
        if type:
            query = query.where(ev.c.type == type)
        if order_id:
            query = query.where(ev.c.order_id == order_id)
        if delivery_success is not None:
            unsent = exists().where(d.c.event_id == ev.c.event_id, d.c.status != DeliveryStatus.SUCCEEDED.value)
            if delivery_success:
                query = query.where(exists().where(d.c.event_id == ev.c.event_id), ~unsent)
            else:
                query = query.where(unsent)
        if (newer := _newer_than(ev, "event_id", after)) is not None:
            query = query.where(newer)
        rows = await conn.execute(query.order_by(ev.c.create_time.desc(), ev.c.event_id.desc()).limit(limit))
        events = [_event(row) for row in rows]
        counts = await self._counts(conn, [e.event_id for e in events])
        return [(e, counts.get(e.event_id, EventCounts())) for e in events]

    async def _counts(self, conn: AsyncConnection, event_ids: list[str]) -> dict[str, EventCounts]:
        if not event_ids:
            return {}
        d = self.t.deliveries
        rows = await conn.execute(
            select(d.c.event_id, d.c.status, func.count()).where(d.c.event_id.in_(event_ids))
            .group_by(d.c.event_id, d.c.status)
        )
        by_event: dict[str, dict[str, int]] = defaultdict(dict)
        for event_id, status, count in rows:
            by_event[event_id][status] = count
        return {
            event_id: EventCounts(c.get(DeliveryStatus.PENDING.value, 0), c.get(DeliveryStatus.SUCCEEDED.value, 0),
                                  c.get(DeliveryStatus.FAILED.value, 0))
            for event_id, c in by_event.items()
        }

    # -- deliveries --------------------------------------------------------------------

    async def add_deliveries(self, conn: AsyncConnection, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await conn.execute(self._insert_delivery, [_delivery_row(dv) for dv in deliveries])

    async def deliveries_page(self, conn: AsyncConnection, merchant_id: str, *, event_id: str, endpoint_id: str,
                              after: Cursor | None, limit: int) -> list[tuple[Delivery, list[Attempt]]]:
        d = self.t.deliveries
        query = select(d).where(d.c.merchant_id == merchant_id)
        if event_id:
            query = query.where(d.c.event_id == event_id)
        if endpoint_id:
            query = query.where(d.c.endpoint_id == endpoint_id)
        if (newer := _newer_than(d, "delivery_id", after)) is not None:
            query = query.where(newer)
        rows = await conn.execute(query.order_by(d.c.create_time.desc(), d.c.delivery_id.desc()).limit(limit))
        deliveries = [_delivery(row) for row in rows]
        attempts = await self.attempts_of(conn, [dv.delivery_id for dv in deliveries])
        return [(dv, attempts.get(dv.delivery_id, [])) for dv in deliveries]

    async def attempts_of(self, conn: AsyncConnection, delivery_ids: list[str]) -> dict[str, list[Attempt]]:
        if not delivery_ids:
            return {}
        a = self.t.attempts
        rows = await conn.execute(select(a).where(a.c.delivery_id.in_(delivery_ids))
                                  .order_by(a.c.delivery_id, a.c.attempt))
        found: dict[str, list[Attempt]] = defaultdict(list)
        for row in rows:
            found[row.delivery_id].append(Attempt(row.attempt, as_utc(row.attempt_time), row.http_status,
                                                  row.error, row.latency_ms))
        return found

    async def stop_deliveries(self, conn: AsyncConnection, endpoint: Endpoint, reason: FailureReason) -> int:
        """The endpoint's pending deliveries fail with `reason` (it was disabled or deleted); how many."""
        d = self.t.deliveries
        result = await conn.execute(
            update(d)
            .where(d.c.endpoint_id == endpoint.endpoint_id, d.c.status == DeliveryStatus.PENDING.value)
            .values(status=DeliveryStatus.FAILED.value, failure_reason=reason.value, next_attempt_time=None,
                    lease_owner=None, lease_until=None)
        )
        return int(result.rowcount or 0)

    async def claim(self, conn: AsyncConnection, *, now: datetime, owner: str, lease_until: datetime,
                    limit: int, per_endpoint: int, busy: Iterable[str] = ()) -> list[Claimed]:
        """Up to `limit` deliveries due at `now` and not leased, at most `per_endpoint` of any one endpoint and
        none of the endpoints in `busy`, leased to `owner` until `lease_until`.

        The due rows are read locked, skipping rows another replica's claim holds (PostgreSQL; SQLite has one
        writer), so two replicas claiming at once take different deliveries; the lease is written before commit.
        A few times `limit` rows are read, so one endpoint's backlog cannot hide every other endpoint's."""
        d, e, ev = self.t.deliveries, self.t.endpoints, self.t.events
        due = and_(d.c.status == DeliveryStatus.PENDING.value, d.c.next_attempt_time <= now,
                   or_(d.c.lease_until.is_(None), d.c.lease_until < now))
        query = select(d.c.delivery_id, d.c.endpoint_id).where(due)
        if skip := sorted(set(busy)):
            query = query.where(d.c.endpoint_id.not_in(skip))
        rows = await conn.execute(query.order_by(d.c.next_attempt_time).limit(limit * 4)
                                  .with_for_update(skip_locked=True))
        taken: dict[str, int] = defaultdict(int)
        leased: list[str] = []
        for delivery_id, endpoint_id in rows:
            if taken[endpoint_id] < per_endpoint and len(leased) < limit:
                taken[endpoint_id] += 1
                leased.append(delivery_id)
        if not leased:
            return []
        await conn.execute(update(d).where(d.c.delivery_id.in_(leased))
                           .values(lease_owner=owner, lease_until=lease_until))
        deliveries = [_delivery(row) for row in await conn.execute(select(d).where(d.c.delivery_id.in_(leased)))]
        endpoint_ids = sorted({dv.endpoint_id for dv in deliveries})
        endpoints = {row.endpoint_id: _endpoint(row)
                     for row in await conn.execute(select(e).where(e.c.endpoint_id.in_(endpoint_ids)))}
        event_ids = sorted({dv.event_id for dv in deliveries})
        bodies = dict((await conn.execute(select(ev.c.event_id, ev.c.body).where(ev.c.event_id.in_(event_ids)))).all())
        # A delivery whose endpoint was deleted meanwhile is not sent: DeleteEndpoint failed it in its transaction.
        return [Claimed(dv, endpoints[dv.endpoint_id], bodies[dv.event_id])
                for dv in deliveries if dv.endpoint_id in endpoints]

    async def release(self, conn: AsyncConnection, owner: str, delivery_ids: Sequence[str]) -> None:
        """Give back leases not used (the sender is stopping)."""
        if delivery_ids:
            d = self.t.deliveries
            await conn.execute(update(d).where(d.c.delivery_id.in_(list(delivery_ids)), d.c.lease_owner == owner)
                               .values(lease_owner=None, lease_until=None))

    async def lock_delivery(self, conn: AsyncConnection, delivery_id: str) -> tuple[Delivery, Endpoint | None]:
        """The delivery and its endpoint (None once deleted), locked until commit, to record an attempt."""
        d, e = self.t.deliveries, self.t.endpoints
        row = (await conn.execute(select(d).where(d.c.delivery_id == delivery_id).with_for_update())).one()
        delivery = _delivery(row)
        erow = (await conn.execute(select(e).where(e.c.endpoint_id == delivery.endpoint_id).with_for_update())).first()
        return delivery, None if erow is None else _endpoint(erow)

    async def record(self, conn: AsyncConnection, delivery: Delivery, attempt: Attempt) -> None:
        """One attempt, and the delivery's state after it (its lease ends)."""
        await conn.execute(self._insert_attempt, {
            "delivery_id": delivery.delivery_id, "attempt": attempt.attempt, "attempt_time": attempt.attempt_time,
            "http_status": attempt.http_status, "error": attempt.error[:300], "latency_ms": attempt.latency_ms,
        })
        await conn.execute(self._save_delivery, {
            "key_delivery_id": delivery.delivery_id, "status": delivery.status.value, "attempts": delivery.attempts,
            "next_attempt_time": delivery.next_attempt_time,
            "failure_reason": None if delivery.failure_reason is None else delivery.failure_reason.value,
        })

    async def prune(self, conn: AsyncConnection, before: datetime, limit: int) -> int:
        """Events made before `before` with no delivery still pending, with their deliveries and attempts (the
        feed keeps the retention period, as Stripe's keeps 30 days); at most `limit` events, how many went."""
        ev, d, a = self.t.events, self.t.deliveries, self.t.attempts
        pending = exists().where(d.c.event_id == ev.c.event_id, d.c.status == DeliveryStatus.PENDING.value)
        ids = list((await conn.execute(
            select(ev.c.event_id).where(ev.c.create_time < before, ~pending).order_by(ev.c.create_time).limit(limit)
        )).scalars())
        if not ids:
            return 0
        deliveries = select(d.c.delivery_id).where(d.c.event_id.in_(ids)).scalar_subquery()
        await conn.execute(delete(a).where(a.c.delivery_id.in_(deliveries)))
        await conn.execute(delete(d).where(d.c.event_id.in_(ids)))
        await conn.execute(delete(ev).where(ev.c.event_id.in_(ids)))
        return len(ids)

    async def next_due(self, conn: AsyncConnection, now: datetime, busy: Iterable[str] = ()) -> datetime | None:
        """When the next claim can take something, of any merchant: the earliest pending delivery's attempt time,
        or its lease's end while another sender holds it, leaving out the endpoints in `busy` (their turn comes
        when a request of theirs ends); None when nothing is pending."""
        d = self.t.deliveries
        ready = case((d.c.lease_until > now, d.c.lease_until), else_=d.c.next_attempt_time)
        query = select(func.min(ready)).where(d.c.status == DeliveryStatus.PENDING.value)
        if skip := sorted(set(busy)):
            query = query.where(d.c.endpoint_id.not_in(skip))
        value = (await conn.execute(query)).scalar()
        return None if value is None else as_utc(value)


def _endpoint_row(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "endpoint_id": endpoint.endpoint_id,
        "merchant_id": endpoint.merchant_id,
        "url": endpoint.url,
        "enabled_events": list(endpoint.enabled_events),
        "description": endpoint.description,
        "secret": endpoint.secret,
        "previous_secret": endpoint.previous_secret,
        "previous_secret_expire_time": endpoint.previous_secret_expire_time,
        "disabled_reason": None if endpoint.disabled_reason is None else endpoint.disabled_reason.value,
        "failing_since": endpoint.failing_since,
        "create_time": endpoint.create_time,
        "update_time": endpoint.update_time,
    }


def _maybe_utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _endpoint(row: Row[Any]) -> Endpoint:
    """The domain object of a row of `endpoints`: no row leaves this module."""
    return Endpoint(
        endpoint_id=row.endpoint_id,
        merchant_id=row.merchant_id,
        url=row.url,
        enabled_events=tuple(row.enabled_events),
        description=row.description,
        secret=row.secret,
        create_time=as_utc(row.create_time),
        update_time=as_utc(row.update_time),
        previous_secret=row.previous_secret,
        previous_secret_expire_time=_maybe_utc(row.previous_secret_expire_time),
        disabled_reason=None if row.disabled_reason is None else DisabledReason(row.disabled_reason),
        failing_since=_maybe_utc(row.failing_since),
    )


def _event_row(event: MerchantEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "merchant_id": event.merchant_id,
        "type": event.type,
        "order_id": event.order_id,
        "sequence": event.sequence,
        "create_time": event.create_time,
        "body": event.body,
        "source_event_id": event.source_event_id,
    }


def _event(row: Row[Any]) -> MerchantEvent:
    return MerchantEvent(row.event_id, row.merchant_id, row.type, row.order_id, row.sequence,
                         as_utc(row.create_time), row.body, row.source_event_id)


def _delivery_row(delivery: Delivery) -> dict[str, Any]:
    return {
        "delivery_id": delivery.delivery_id,
        "event_id": delivery.event_id,
        "endpoint_id": delivery.endpoint_id,
        "merchant_id": delivery.merchant_id,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "next_attempt_time": delivery.next_attempt_time,
        "failure_reason": None if delivery.failure_reason is None else delivery.failure_reason.value,
        "lease_owner": None,
        "lease_until": None,
        "create_time": delivery.create_time,
    }


def _delivery(row: Row[Any]) -> Delivery:
    return Delivery(
        delivery_id=row.delivery_id,
        event_id=row.event_id,
        endpoint_id=row.endpoint_id,
        merchant_id=row.merchant_id,
        create_time=as_utc(row.create_time),
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        next_attempt_time=_maybe_utc(row.next_attempt_time),
        failure_reason=None if row.failure_reason is None else FailureReason(row.failure_reason),
    )
