"""`paymesh trace ORDER_ID`: one order's history across every service and stream, in time order, and what it waits for.

Read, never written: order_svc's order and its request log (the stored answers of CreateOrder and CancelOrder are
decoded to find the order's), the order's events on the ORDER, INVENTORY and PAYMENT streams (`<domain>.*.<order_id>`,
each stream read by an ephemeral consumer that is deleted after), each durable's inbox row for them and the durable's
state on the server, payment_svc's payment with its audit trail and RefundPayment calls, gateway_mock's charges and
refunds, webhook_svc's events, deliveries and attempts. A store that is not there is left out, with a note.

Times a store writes with a SQL default (the inbox's `applied_at`, the request log's `created_at`) are kept to the
second on SQLite: such an entry stands at the latest time known to precede it (the stored second, its event's
publication), marked `>=` in the text and `"at_least": true` in the JSON.

`--json` prints one object; its keys are stable (keys may be added, none renamed):

    {"order_id", "merchant_id", "status" (order_svc's OrderStatus), "placed_at", "updated_at" (ISO 8601, UTC),
     "final": bool (the status is one of order_svc's SETTLED),
     "entries": [{"at" (ISO), "offset_ms" (since placed_at), "service", "kind", "what", "at_least": bool,
                  "detail": {...}}],
     "waiting": null (final) | {"for", "service", "durable" | null, "event" | null, "event_id" | null, "since" (ISO),
                "pending", "ack_pending", "redelivered" (the durable's, null without one), "state" (the event's on
                that durable) | null, "last_error": null | {"source": "log" | "dlq", "where", "message"},
                "also": [str] (what else holds it up)},
     "aged_out": bool, "retention_s": float, "notes": [str]}

`kind` and its `detail`: `rpc` {method, request_id, answered, status}; `published` {event_id, subject, stream, seq,
type, consumers: [{durable, service, applied_at | null, state}]}; `applied` {event_id, subject, durable, applied_at};
`audit` {payment_id, position, type, from_status, to_status, amount_minor, currency, detail}; `charge` {charge_id,
status, outcome, amount_minor, refunded_minor, currency, decline_code, idempotency_key}; `refund` {refund_id,
charge_id, amount_minor, currency, reason}; `webhook` {event_id, type, sequence, source_event_id, created} for an event
(placed when webhook_svc made it: not before the saga event it tells of was published), and
{event_id, type, delivery_id, endpoint_id, status, attempt, http_status, error, latency_ms, next_attempt_at} for a
delivery. `aged_out`: the order is older than the streams keep events (their max_age, else PAYMESH_STREAM_MAX_AGE)
and its events are gone from them; what the stores hold is still shown.

What it waits for is paymesh.ops.stuck's diagnosis, the one `paymesh stuck` prints. `--follow` re-reads until the
order is final or --timeout passes (exit 1 then), printing each new line once; with --json each new entry is one JSON
line ({"entry": ...}) and the whole object ({"trace": ...}) ends it. Exit 1 for an unknown order, 2 when no mesh runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from order_svc.domain import SETTLED, Order
from paymesh.chassis.money import format_minor
from paymesh.ops.stuck import (
    MeshView,
    Saga,
    Waiting,
    find_order,
    first_line,
    guarded,
    iso,
    ms_between,
    offset,
    open_mesh,
    read_saga,
    seconds,
    shown_duration,
    waiting,
)

if TYPE_CHECKING:  # loads SQLAlchemy: imported where used, as the stores are read
    from paymesh.chassis.db import Database

KINDS = ("rpc", "published", "applied", "audit", "charge", "refund", "webhook")
# The detail fields that tell one entry of a kind from another: `--follow` prints each entry once by them.
IDENTITY = {"rpc": ("method", "request_id"), "published": ("event_id",), "applied": ("event_id", "durable"),
            "audit": ("payment_id", "position"), "charge": ("charge_id",), "refund": ("refund_id",),
            "webhook": ("event_id", "delivery_id", "attempt")}
CREATE_ORDER, CANCEL_ORDER, REFUND_PAYMENT = "OrderService.CreateOrder", "OrderService.CancelOrder", "RefundPayment"
# The request log's created_at is written before the order's create_time, in the same transaction (and to the
# second on SQLite): an order's CreateOrder row is within this of it.
CREATE_WINDOW = timedelta(seconds=10)
# At most this many rows of a merchant's request log are decoded, steps of a trail read, and so on.
SCAN_LIMIT = 10_000
PAGE = 500
FOLLOW_PERIOD_S = 0.25


class OrderNotFound(Exception):
    """order_svc holds no order of that id."""


@dataclass(frozen=True)
class Entry:
    at: datetime
    service: str
    kind: str
    what: str
    detail: dict[str, Any] = field(default_factory=dict)
    at_least: bool = False  # `at` is a lower bound (a store time kept to the second)
    note: str = ""  # the text line's changing tail (who has not applied it yet), not part of its identity

    @property
    def key(self) -> tuple[str, ...]:
        """What the entry is, whatever a later read learns of it (its time, who has applied it since)."""
        return self.kind, *(str(self.detail.get(name)) for name in IDENTITY[self.kind])

    def as_json(self, placed_at: datetime) -> dict[str, Any]:
        return {"at": iso(self.at), "offset_ms": round(ms_between(placed_at, self.at), 3), "service": self.service,
                "kind": self.kind, "what": self.what, "at_least": self.at_least, "detail": self.detail}

    def line(self, placed_at: datetime) -> str:
        at = offset(ms_between(placed_at, self.at))
        return f"{('>=' + at) if self.at_least else at:>13}  {self.service:<13}  {self.what}{self.note}"


@dataclass
class Trace:
    order: Order
    entries: list[Entry]
    waiting: Waiting | None
    aged_out: bool
    retention_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.order.status in SETTLED

    def as_json(self) -> dict[str, Any]:
        o = self.order
        return {"order_id": o.order_id, "merchant_id": o.merchant_id, "status": o.status.value,
                "placed_at": iso(o.create_time), "updated_at": iso(o.update_time), "final": self.final,
                "entries": [e.as_json(o.create_time) for e in self.entries],
                "waiting": None if self.waiting is None else self.waiting.as_json(),
                "aged_out": self.aged_out, "retention_s": self.retention_s, "notes": list(self.notes)}

    def header(self) -> str:
        return f"order {self.order.order_id} of {self.order.merchant_id}, placed {iso(self.order.create_time)}"

    def footer(self, now: datetime) -> list[str]:
        lines = [f"note: {n}" for n in self.notes]
        if self.aged_out:
            lines.append(f"its events aged out of the streams (they keep {shown_duration(self.retention_s)}, "
                         "PAYMESH_STREAM_MAX_AGE): what the stores hold is shown")
        status = self.order.status.value
        if self.waiting is None:
            return [*lines, f"{status}: final"]
        first, *rest = self.waiting.lines(self.order.create_time, now)
        return [*lines, f"{status}, not final: {first}", *rest]

    def text(self, now: datetime | None = None) -> str:
        placed = self.order.create_time
        return "\n".join([self.header(), *(e.line(placed) for e in self.entries),
                          *self.footer(now or datetime.now(UTC))])


# -- the history, from the streams and each store -------------------------------------------------------------------


def event_entries(saga: Saga) -> list[Entry]:
    out: list[Entry] = []
    for event in saga.events:
        consumers: list[dict[str, Any]] = []
        waiting_on: list[str] = []
        for durable in saga.consumers_of(event):
            applied = saga.applied_at(event, durable.name)
            state = saga.state(event, durable)
            consumers.append({"durable": durable.name, "service": durable.service,
                              "applied_at": None if applied is None else iso(applied), "state": state})
            if applied is None:
                waiting_on.append(f"{durable.name}: {state}")
                continue
            rough = durable.service in saga.to_the_second
            out.append(Entry(max(applied, event.at) if rough else applied, durable.service, "applied",
                             f"applied {event.name} ({durable.name})",
                             {"event_id": event.event_id, "subject": event.subject, "durable": durable.name,
                              "applied_at": iso(applied)}, at_least=rough))
        what = f"published {event.name} ({event.stream} #{event.seq})"
        out.append(Entry(event.at, event.publisher, "published", what,
                         {"event_id": event.event_id, "subject": event.subject, "stream": event.stream,
                          "seq": event.seq, "type": event.type, "consumers": consumers},
                         note=f"; not applied by {'; '.join(waiting_on)}" if waiting_on else ""))
    return out


async def order_commands(db: Database, saga: Saga) -> list[Entry]:
    """CreateOrder and CancelOrder of this order, from order_svc's request log (their stored answers name it)."""
    from google.protobuf.message import DecodeError
    from sqlalchemy import or_, select

    from paymesh.chassis.db import as_utc
    from paymesh.chassis.idempotency import requests_table
    from paymesh.order.v1 import order_pb2, order_service_pb2

    order = saga.order
    log = requests_table(db.metadata)
    placed = order.create_time
    query = (select(log.c.request_id, log.c.method, log.c.response, log.c.created_at)
             .where(log.c.merchant_id == order.merchant_id, log.c.response.is_not(None),
                    log.c.created_at >= placed - CREATE_WINDOW,
                    or_(log.c.method == CANCEL_ORDER,
                        (log.c.method == CREATE_ORDER) & (log.c.created_at <= placed + CREATE_WINDOW)))
             .order_by(log.c.created_at).limit(SCAN_LIMIT))
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    created: Entry | None = None
    out: list[Entry] = []
    for row in rows:
        answer_type = order_service_pb2.CreateOrderResponse if row.method == CREATE_ORDER \
            else order_service_pb2.CancelOrderResponse
        try:
            answered = answer_type.FromString(row.response).order
        except DecodeError:
            continue
        if answered.order_id != order.order_id:
            continue
        method = row.method.rpartition(".")[2]
        detail = {"method": row.method, "request_id": row.request_id, "answered": True,
                  "status": order_pb2.OrderStatus.Name(answered.status).removeprefix("ORDER_STATUS_")}
        if row.method == CREATE_ORDER:
            created = Entry(placed, "order_svc", "rpc", f"{method} OK (request {row.request_id})", detail)
            continue
        at = max(as_utc(row.created_at), answered.update_time.ToDatetime(tzinfo=UTC))
        out.append(Entry(at, "order_svc", "rpc", f"{method} OK -> {detail['status']} (request {row.request_id})",
                         detail, at_least=db.is_sqlite))
    if created is None:
        created = Entry(placed, "order_svc", "rpc", "CreateOrder OK",
                        {"method": CREATE_ORDER, "request_id": None, "answered": True, "status": None})
    return [created, *out]


async def payment_history(db: Database, saga: Saga) -> list[Entry]:
    """payment_svc's payment of the order: its audit trail and the RefundPayment calls made on it."""
    from sqlalchemy import select

    from payment_svc.store import PaymentRepository
    from paymesh.chassis.db import as_utc
    from paymesh.chassis.idempotency import requests_table

    order = saga.order
    repo = PaymentRepository(db.metadata)
    key = (order.merchant_id, order.order_id)
    log, refunds = requests_table(db.metadata), repo.t.refunds
    async with db.read() as conn:
        payment = (await repo.by_orders(conn, [key], lock=False)).get(key)
        if payment is None:
            return []
        trail = await repo.trail(conn, order.merchant_id, payment.payment_id, 0, SCAN_LIMIT)
        asked = (await conn.execute(select(refunds).where(refunds.c.merchant_id == order.merchant_id,
                                                          refunds.c.payment_id == payment.payment_id,
                                                          refunds.c.request_id != ""))).all()
        answered = {r.request_id for r in await conn.execute(
            select(log.c.request_id).where(log.c.merchant_id == order.merchant_id, log.c.method == REFUND_PAYMENT,
                                           log.c.request_id.in_([a.request_id for a in asked]),
                                           log.c.response.is_not(None)))} if asked else set()
    out = [Entry(step.create_time, "payment_svc", "audit",
                 f"payment {step.type}: {step.from_status.value if step.from_status else '-'} -> {step.to_status.value}"
                 + (f" {format_minor(step.amount_minor, payment.currency)}" if step.amount_minor else ""),
                 {"payment_id": step.payment_id, "position": step.position, "type": step.type,
                  "from_status": step.from_status.value if step.from_status else None,
                  "to_status": step.to_status.value, "amount_minor": step.amount_minor,
                  "currency": payment.currency, "detail": step.detail})
           for step in trail]
    for refund in asked:
        done = refund.request_id in answered
        out.append(Entry(as_utc(refund.create_time), "payment_svc", "rpc",
                         f"RefundPayment {'OK' if done else 'in progress'} "
                         f"{format_minor(refund.amount_minor, payment.currency)} (request {refund.request_id})",
                         {"method": REFUND_PAYMENT, "request_id": refund.request_id, "answered": done,
                          "status": refund.status}))
    return out


async def gateway_history(db: Database, saga: Saga) -> list[Entry]:
    """gateway_mock's charges of the order and their refunds."""
    from sqlalchemy import select

    from gateway_mock.domain import ChargeQuery, ChargeStatus
    from gateway_mock.store import GatewayRepository
    from paymesh.chassis.db import as_utc

    order = saga.order
    repo = GatewayRepository(db.metadata)
    refunds = db.metadata.tables["refunds"]
    async with db.read() as conn:
        charges, _ = await repo.list_charges(conn, ChargeQuery(page_size=PAGE, merchant_id=order.merchant_id,
                                                               order_id=order.order_id))
        ids = [c.charge_id for c in charges]
        returned = (await conn.execute(select(refunds).where(refunds.c.charge_id.in_(ids))
                                       .order_by(refunds.c.create_time))).all() if ids else []
    out: list[Entry] = []
    for c in charges:
        outcome = "DECLINED" if c.status == ChargeStatus.DECLINED else "SUCCEEDED"
        out.append(Entry(as_utc(c.create_time), "gateway_mock", "charge",
                         f"charge {c.charge_id} {outcome} {format_minor(c.amount_minor, c.currency)}"
                         + (f" ({c.decline_code})" if c.decline_code else ""),
                         {"charge_id": c.charge_id, "status": c.status.value, "outcome": outcome,
                          "amount_minor": c.amount_minor, "refunded_minor": c.refunded_minor, "currency": c.currency,
                          "decline_code": c.decline_code, "idempotency_key": c.idempotency_key},
                         note=f" (now {c.status.value})" if c.status.value != outcome else ""))
    for r in returned:
        out.append(Entry(as_utc(r.create_time), "gateway_mock", "refund",
                         f"refund {r.refund_id} {format_minor(r.amount_minor, r.currency)} of {r.charge_id}",
                         {"refund_id": r.refund_id, "charge_id": r.charge_id, "amount_minor": r.amount_minor,
                          "currency": r.currency, "reason": r.reason}))
    return out


async def webhook_history(db: Database, saga: Saga) -> list[Entry]:
    """webhook_svc's events of the order (each placed when webhook_svc made it: not before the saga event it tells
    of was published, though its `created` is that event's time), their deliveries and every attempt."""
    from paymesh.chassis.db import as_utc
    from webhook_svc.store import WebhookRepository
    from webhook_svc.store import tables as webhook_tables

    order = saga.order
    repo = WebhookRepository(webhook_tables(db.metadata))
    published = {e.event_id: e.at for e in saga.events}
    out: list[Entry] = []
    async with db.read() as conn:
        events = await repo.events_page(conn, order.merchant_id, type="", order_id=order.order_id,
                                        delivery_success=None, after=None, limit=PAGE)
        for event, _ in events:
            created = as_utc(event.create_time)
            out.append(Entry(max(created, published.get(event.source_event_id, created)), "webhook_svc", "webhook",
                             f"event {event.type} {event.event_id} (sequence {event.sequence})",
                             {"event_id": event.event_id, "type": event.type, "sequence": event.sequence,
                              "source_event_id": event.source_event_id, "created": iso(created)}))
            deliveries = await repo.deliveries_page(conn, order.merchant_id, event_id=event.event_id, endpoint_id="",
                                                    after=None, limit=PAGE)
            for delivery, attempts in deliveries:
                base = {"event_id": event.event_id, "type": event.type, "delivery_id": delivery.delivery_id,
                        "endpoint_id": delivery.endpoint_id, "status": delivery.status.value}
                given_up = f"; gave up: {delivery.failure_reason.value}" if delivery.failure_reason else ""
                for n, a in enumerate(attempts, 1):
                    last = given_up if n == len(attempts) else ""
                    what = (f"delivered {event.type} to {delivery.endpoint_id} ({a.http_status}, attempt {a.attempt})"
                            if a.delivered else
                            f"delivery of {event.type} to {delivery.endpoint_id} failed "
                            f"({a.http_status or a.error}, attempt {a.attempt}){last}")
                    out.append(Entry(as_utc(a.attempt_time), "webhook_svc", "webhook", what,
                                     base | {"attempt": a.attempt, "http_status": a.http_status, "error": a.error,
                                             "latency_ms": a.latency_ms, "next_attempt_at": None}))
                if not attempts:
                    due = delivery.next_attempt_time
                    out.append(Entry(as_utc(delivery.create_time), "webhook_svc", "webhook",
                                     f"delivery of {event.type} to {delivery.endpoint_id} "
                                     f"{delivery.status.value.lower()}{given_up}",
                                     base | {"attempt": 0, "http_status": None, "error": "", "latency_ms": None,
                                             "next_attempt_at": None if due is None else iso(due)}))
    return out


STORE_HISTORIES = (("order_svc", order_commands), ("payment_svc", payment_history),
                   ("gateway_mock", gateway_history), ("webhook_svc", webhook_history))


async def read_trace(mesh: MeshView, order_id: str) -> Trace | None:
    """The order's trace; None when order_svc holds no such order."""
    from sqlalchemy.exc import SQLAlchemyError

    order = await find_order(mesh, order_id)
    if order is None:
        return None
    saga = await read_saga(mesh, order)
    entries = event_entries(saga)
    notes = [*mesh.notes, *saga.notes]
    for service, history in STORE_HISTORIES:
        if (db := mesh.stores.get(service)) is None:
            continue
        try:
            entries += await history(db, saga)
        except (SQLAlchemyError, OSError) as exc:
            notes.append(f"{service}'s store could not be read: {first_line(exc)}")
    entries.sort(key=lambda e: (e.at, KINDS.index(e.kind)))
    return Trace(order, entries, await waiting(mesh, saga), saga.aged_out, saga.retention_s, notes)


async def trace(env: Mapping[str, str], order_id: str) -> Trace:
    """The trace of `order_id` on the mesh `env` points at. Raises NoMesh, MeshRefused, OrderNotFound."""
    async with open_mesh(env) as mesh:
        found = await read_trace(mesh, order_id)
    if found is None:
        raise OrderNotFound(order_id)
    return found


# -- the command ----------------------------------------------------------------------------------------------------


async def _follow(mesh: MeshView, first: Trace, as_json: bool, timeout: float) -> int:
    shown: set[tuple[str, ...]] = set()
    current = first
    deadline = asyncio.get_running_loop().time() + timeout
    if not as_json:
        print(first.header(), flush=True)
    while True:
        placed = current.order.create_time
        for entry in current.entries:
            if entry.key not in shown:
                shown.add(entry.key)
                print(json.dumps({"entry": entry.as_json(placed)}, sort_keys=True) if as_json else entry.line(placed),
                      flush=True)
        if current.final or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(FOLLOW_PERIOD_S)  # re-reading the stores and streams, under the deadline
        current = await read_trace(mesh, first.order.order_id) or current
    print(json.dumps({"trace": current.as_json()}, sort_keys=True) if as_json
          else "\n".join(current.footer(datetime.now(UTC))))
    return 0 if current.final else 1


async def run(env: Mapping[str, str], order_id: str, *, as_json: bool, follow: bool, timeout: float) -> int:
    """The body of `paymesh trace`; the exit status."""

    async def body() -> int:
        async with open_mesh(env) as mesh:
            found = await read_trace(mesh, order_id)
            if found is None:
                print(f"paymesh: order {order_id} not found in order_svc", file=sys.stderr)
                return 1
            if follow:
                return await _follow(mesh, found, as_json, timeout)
        print(json.dumps(found.as_json(), sort_keys=True, indent=2) if as_json else found.text())
        return 0

    return await guarded(body)


def run_trace(args: argparse.Namespace) -> int:
    import os

    from paymesh.ops.mesh_file import running_env

    env, _ = running_env(os.environ, args.data_dir)
    return asyncio.run(run(env, args.order_id, as_json=args.json, follow=args.follow, timeout=args.timeout))


def add_trace(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subcommands.add_parser(
        "trace",
        help="one order's whole history across the services and streams, in time order, and what it waits for",
        description=(
            "Merges, in time order and timed from the order's placing: the order's gRPC commands (order_svc's and "
            "payment_svc's request logs), each of its events on the ORDER, INVENTORY and PAYMENT streams with who "
            "published it and which durable applied it when (their inboxes), payment_svc's audit trail, the "
            "gateway's charges and refunds, and webhook_svc's deliveries. Ends with the order's status and, when it "
            "is not final, what it waits for: which service, through which durable and event, since when, the "
            "durable's pending counts and the last error (its DLQ entry, else its service's log). The mesh is found "
            "from mesh.json in the data dir, else the environment. Exit 1 for an unknown order, 2 when no mesh runs."
        ),
    )
    parser.add_argument("order_id", metavar="ORDER_ID")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (its schema: pydoc paymesh.ops.trace)")
    parser.add_argument("--follow", action="store_true",
                        help="print new lines as they appear until the order is final (exit 1 if --timeout passes)")
    parser.add_argument("--timeout", type=seconds, default=60.0, metavar="S",
                        help="how long --follow waits for the order to be final (default 60)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="the data dir of `paymesh up`: its mesh.json, stores, logs and the operator's NATS user "
                             "(default: $PAYMESH_DATA_DIR, else ./.paymesh)")
    parser.set_defaults(handler=run_trace)
