"""Where a saga stands, read off a running mesh: its events on the streams, which durable applied each, and what a
non-final order waits for now; and `paymesh stuck`, every order that has waited too long, each with that diagnosis.

Read, never written: order_svc's orders, the order's events on the ORDER, INVENTORY and PAYMENT streams
(`<domain>.*.<order_id>`, each stream read by an ephemeral consumer deleted after), every declared durable's state on
the server and its service's inbox rows for those events, the waiting service's outbox (an event not yet published),
the DLQ and the service's log files under the data dir (the last error). `paymesh trace` adds the whole history.

What an order waits for follows from its status and what the streams and inboxes hold: PENDING with order.placed
not yet applied by inventory_svc-order waits for inventory_svc to reserve; AWAITING_PAYMENT with inventory.reserved
not applied by payment_svc-inventory waits for payment_svc to charge; an answer published but not applied waits for
the durable that takes it (order_svc-inventory, order_svc-payment); an event applied whose answer is on no stream
waits for its service to publish it (its outbox); CANCELLING waits for inventory_svc to release and payment_svc to
void or refund (inventory_svc-order, payment_svc-order), then for order_svc to apply their answers; an order all of
whose answers are applied waits for its deadline.

`paymesh stuck` takes the orders not final (PENDING, AWAITING_PAYMENT, CANCELLING) that have not changed for longer
than --older-than, longest first. `--json` prints one object, its keys stable (keys may be added, none renamed):

    {"older_than_s": float, "count": int (every such order), "orders": [{"order_id", "merchant_id", "status",
     "placed_at", "updated_at" (ISO 8601, UTC), "unchanged_s": float, "waiting": null | <paymesh trace's "waiting">}]}

with at most --limit orders listed. Exit 1 when there is any, 0 when none, 2 when no mesh runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from order_svc.domain import CAUSE_ORDER_CANCELLED, SETTLED, Order, OrderStatus

if TYPE_CHECKING:  # the modules behind these load gRPC, SQLAlchemy and NATS: imported where used, not for --help
    from google.protobuf.message import Message
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from paymesh.chassis.db import Database

NOT_FINAL = tuple(s for s in OrderStatus if s not in SETTLED)
# Bounds on one read: messages of one order on one stream (or one durable's on the DLQ), a log file's tail.
SCAN_LIMIT = 10_000
READ_BATCH = 256
FETCH_WAIT_S = 5.0
LOG_TAIL_BYTES = 8 << 20
DEFAULT_LIMIT = 100
_WARNING = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")

class NoMesh(Exception):
    """No running mesh: nothing answers where its NATS should be, or order_svc has no store."""


class MeshRefused(Exception):
    """A mesh is there but cannot be read: its NATS refused the operator, or a store would not answer."""


def seconds(raw: str) -> float:
    """An argparse type: a duration (paymesh.chassis.config.parse_duration), in seconds."""
    from paymesh.chassis.config import parse_duration

    value = parse_duration(raw)
    if value is None:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a duration: use e.g. 30s, 5m, 2h, 7d")
    return value


def shown_duration(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value:g}s"


def iso(at: datetime) -> str:
    """Every time here is read as an aware UTC datetime (paymesh.chassis.db.as_utc, nats-py's metadata)."""
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def offset(ms: float) -> str:
    """+12.3 ms, +1.2 s, +3.5 min, +2.0 h, +1.5 d."""
    sign, size = ("-" if ms < 0 else "+"), abs(ms) / 1000
    if size < 1:
        return f"{sign}{size * 1000:.1f} ms"
    for unit, below, per in (("s", 120.0, 1.0), ("min", 7200.0, 60.0), ("h", 172800.0, 3600.0)):
        if size < below:
            return f"{sign}{size / per:.1f} {unit}"
    return f"{sign}{size / 86400:.1f} d"


def ms_between(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() * 1000


def first_line(exc: BaseException) -> str:
    """An error for one line of output (SQLAlchemy's run to several)."""
    return next(iter(str(exc).strip().splitlines()), type(exc).__name__)


def ago(at: datetime, now: datetime) -> str:
    return offset(ms_between(at, now)).removeprefix("+") + " ago"


# -- the mesh, opened for reading -----------------------------------------------------------------------------------


@dataclass
class MeshView:
    """The running mesh as the operator reads it: its NATS (as the operator's user) and each service's store."""

    env: Mapping[str, str]
    data_dir: Path
    nc: NATS
    stores: dict[str, Database]
    notes: list[str]

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()


def _absent_file(url: str) -> str | None:
    """The SQLite file `url` names when it does not exist (opening it would make an empty one), else None."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database or "")
    return None if path.is_file() else str(path)


def _unreadable(db: Database, exc: Exception) -> MeshRefused:
    from paymesh.ops.databases import without_password

    return MeshRefused(f"order_svc's store {without_password(db.url)} could not be read: {first_line(exc)}")


@contextlib.asynccontextmanager
async def open_mesh(env: Mapping[str, str]) -> AsyncIterator[MeshView]:
    """The mesh `env` points at (with mesh.json's variables: paymesh.ops.mesh_file.running_env); NoMesh when none."""
    from paymesh.chassis.config import data_dir, db_url
    from paymesh.chassis.db import Database
    from paymesh.chassis.migrations import service_metadata
    from paymesh.ops.mesh_nats import MeshNotFound, connect, find_nats
    from paymesh.ops.services import SPECS

    try:
        nc = await connect(find_nats(None, env, data_dir(env).resolve()), "paymesh-trace")
    except MeshNotFound as exc:
        said = str(exc)
        if said.startswith(("no mesh found: ", "no mesh reachable: ")):
            raise NoMesh(said.partition(": ")[2]) from None
        raise MeshRefused(said) from None
    stores: dict[str, Database] = {}
    notes: list[str] = []
    try:
        for spec in SPECS:
            url = db_url(spec, env)
            if (absent := _absent_file(url)) is not None:
                if spec.name == "order_svc":
                    raise NoMesh(f"order_svc has no store at {absent} ({spec.env_prefix}_DB_URL, else the data dir's)")
                notes.append(f"{spec.name} has no store at {absent}: its part is not shown")
                continue
            stores[spec.name] = Database(url, service_metadata(spec))
        yield MeshView(env, data_dir(env).resolve(), nc, stores, notes)
    finally:
        for db in stores.values():
            await db.dispose()
        await nc.close()


async def find_order(mesh: MeshView, order_id: str) -> Order | None:
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from order_svc.store import OrderRepository, orders_table

    db = mesh.stores["order_svc"]
    table = orders_table(db.metadata)
    try:
        async with db.read() as conn:
            merchant = (await conn.execute(select(table.c.merchant_id).where(table.c.order_id == order_id))).scalar()
            return None if merchant is None else await OrderRepository(table).get(conn, merchant, order_id)
    except (SQLAlchemyError, OSError) as exc:
        raise _unreadable(db, exc) from None


# -- the streams and the durables -----------------------------------------------------------------------------------


async def stored(js: JetStreamContext, stream: str, subject: str) -> list[Msg]:
    """What `stream` holds on `subject`, oldest first (at most SCAN_LIMIT), read by an ephemeral consumer that
    acknowledges nothing and is deleted after (the server drops it by itself if this process dies first)."""
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    name = f"paymesh-trace-{uuid.uuid4().hex[:12]}"
    config = ConsumerConfig(name=name, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                            filter_subject=subject, mem_storage=True, inactive_threshold=30.0)
    info = await js.add_consumer(stream, config)
    sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    out: list[Msg] = []
    try:
        left = int(info.num_pending or 0)
        while left > 0 and len(out) < SCAN_LIMIT:
            batch = await sub.fetch(min(left, READ_BATCH), timeout=FETCH_WAIT_S)
            out += batch
            left = batch[-1].metadata.num_pending if batch else 0
        return out
    finally:
        await sub.unsubscribe()
        with contextlib.suppress(nats.errors.Error, NotFoundError, TimeoutError):
            await js.delete_consumer(stream, name)


@dataclass(frozen=True)
class Published:
    """One of the order's events as its stream holds it."""

    name: str  # order.placed
    subject: str
    stream: str
    seq: int
    at: datetime  # when the stream stored it
    event_id: str
    type: str
    publisher: str  # the stream's owner
    message: Message | None

    @property
    def cause(self) -> str:
        return str(getattr(self.message, "cause", ""))


@functools.cache
def _event_types() -> dict[str, type[Message]]:
    from paymesh.chassis.events import message_types
    from paymesh.inventory.v1 import events_pb2 as inventory_events
    from paymesh.order.v1 import events_pb2 as order_events
    from paymesh.payment.v1 import events_pb2 as payment_events

    return message_types(order_events, inventory_events, payment_events)


def _published(msg: Msg, publisher: str) -> Published:
    from google.protobuf.message import DecodeError

    from paymesh.chassis.events import MSG_ID, TYPE

    headers = dict(msg.headers or {})
    cls = _event_types().get(headers.get(TYPE, ""))
    message: Message | None = None
    if cls is not None:
        with contextlib.suppress(DecodeError):
            message = cls.FromString(msg.data)
    meta = msg.metadata
    event_id = str(getattr(message, "event_id", "")) or headers.get(MSG_ID, "")
    return Published(msg.subject.rpartition(".")[0], msg.subject, meta.stream, meta.sequence.stream, meta.timestamp,
                     event_id, headers.get(TYPE, ""), publisher, message)


@dataclass(frozen=True)
class Durable:
    """A durable consumer a service declares, and its state on the server (`found` False: it is not there)."""

    service: str
    name: str
    stream: str
    found: bool = False
    filters: tuple[str, ...] = ()
    pending: int = 0
    ack_pending: int = 0
    redelivered: int = 0
    delivered_seq: int = 0
    ack_floor_seq: int = 0

    def state_of(self, seq: int) -> str:
        """Where a stream message it has not applied stands on this durable."""
        if not self.found:
            return "no such durable on the server"
        if seq > self.delivered_seq:
            return "not delivered yet"
        if seq <= self.ack_floor_seq:
            return "acknowledged without being applied (dead-lettered?)"
        return "delivered, not acknowledged (being applied, or waiting for its redelivery)"


async def durables(js: JetStreamContext) -> dict[str, Durable]:
    """Every durable the services declare (ServiceSpec.consumes), with its state on the server."""
    from nats.js.errors import NotFoundError

    from paymesh.ops.services import SPECS

    out: dict[str, Durable] = {}
    for spec in SPECS:
        for declared in spec.consumes:
            try:
                info = await js.consumer_info(declared.stream, declared.name)
            except NotFoundError:
                out[declared.name] = Durable(spec.name, declared.name, declared.stream)
                continue
            config = info.config
            filters = config.filter_subjects or ([config.filter_subject] if config.filter_subject else [">"])
            out[declared.name] = Durable(
                spec.name, declared.name, declared.stream, True, tuple(filters), int(info.num_pending or 0),
                int(info.num_ack_pending or 0), int(info.num_redelivered or 0),
                info.delivered.stream_seq if info.delivered else 0, info.ack_floor.stream_seq if info.ack_floor else 0)
    return out


@dataclass(frozen=True)
class LastError:
    source: str  # "log" or "dlq"
    where: str  # the log file, or the DLQ message
    message: str


@dataclass
class Saga:
    """What the streams and the consumers' inboxes say of one order: the input of the diagnosis."""

    order: Order
    events: list[Published]  # in the order the streams stored them
    durables: dict[str, Durable]
    takers: dict[str, list[str]]  # event_id -> the durables whose filters take it
    applied: dict[tuple[str, str], datetime]  # (durable, event_id) -> applied_at as its inbox holds it
    dead: dict[tuple[str, str], LastError]  # (durable, event_id) -> its DLQ entry, for those it gave up on
    to_the_second: set[str]  # services whose stores keep SQL-default times to the second (SQLite)
    aged_out: bool
    retention_s: float
    notes: list[str]

    def first(self, *names: str, cause: str | None = None) -> Published | None:
        return next((e for e in self.events if e.name in names and (cause is None or e.cause == cause)), None)

    def last(self, *names: str) -> Published | None:
        return next((e for e in reversed(self.events) if e.name in names), None)

    def applied_at(self, event: Published, durable: str) -> datetime | None:
        return self.applied.get((durable, event.event_id))

    def consumers_of(self, event: Published) -> list[Durable]:
        return [self.durables[name] for name in self.takers.get(event.event_id, [])]

    def state(self, event: Published, durable: Durable) -> str:
        """`applied`, `dead-lettered (DLQ seq N on ...)`, or where it stands on the durable."""
        if self.applied_at(event, durable.name) is not None:
            return "applied"
        if (letter := self.dead.get((durable.name, event.event_id))) is not None:
            return f"dead-lettered ({letter.where})"
        return durable.state_of(event.seq)


async def _retention(mesh: MeshView, streams: list[str], notes: list[str]) -> float:
    """How long the streams keep an event: their own max_age (the shortest), else PAYMESH_STREAM_MAX_AGE."""
    from nats.js.errors import NotFoundError

    from paymesh.chassis.config import DEFAULT_STREAM_MAX_AGE_S, STREAM_MAX_AGE_ENV, parse_duration

    ages: list[float] = []
    for stream in streams:
        with contextlib.suppress(NotFoundError):
            info = await mesh.js.stream_info(stream)
            if info.config.max_age:
                ages.append(float(info.config.max_age))
    if ages:
        return min(ages)
    raw = mesh.env.get(STREAM_MAX_AGE_ENV, "")
    parsed = parse_duration(raw) if raw else None  # as the services read it (paymesh.chassis.config)
    if raw and not parsed:
        notes.append(f"{STREAM_MAX_AGE_ENV}={raw!r} does not read as a duration: taken as 7d")
    return parsed or DEFAULT_STREAM_MAX_AGE_S


async def read_saga(mesh: MeshView, order: Order) -> Saga:
    """The order's events on the three streams, the durables, and which of them applied each event when."""
    from nats.js.errors import NotFoundError
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from paymesh.chassis.db import as_utc
    from paymesh.chassis.inbox import inbox_table
    from paymesh.chassis.jetstream import stream_subjects
    from paymesh.ops.dlq import _matches as subject_matches  # NATS subject matching, as `paymesh dlq` does it
    from paymesh.ops.services import SPECS

    notes: list[str] = []
    events: list[Published] = []
    owners = [(spec.name, spec.stream) for spec in SPECS if spec.stream]
    for owner, stream in owners:
        domain = stream_subjects(stream)[0].removesuffix(".>")
        try:
            msgs = await stored(mesh.js, stream, f"{domain}.*.{order.order_id}")
        except NotFoundError:
            notes.append(f"stream {stream} does not exist")
            continue
        events += [_published(m, owner) for m in msgs]
    events.sort(key=lambda e: (e.at, e.stream, e.seq))
    found = await durables(mesh.js)
    takers = {e.event_id: [d.name for d in found.values() if d.stream == e.stream
                           and any(subject_matches(f, e.subject) for f in d.filters)] for e in events}
    applied: dict[tuple[str, str], datetime] = {}
    ids = [e.event_id for e in events]
    for service in sorted({d.service for d in found.values()}):
        db = mesh.stores.get(service)
        if db is None or not ids:
            continue
        inbox = inbox_table(db.metadata)
        try:
            async with db.read() as conn:
                rows = await conn.execute(select(inbox.c.consumer, inbox.c.event_id, inbox.c.applied_at)
                                          .where(inbox.c.event_id.in_(ids)))
                applied |= {(r.consumer, r.event_id): as_utc(r.applied_at) for r in rows}
        except (SQLAlchemyError, OSError) as exc:
            notes.append(f"{service}'s inbox could not be read: {first_line(exc)}")
    # Acknowledged without being applied: dead-lettered, or dropped from the DLQ since. One DLQ read per durable.
    given_up: dict[str, list[Published]] = {}
    for e in events:
        for name in takers[e.event_id]:
            if (name, e.event_id) not in applied and e.seq <= found[name].ack_floor_seq:
                given_up.setdefault(name, []).append(e)
    dead = {(name, event_id): letter for name, those in given_up.items()
            for event_id, letter in (await dead_letters(mesh, found[name], those)).items()}
    retention = await _retention(mesh, [stream for _, stream in owners], notes)
    old = order.create_time < datetime.now(UTC) - timedelta(seconds=retention)
    aged_out = old and not any(e.name == "order.placed" for e in events)
    rough = {name for name, db in mesh.stores.items() if db.is_sqlite}
    return Saga(order, events, found, takers, applied, dead, rough, aged_out, retention, notes)


# -- where it waits -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wait:
    """The diagnosis before it is looked up further: who must act, on which event, through which durable."""

    what: str
    service: str
    since: datetime
    durable: str | None = None
    event: Published | None = None
    outbox: tuple[str, ...] = ()  # subjects the service's outbox may hold unsent
    also: tuple[str, ...] = ()  # more that holds it up, for people


def _publish(service: str, names: tuple[str, ...], order: Order, since: datetime) -> Wait:
    return Wait(f"{service} to publish {' or '.join(names)}", service, since,
                outbox=tuple(f"{n}.{order.order_id}" for n in names))


def _apply(saga: Saga, event: Published, service: str, durable: str, what: str) -> Wait | None:
    if saga.applied_at(event, durable) is not None:
        return None
    return Wait(what, service, event.at, durable, event)


def where_it_waits(saga: Saga) -> Wait | None:
    """From the order's status and what the streams and inboxes hold: who must act next, on what. None: final."""
    order = saga.order
    if order.status in SETTLED:
        return None
    if saga.aged_out:
        return Wait(f"nothing that can be told: its events aged out of the streams (kept "
                    f"{shown_duration(saga.retention_s)}); its deadline was {iso(order.deadline)}", "order_svc",
                    order.update_time)
    if order.status == OrderStatus.CANCELLING:
        return _cancelling(saga) or _deadline(order)
    return _open(saga) or _deadline(order)


def _open(saga: Saga) -> Wait | None:
    order = saga.order
    placed = saga.first("order.placed")
    if placed is None:
        return _publish("order_svc", ("order.placed",), order, order.create_time)
    outcome = saga.first("payment.succeeded", "payment.failed")
    if outcome is not None:  # payment.succeeded may overtake inventory.reserved: it confirms a PENDING order too
        return _apply(saga, outcome, "order_svc", "order_svc-payment", f"order_svc to apply {outcome.name}")
    answer = saga.first("inventory.reserved", "inventory.rejected")
    if answer is None:
        if (taken := saga.applied_at(placed, "inventory_svc-order")) is None:
            return Wait("inventory_svc to reserve the stock", "inventory_svc", placed.at, "inventory_svc-order", placed)
        return _publish("inventory_svc", ("inventory.reserved", "inventory.rejected"), order, taken)
    if answer.name == "inventory.rejected" or order.status == OrderStatus.PENDING:
        applying = _apply(saga, answer, "order_svc", "order_svc-inventory", f"order_svc to apply {answer.name}")
        if applying is not None or answer.name == "inventory.rejected":
            return applying
    if (charged := saga.applied_at(answer, "payment_svc-inventory")) is None:
        # It charges on inventory.reserved what order.placed told it; an order.placed it has not applied is the rest.
        unknown = saga.applied_at(placed, "payment_svc-order") is None
        also = (f"payment_svc has not applied order.placed {placed.event_id} either (durable payment_svc-order)",)
        return Wait("payment_svc to charge", "payment_svc", answer.at, "payment_svc-inventory", answer,
                    also=also if unknown else ())
    return _publish("payment_svc", ("payment.succeeded", "payment.failed"), order, charged)


def _cancelling(saga: Saga) -> Wait | None:
    order = saga.order
    cancelled = saga.last("order.cancelled")
    if cancelled is None:
        return _publish("order_svc", ("order.cancelled",), order, order.update_time)
    if not order.inventory_answered:
        released = saga.first("inventory.released", cause=CAUSE_ORDER_CANCELLED)
        if released is not None:
            return _apply(saga, released, "order_svc", "order_svc-inventory", "order_svc to apply inventory.released")
        if (taken := saga.applied_at(cancelled, "inventory_svc-order")) is None:
            return Wait("inventory_svc to release the stock", "inventory_svc", cancelled.at, "inventory_svc-order",
                        cancelled)
        return _publish("inventory_svc", ("inventory.released",), order, taken)
    if not order.payment_answered:
        answer = saga.first("payment.voided", "payment.refunded", "payment.refund_failed", cause=CAUSE_ORDER_CANCELLED)
        if answer is not None:
            return _apply(saga, answer, "order_svc", "order_svc-payment", f"order_svc to apply {answer.name}")
        if (taken := saga.applied_at(cancelled, "payment_svc-order")) is None:
            return Wait("payment_svc to void or refund the payment", "payment_svc", cancelled.at, "payment_svc-order",
                        cancelled)
        wait = _publish("payment_svc", ("payment.voided", "payment.refunded", "payment.refund_failed"), order, taken)
        return Wait(f"{wait.what} (a refund is retried with gateway_mock until it answers)", wait.service, wait.since,
                    outbox=wait.outbox)
    return None


def _deadline(order: Order) -> Wait:
    """Every answer applied and the order still open: only the saga's deadline moves it on."""
    return Wait(f"order_svc's deadline sweeper (the saga times out at {iso(order.deadline)})", "order_svc",
                order.update_time)


@dataclass(frozen=True)
class Waiting:
    """What a non-final order waits for now: which service, through which durable and event, since when."""

    what: str
    service: str
    since: datetime
    durable: str | None = None
    event: str | None = None
    event_id: str | None = None
    pending: int | None = None
    ack_pending: int | None = None
    redelivered: int | None = None
    state: str | None = None  # of the event on the durable
    last_error: LastError | None = None
    also: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        error = self.last_error
        return {"for": self.what, "service": self.service, "durable": self.durable, "event": self.event,
                "event_id": self.event_id, "since": iso(self.since), "pending": self.pending,
                "ack_pending": self.ack_pending, "redelivered": self.redelivered, "state": self.state,
                "last_error": None if error is None else
                {"source": error.source, "where": error.where, "message": error.message}, "also": list(self.also)}

    def lines(self, placed_at: datetime, now: datetime) -> list[str]:
        """For people: who, through what, since when; the durable's counts; the last error and where it is from."""
        through = f": durable {self.durable}" if self.durable else ""
        if self.durable and self.event:
            through += f", {self.event} {self.event_id} {self.state}"
        lines = [f"waits for {self.what}{through}; since {offset(ms_between(placed_at, self.since))} "
                 f"({ago(self.since, now)})"]
        if self.durable:
            lines.append(f"  {self.durable}: " + ("not on the server" if self.pending is None else
                                                 f"{self.pending} pending, {self.ack_pending} ack pending, "
                                                 f"{self.redelivered} redelivered"))
        if self.last_error is not None:
            lines.append(f"  last error ({self.last_error.source}, {self.last_error.where}): {self.last_error.message}")
        return lines + [f"  {more}" for more in self.also]


async def waiting(mesh: MeshView, saga: Saga) -> Waiting | None:
    """What the order waits for now, looked up: the durable's counts, the event's state on it, the last error
    (its DLQ entry, else its service's log); an unsent outbox row. The one diagnosis of `trace` and `stuck`."""
    wait = where_it_waits(saga)
    if wait is None:
        return None
    what, since = wait.what, wait.since
    if wait.outbox and (unsent := await _unsent(mesh, wait.service, wait.outbox)) is not None:
        subject, created = unsent
        what += f": {subject.rpartition('.')[0]} is in its outbox, unsent since {iso(created)}"
        since = created
    event, durable = wait.event, saga.durables.get(wait.durable or "")
    if event is None or wait.durable is None:
        return Waiting(what, wait.service, since, also=wait.also)
    if durable is None or not durable.found:
        return Waiting(what, wait.service, since, wait.durable, event.name, event.event_id,
                       state="no such durable on the server", also=wait.also)
    error = saga.dead.get((durable.name, event.event_id))
    if error is None and event.seq <= durable.delivered_seq:
        error = await last_warning(mesh, durable, event)
    return Waiting(what, wait.service, since, durable.name, event.name, event.event_id, durable.pending,
                   durable.ack_pending, durable.redelivered, saga.state(event, durable), error, wait.also)


async def _unsent(mesh: MeshView, service: str, subjects: tuple[str, ...]) -> tuple[str, datetime] | None:
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from paymesh.chassis.db import as_utc
    from paymesh.chassis.outbox import outbox_table

    db = mesh.stores.get(service)
    if db is None:
        return None
    outbox = outbox_table(db.metadata)
    query = (select(outbox.c.subject, outbox.c.created_at)
             .where(outbox.c.sent_at.is_(None), outbox.c.subject.in_(subjects)).order_by(outbox.c.id).limit(1))
    try:
        async with db.read() as conn:
            row = (await conn.execute(query)).first()
    except (SQLAlchemyError, OSError):
        return None
    return None if row is None else (row.subject, as_utc(row.created_at))


async def dead_letters(mesh: MeshView, durable: Durable, events: list[Published]) -> dict[str, LastError]:
    """The DLQ entries of these events on this durable (one read of its DLQ subject), by event id."""
    from nats.js.errors import NotFoundError

    from paymesh.chassis.consumer import dlq_subject
    from paymesh.chassis.jetstream import DLQ_STREAM

    if not events:
        return {}
    try:
        letters = await stored(mesh.js, DLQ_STREAM, dlq_subject(durable.service, durable.name))
    except NotFoundError:
        return {}
    by_message = {(e.stream, str(e.seq)): e.event_id for e in events}
    by_id = {e.event_id for e in events}
    out: dict[str, LastError] = {}
    for letter in letters:  # oldest first: a later entry of the same event wins
        headers = dict(letter.headers or {})
        event_id = by_message.get((headers.get("Paymesh-Original-Stream", ""), headers.get("Paymesh-Original-Seq", "")))
        if event_id is None and headers.get("Paymesh-Original-Msg-Id") in by_id:
            event_id = headers["Paymesh-Original-Msg-Id"]
        if event_id is not None:
            seq = letter.metadata.sequence.stream
            out[event_id] = LastError("dlq", f"DLQ seq {seq} on {letter.subject}",
                                      f"{headers.get('Paymesh-Dlq-Reason', '')}: {headers.get('Paymesh-Dlq-Error', '')}"
                                      f"; `paymesh dlq replay {seq}` retries it")
    return out


async def last_warning(mesh: MeshView, durable: Durable, event: Published) -> LastError | None:
    """The last WARNING (or worse) line naming the event in the durable's service's log files under the data dir:
    why a delivery of it is being retried."""
    logs = mesh.data_dir / "logs"
    paths = [logs / f"{durable.service}.log", *sorted(logs.glob(f"{durable.service}#*.log"))]
    found = await asyncio.to_thread(_last_warning, paths, event.event_id)
    return None if found is None else LastError("log", str(found[0]), found[1])


def _last_warning(paths: list[Path], needle: str) -> tuple[Path, str] | None:
    """The last WARNING/ERROR line holding `needle` in the tails of these files (of the newest file, if several)."""
    best: tuple[float, Path, str] | None = None
    for path in paths:
        try:
            with path.open("rb") as log:
                size = log.seek(0, 2)
                log.seek(max(0, size - LOG_TAIL_BYTES))
                tail = log.read().decode(errors="replace")
            mtime = path.stat().st_mtime
        except OSError:
            continue
        line = next((ln for ln in reversed(tail.splitlines()) if needle in ln and _WARNING.search(ln)), None)
        if line is not None and (best is None or mtime > best[0]):
            best = (mtime, path, line.strip()[:500])
    return None if best is None else (best[1], best[2])


# -- paymesh stuck --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StuckOrder:
    order: Order
    unchanged_s: float
    waiting: Waiting | None

    def as_json(self) -> dict[str, Any]:
        o = self.order
        return {"order_id": o.order_id, "merchant_id": o.merchant_id, "status": o.status.value,
                "placed_at": iso(o.create_time), "updated_at": iso(o.update_time),
                "unchanged_s": round(self.unchanged_s, 3),
                "waiting": None if self.waiting is None else self.waiting.as_json()}

    def lines(self, now: datetime) -> list[str]:
        o = self.order
        unchanged = offset(self.unchanged_s * 1000).removeprefix("+")
        head = f"{o.order_id}  {o.status.value}  unchanged {unchanged}, placed {ago(o.create_time, now)}"
        body = self.waiting.lines(o.create_time, now) if self.waiting is not None else ["settled meanwhile"]
        return [head, *(f"  {line}" for line in body)]


async def _not_final(mesh: MeshView, older_than: float, limit: int | None) -> tuple[list[str], int]:
    """The ids of the orders not final and unchanged for longer than `older_than` s (the longest first, at most
    `limit`), and how many there are in all."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from order_svc.store import orders_table

    db = mesh.stores["order_svc"]
    t = orders_table(db.metadata)
    waiting_long = (t.c.status.in_(NOT_FINAL), t.c.update_time <= datetime.now(UTC) - timedelta(seconds=older_than))
    try:
        async with db.read() as conn:
            ids = [r.order_id for r in await conn.execute(select(t.c.order_id).where(*waiting_long)
                                                          .order_by(t.c.update_time, t.c.order_id).limit(limit))]
            total = len(ids) if limit is None or len(ids) < limit else \
                int((await conn.execute(select(func.count()).select_from(t).where(*waiting_long))).scalar() or 0)
    except (SQLAlchemyError, OSError) as exc:
        raise _unreadable(db, exc) from None
    return ids, total


async def stuck_orders(mesh: MeshView, older_than: float, limit: int | None = None) -> tuple[list[StuckOrder], int]:
    """The orders not final and unchanged for longer than `older_than` seconds, the longest first (at most `limit`),
    each with where it waits; and how many such orders there are."""
    ids, total = await _not_final(mesh, older_than, limit)
    out: list[StuckOrder] = []
    for order_id in ids:
        order = await find_order(mesh, order_id)
        if order is None or order.status in SETTLED:
            continue  # settled since the list was read
        diagnosis = await waiting(mesh, await read_saga(mesh, order))
        out.append(StuckOrder(order, ms_between(order.update_time, datetime.now(UTC)) / 1000, diagnosis))
    return out, total - (len(ids) - len(out))


async def stuck(env: Mapping[str, str], older_than: float, *, limit: int | None = None) -> list[StuckOrder]:
    """`paymesh stuck`'s orders on the mesh `env` points at. Raises NoMesh, MeshRefused."""
    async with open_mesh(env) as mesh:
        return (await stuck_orders(mesh, older_than, limit))[0]


async def guarded(body: Callable[[], Awaitable[int]]) -> int:
    """Run a command's body on the mesh; what keeps it from reading one is one line on stderr and exit 2."""
    import nats.errors

    try:
        return await body()
    except NoMesh as exc:
        print(f"paymesh: no mesh running: {exc}", file=sys.stderr)
    except MeshRefused as exc:
        print(f"paymesh: {exc}", file=sys.stderr)
    except (nats.errors.Error, TimeoutError) as exc:
        print(f"paymesh: the mesh's NATS did not answer as expected ({type(exc).__name__}); is JetStream on, and "
              "are these the operator's credentials (PAYMESH_NATS_CREDS)?", file=sys.stderr)
    return 2


async def run(env: Mapping[str, str], older_than: float, *, as_json: bool, limit: int) -> int:
    """The body of `paymesh stuck`; the exit status."""

    async def body() -> int:
        async with open_mesh(env) as mesh:
            found, total = await stuck_orders(mesh, older_than, limit)
        age, now = shown_duration(older_than), datetime.now(UTC)
        if as_json:
            print(json.dumps({"older_than_s": older_than, "count": total, "orders": [s.as_json() for s in found]},
                             sort_keys=True, indent=2))
        elif not found:
            print(f"no order waits longer than {age}")
        else:
            print("\n".join(line for s in found for line in s.lines(now)))
            more = f" ({total - len(found)} not shown: --limit)" if total > len(found) else ""
            print(f"{total} order{'s' if total != 1 else ''} not final, unchanged for longer than {age}{more}")
        return 1 if found else 0

    return await guarded(body)


def run_stuck(args: argparse.Namespace) -> int:
    import os

    from paymesh.ops.mesh_file import running_env

    env, _ = running_env(os.environ, args.data_dir)
    return asyncio.run(run(env, args.older_than, as_json=args.json, limit=args.limit))


def add_stuck(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from paymesh.ops.cli import at_least_one
    parser = subcommands.add_parser(
        "stuck",
        help="the orders not final that have not changed for a while, and where each waits",
        description=(
            "Lists every order in PENDING, AWAITING_PAYMENT or CANCELLING that has not changed for longer than "
            "--older-than, the longest first, each with what it waits for, as `paymesh trace` ends: which service, "
            "through which durable and event, since when, the durable's pending counts and the last error. Exit 1 "
            "when there is any, 0 when none, 2 when no mesh runs. Durations read 30s, 5m, 2h, 7d."
        ),
    )
    parser.add_argument("--older-than", type=seconds, default=30.0, metavar="AGE",
                        help="unchanged for longer than this (default 30s)")
    parser.add_argument("--limit", type=at_least_one, default=DEFAULT_LIMIT, metavar="N",
                        help=f"diagnose at most N orders, the longest waiting first (default {DEFAULT_LIMIT})")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (its schema: pydoc paymesh.ops.stuck)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="the data dir of `paymesh up`: its mesh.json, stores, logs and the operator's NATS user "
                             "(default: $PAYMESH_DATA_DIR, else ./.paymesh)")
    parser.set_defaults(handler=run_stuck)
