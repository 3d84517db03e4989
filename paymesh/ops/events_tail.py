"""`paymesh events tail`: the saga's events decoded from their protobuf, live, as a JetStream subscriber sees them.

One ordered consumer per stream read (ORDER, INVENTORY, PAYMENT): ephemeral, in memory, acking nothing, deleted on
exit (and dropped by the server a few seconds after a tail that was killed), so no durable consumer of the mesh is
touched. `--order` and `--type` become the consumers' subject filters (`<domain>.*.<order_id>`,
`payment.succeeded.*`), so the server does the filtering. Each stream's events come in its stream order, and the
streams merge by JetStream's timestamps: a replay (`--from-start`) reads as the saga happened, live events come as
they arrive. Each message is decoded with the one event registry
(`paymesh.chassis.events.message_types` over the generated `events_pb2` modules); one that does not decode is
printed as such, with the reason.

Text, one line per event:

    <time>  <STREAM>#<seq>  <subject>  <Paymesh-Type>  order=<order_id> merchant=<merchant_id>  <payload fields>

`--json`, one object per line, every key always present (the schema is stable; keys may be added, never renamed):

    time         JetStream's timestamp of the message, RFC 3339 UTC: "2025-06-01T10:00:00.123456Z"
    stream       "ORDER" | "INVENTORY" | "PAYMENT"
    seq          the message's stream sequence (int)
    subject      "payment.succeeded.<order_id>"
    event        "payment.succeeded": the type's <domain>.<event> (the subject's first two tokens when undecodable)
    type         the Paymesh-Type header: "paymesh.payment.v1.PaymentSucceeded" ("" when missing)
    order_id     the payload's (the subject's last token when undecodable)
    merchant_id  the payload's (the Paymesh-Merchant header when undecodable, "" without one)
    event_id     the payload's (the Nats-Msg-Id header when undecodable)
    trace_id     the trace id (32 hex digits) of the traceparent header, "" when absent or malformed
    delivered    how many times JetStream delivered the message to this tail (int, 1)
    payload      the message in protobuf's JSON mapping, `MessageToDict(message, preserving_proto_field_name=True,
                 always_print_fields_with_no_presence=True)`: every field present, int64 as strings ("1500"),
                 timestamps RFC 3339, enums by name; a payment token is shown as "[redacted]"; null when undecodable
    error        null, or why the message did not decode

Exit status: 0 after --count events, on Ctrl-C or SIGTERM, and when --timeout ends a tail without --count; 1 when
--timeout ends it before --count events came, or the connection to NATS is lost; 2 when no mesh runs or the
arguments name no order or event there can be.

Only the standard library is imported here at load (`paymesh --help` imports `add_events`): what talks to NATS or
decodes protobuf is imported by the functions that use it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from paymesh.ops.mesh_nats import MeshNotFound, NatsAddress

NO_MESH = "paymesh: no mesh running:"
# Fields every saga event carries, shown in their own columns of a text line.
COMMON_FIELDS = frozenset({"event_id", "order_id", "occurred_at", "merchant_id"})
# What stays out of the output as it stays out of logs (DESIGN: no payment token in a log line).
REDACTED_FIELDS = frozenset({"payment_method_token"})
REDACTED = "[redacted]"
# Messages held per stream for the time-ordered merge; past it, the stream's consumer waits (flow control).
QUEUE_SIZE = 256
# The server drops the consumer of a tail killed before it could delete it, this long after its last interest.
INACTIVE_THRESHOLD_S = 5.0
CLEANUP_S = 2.0
LIVENESS_TICK_S = 1.0  # how often a quiet tail looks whether its connection still stands
# What may stand in a subject token: an order id with `.`, `*`, `>` or a space would filter something else.
SUBJECT_TOKEN = re.compile(r"[^.*>\s]+")


class TailRefused(Exception):
    """Arguments that can name no event (an unknown event type, an order id no subject can hold)."""


@dataclass(frozen=True)
class Selection:
    """Which events a tail shows: of one order or all, of some event types or all, from each stream's start
    or from now on."""

    order_id: str | None
    types: tuple[type[Message], ...]  # empty: every event type
    from_start: bool

    def filters(self) -> dict[str, list[str]]:
        """Each stream to read and its consumer's subject filters; a stream with no wanted type is not read."""
        order = self.order_id or "*"
        out: dict[str, list[str]] = {}
        for domain, events in domains().items():
            stream = domain.upper()  # `ORDER` holds `order.>` (paymesh.chassis.jetstream.stream_subjects)
            if not self.types:
                out[stream] = [f"{domain}.>"] if self.order_id is None else [f"{domain}.*.{order}"]
                continue
            wanted = [event for event, cls in events.items() if cls in self.types]
            if wanted:
                out[stream] = [f"{domain}.{event}.{order}" for event in wanted]
        return out


def registry() -> dict[str, type[Message]]:
    """The saga's events by their `Paymesh-Type`, from the generated modules, as every consumer makes it."""
    from paymesh.chassis.events import message_types
    from paymesh.inventory.v1 import events_pb2 as inventory_events
    from paymesh.order.v1 import events_pb2 as order_events
    from paymesh.payment.v1 import events_pb2 as payment_events

    return message_types(order_events, inventory_events, payment_events)


def domains() -> dict[str, dict[str, type[Message]]]:
    """domain -> event -> type, in the streams' order: {"payment": {"succeeded": PaymentSucceeded, ...}, ...}."""
    from paymesh.chassis.events import event_name

    out: dict[str, dict[str, type[Message]]] = {}
    for cls in registry().values():
        domain, event = event_name(cls)
        out.setdefault(domain, {})[event] = cls
    return out


def event_of(cls: type[Message]) -> str:
    """`payment.succeeded` for PaymentSucceeded."""
    from paymesh.chassis.events import event_name

    return ".".join(event_name(cls))


def resolve_types(values: Sequence[str]) -> tuple[type[Message], ...]:
    """--type values (repeated, or separated by commas) as event types: `payment.succeeded`, `PaymentSucceeded`
    or `paymesh.payment.v1.PaymentSucceeded`, in any case."""
    known = registry().values()
    names: dict[str, type[Message]] = {}
    for cls in known:
        for name in (event_of(cls), cls.DESCRIPTOR.name, cls.DESCRIPTOR.full_name):
            names[name.lower()] = cls
    out: list[type[Message]] = []
    for value in (v.strip() for raw in values for v in raw.split(",")):
        if not value:
            continue
        found = names.get(value.lower())
        if found is None:
            listed = ", ".join(event_of(c) for c in known)
            raise TailRefused(f"--type {value!r} is no event of the saga; the events are {listed} "
                              "(or their message names, e.g. PaymentSucceeded)")
        if found not in out:
            out.append(found)
    return tuple(out)


def selection_of(order_id: str | None, types: Sequence[str], from_start: bool) -> Selection:
    if order_id is not None and not SUBJECT_TOKEN.fullmatch(order_id):
        raise TailRefused(f"--order {order_id!r} is no order id: one is a single subject token, with no '.', "
                          "'*', '>' or space")
    return Selection(order_id, resolve_types(types), from_start)


# Rendering


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _trace_id(traceparent: str | None) -> str:
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if k in REDACTED_FIELDS else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def record(msg: Msg, types: dict[str, type[Message]]) -> tuple[dict[str, Any], Message | None]:
    """The --json object of one message (the module's docstring gives its schema), and its decoded payload
    (None when it does not decode)."""
    from google.protobuf.json_format import MessageToDict

    from paymesh.chassis.events import MERCHANT, MSG_ID, TRACEPARENT, TYPE, UndecodableEvent, decode

    headers = msg.headers or {}
    meta = msg.metadata
    subject = msg.subject
    out: dict[str, Any] = {
        "time": _time(meta.timestamp),
        "stream": meta.stream,
        "seq": meta.sequence.stream,
        "subject": subject,
        "event": ".".join(subject.split(".")[:2]),
        "type": headers.get(TYPE, ""),
        "order_id": subject.split(".", 2)[2] if subject.count(".") >= 2 else "",
        "merchant_id": headers.get(MERCHANT, ""),
        "event_id": headers.get(MSG_ID, ""),
        "trace_id": _trace_id(headers.get(TRACEPARENT)),
        "delivered": meta.num_delivered,
        "payload": None,
        "error": None,
    }
    try:
        event = decode(msg, types)
    except UndecodableEvent as exc:
        out["error"] = str(exc)
        return out, None
    except Exception as exc:  # whatever a stream holds is shown, never a crash of the tail
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out, None
    out |= {
        "event": event_of(type(event.message)),
        "order_id": event.order_id,
        "merchant_id": str(getattr(event.message, "merchant_id", "")),
        "event_id": event.event_id,
        "payload": _redact(MessageToDict(event.message, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)),
    }
    return out, event.message


def _enum_label(enum: Any, number: int) -> str:  # an EnumDescriptor (the stubs know two kinds)
    """`CONFIRMED` for ORDER_STATUS_CONFIRMED of OrderStatus."""
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    return str(value.name).removeprefix(prefix)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in "\"=" for c in text) else text


def _line_item(item: Any) -> str:
    """`sku-1x2@500` for a line (sku, quantity, unit price in minor units); its fields otherwise."""
    fields = item.DESCRIPTOR.fields_by_name
    if "sku" in fields and "quantity" in fields:
        price = f"@{item.unit_price_minor}" if "unit_price_minor" in fields else ""
        return f"{item.sku}x{item.quantity}{price}"
    return " ".join(f"{k.name}={_scalar(v)}" for k, v in item.ListFields())


def summary(message: Message) -> str:
    """The payload's own fields, short: scalars as name=value (empty strings left out), lines compact, a
    timestamp in RFC 3339, a nested order or payment by its status; never a payment token."""
    parts: list[str] = []
    for field in message.DESCRIPTOR.fields:
        name = field.name
        if name in COMMON_FIELDS or name in REDACTED_FIELDS:
            continue
        value = getattr(message, name)
        if field.is_repeated:
            if field.message_type is not None:
                shown = ",".join(_line_item(v) for v in value)
            else:
                shown = ",".join(_scalar(v) for v in value)
            if shown:
                parts.append(f"{name}=[{shown}]")
        elif field.message_type is not None:
            if not message.HasField(name):
                continue
            if field.message_type.full_name == "google.protobuf.Timestamp":
                parts.append(f"{name}={_time(value.ToDatetime(tzinfo=UTC))}")
            elif (status := field.message_type.fields_by_name.get("status")) is not None and status.enum_type:
                parts.append(f"{name}.status={_enum_label(status.enum_type, value.status)}")
        elif field.enum_type is not None:
            parts.append(f"{name}={_enum_label(field.enum_type, value)}")
        elif isinstance(value, str):
            if value:
                parts.append(f"{name}={_scalar(value)}")
        else:
            parts.append(f"{name}={_scalar(value)}")
    return " ".join(parts)


def text_line(rec: dict[str, Any], message: Message | None) -> str:
    """One event for a person; the time to the millisecond."""
    head = f"{rec['time'][:23]}Z  {rec['stream']}#{rec['seq']}  {rec['subject']}  {rec['type'] or '-'}"
    if message is None:
        return f"{head}  UNDECODABLE: {rec['error']}"
    who = f"order={rec['order_id']} merchant={rec['merchant_id'] or '-'}"
    return f"{head}  {who}  {summary(message)}".rstrip()


def json_line(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"))


# Following the streams


class Merge:
    """The streams' messages in JetStream's time order: the earliest held is given out once no stream with
    messages still to deliver has none held (its next one could be earlier). A replay comes out as the saga
    happened across the streams; live events as they arrive. Each stream holds at most QUEUE_SIZE: a callback
    waiting for room holds back its consumer (flow control), so memory stays flat on a long replay."""

    def __init__(self, streams: Sequence[str]) -> None:
        self.held: dict[str, deque[Msg]] = {stream: deque() for stream in streams}
        # Messages each stream's consumer has still to deliver; None until its consumer says.
        self.undelivered: dict[str, int | None] = dict.fromkeys(streams)
        self.order = {stream: i for i, stream in enumerate(streams)}
        self.stopped = False
        self.changed = asyncio.Condition()

    def receiver(self, stream: str) -> Callable[[Msg], Awaitable[None]]:
        async def received(msg: Msg) -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: self.stopped or len(self.held[stream]) < QUEUE_SIZE)
                self.held[stream].append(msg)
                self.undelivered[stream] = msg.metadata.num_pending
                self.changed.notify_all()

        return received

    async def consumer_says(self, stream: str, undelivered: int) -> None:
        """What the consumer had to deliver when it was made (a message delivered since tells more)."""
        async with self.changed:
            if self.undelivered[stream] is None:
                self.undelivered[stream] = undelivered
            self.changed.notify_all()

    async def stop(self) -> None:
        async with self.changed:
            self.stopped = True
            self.changed.notify_all()

    def _ready(self) -> bool:
        if any(not held and pending != 0 for held, pending in zip(self.held.values(), self.undelivered.values(),
                                                                   strict=True)):
            return False
        return any(self.held.values())

    async def next(self, timeout_s: float) -> Msg | None:
        """The earliest message once it is known to be; None once stopped; TimeoutError after `timeout_s`."""
        async with self.changed:
            async with asyncio.timeout(timeout_s):
                await self.changed.wait_for(lambda: self.stopped or self._ready())
            if self.stopped:
                return None
            stream = min((s for s, held in self.held.items() if held),
                         key=lambda s: (self.held[s][0].metadata.timestamp, self.order[s]))
            self.changed.notify_all()  # room for its callback
            return self.held[stream].popleft()


async def tail(
    nc: NATS,
    selection: Selection,
    out: TextIO,
    *,
    as_json: bool = False,
    count: int | None = None,
    timeout_s: float | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[dict[str, list[str]]], None] | None = None,
) -> int:
    """Print the selected events to `out` until `count` of them, `timeout_s` seconds without one, or `stop`;
    the exit status (the module's docstring). `on_ready` is told each stream's filters once every consumer
    is in place: an event published after it is shown."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    js = nc.jetstream()
    types = registry()
    filters = selection.filters()
    merge = Merge(list(filters))
    subs: list[JetStreamContext.PushSubscription] = []
    watcher: asyncio.Task[None] | None = None
    try:
        for stream, subjects in filters.items():
            await js.stream_info(stream)  # NotFoundError: the mesh's service never made it
            sub = await js.subscribe(
                subjects[0], stream=stream, cb=merge.receiver(stream), ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL if selection.from_start else DeliverPolicy.NEW,
                inactive_threshold=INACTIVE_THRESHOLD_S,
                config=ConsumerConfig(filter_subjects=subjects) if len(subjects) > 1 else None,
            )
            subs.append(sub)
            await merge.consumer_says(stream, (await sub.consumer_info()).num_pending or 0)
        if on_ready is not None:
            on_ready(filters)
        if stop is not None:
            watcher = asyncio.create_task(_stop_on(stop, merge))
        return await _print_events(nc, merge, types, out, as_json, count, timeout_s)
    finally:
        if watcher is not None:
            watcher.cancel()
        await merge.stop()  # callbacks waiting for room let go
        await _leave_nothing(js, subs)


async def _stop_on(stop: asyncio.Event, merge: Merge) -> None:
    await stop.wait()
    await merge.stop()


async def _print_events(nc: NATS, merge: Merge, types: dict[str, type[Message]], out: TextIO,
                        as_json: bool, count: int | None, timeout_s: float | None) -> int:
    loop = asyncio.get_running_loop()
    shown = 0
    quiet_until = None if timeout_s is None else loop.time() + timeout_s
    while count is None or shown < count:
        wait = LIVENESS_TICK_S if quiet_until is None else min(LIVENESS_TICK_S, quiet_until - loop.time())
        try:
            msg = await merge.next(max(wait, 0.0))
        except TimeoutError:
            if nc.is_closed:
                print("paymesh: the connection to the mesh's NATS was lost", file=sys.stderr, flush=True)
                return 1
            if quiet_until is not None and loop.time() >= quiet_until:
                return 1 if count is not None else 0
            continue
        if msg is None:  # stopped
            return 0
        rec, message = record(msg, types)
        print(json_line(rec) if as_json else text_line(rec, message), file=out, flush=True)
        shown += 1
        if timeout_s is not None:
            quiet_until = loop.time() + timeout_s
    return 0


async def _leave_nothing(js: JetStreamContext, subs: list[JetStreamContext.PushSubscription]) -> None:
    """Unsubscribe and delete each tail consumer now, rather than the server a few seconds later."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLEANUP_S):
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
                with contextlib.suppress(Exception):
                    info = await sub.consumer_info()
                    await js.delete_consumer(info.stream_name, info.name)


def no_mesh(exc: MeshNotFound) -> str:
    """The one line for a mesh not found or not answering: what was tried and how to start one."""
    reason = str(exc).removeprefix("no mesh found: ").removeprefix("no mesh reachable: ")
    reason = reason.replace("; is `paymesh up` running?", "; start one with `paymesh up`")
    return f"{NO_MESH} {reason}"


def _readiness(address: NatsAddress, selection: Selection) -> Callable[[dict[str, list[str]]], None]:
    def ready(filters: dict[str, list[str]]) -> None:
        streams = ", ".join(f"{stream} ({' '.join(subjects)})" for stream, subjects in filters.items())
        start = "from each stream's first message" if selection.from_start else "new events only"
        print(f"paymesh: following {streams} at {address.shown()}, {start}; Ctrl-C stops", file=sys.stderr,
              flush=True)

    return ready


async def run(address: NatsAddress, selection: Selection, out: TextIO, *, as_json: bool = False,
              count: int | None = None, timeout_s: float | None = None, stop: asyncio.Event | None = None) -> int:
    """Connect as the operator's NATS user, tail, close; the exit status."""
    import nats.errors
    from nats.js.errors import NotFoundError

    from paymesh.ops.mesh_nats import MeshNotFound, connect

    try:
        nc = await connect(address, "paymesh-events-tail")
    except MeshNotFound as exc:
        print(no_mesh(exc), file=sys.stderr, flush=True)
        return 2
    try:
        return await tail(nc, selection, out, as_json=as_json, count=count, timeout_s=timeout_s, stop=stop,
                          on_ready=_readiness(address, selection))
    except NotFoundError:
        print(f"{NO_MESH} the NATS at {address.shown()} (from {address.source}) answers but holds no saga stream "
              "(each service makes its own on start); start the mesh with `paymesh up`", file=sys.stderr, flush=True)
        return 2
    except (nats.errors.Error, TimeoutError) as exc:
        # A refused request gets no answer: a user other than the operator's times out here.
        print(f"paymesh: the mesh's NATS at {address.shown()} did not answer as expected ({type(exc).__name__}); "
              "is JetStream on, and are these the operator's credentials (PAYMESH_NATS_CREDS)?", file=sys.stderr,
              flush=True)
        return 2
    finally:
        await nc.close()


async def _until_signalled(address: NatsAddress, selection: Selection, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        return await run(address, selection, sys.stdout, as_json=args.json, count=args.count,
                         timeout_s=args.timeout, stop=stop)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def run_events(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from paymesh.chassis.config import data_dir
    from paymesh.ops.mesh_file import running_env
    from paymesh.ops.mesh_nats import MeshNotFound, find_nats

    try:
        selection = selection_of(args.order, args.type or [], args.from_start)
    except TailRefused as exc:
        print(f"paymesh: {exc}", file=sys.stderr)
        return 2
    env, _ = running_env(os.environ, args.data_dir)
    try:
        # The mesh's NATS and its operator user, found as `paymesh dlq` finds them.
        address = find_nats(args.nats_url, env, Path(args.data_dir or data_dir(env)).resolve())
    except MeshNotFound as exc:
        print(no_mesh(exc), file=sys.stderr)
        return 2
    try:
        return asyncio.run(_until_signalled(address, selection, args))
    except KeyboardInterrupt:  # Ctrl-C before the handler was in place: nothing was subscribed yet
        return 0
    except BrokenPipeError:  # `| head` has what it wanted; Python's flush at exit must not meet the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def add_events(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from paymesh.ops.cli import at_least_one, positive_seconds  # here, not at load: cli.py imports this module

    parser = subcommands.add_parser(
        "events",
        help="follow the saga's events live, decoded, for one order or all",
        description=(
            "`paymesh events tail` prints the saga's events from the ORDER, INVENTORY and PAYMENT streams as they "
            "are published, decoded from their protobuf: time, stream and sequence, subject, type, order, merchant "
            "and the payload's fields (--json: one object per line). It reads through ephemeral ordered consumers "
            "that acknowledge nothing and are deleted on exit, so the services' consumers are untouched. The mesh "
            "is found by --nats-url, else $PAYMESH_NATS_URL, else the data dir of `paymesh up`."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    follow = actions.add_parser("tail", help="print each event as it is published, until Ctrl-C")
    follow.add_argument("--order", metavar="ID", help="only this order's events (subjects *.*.ID)")
    follow.add_argument("--type", action="append", metavar="T",
                        help="only events of this type: payment.succeeded, PaymentSucceeded or "
                             "paymesh.payment.v1.PaymentSucceeded; repeat, or separate by commas, for more")
    follow.add_argument("--json", action="store_true", help="print one JSON object per line (schema: pydoc "
                                                            "paymesh.ops.events_tail)")
    follow.add_argument("--from-start", action="store_true",
                        help="replay each stream from its first message, then follow (default: new events only)")
    follow.add_argument("--count", type=at_least_one, metavar="N", help="stop after N events")
    follow.add_argument("--timeout", type=positive_seconds, metavar="S",
                        help="stop after S seconds without an event (exit 1 if --count events had not come)")
    follow.add_argument("--nats-url", help="the mesh's NATS (default: $PAYMESH_NATS_URL, else the NATS `paymesh up` "
                                           "runs with the data dir)")
    follow.add_argument("--data-dir", metavar="DIR",
                        help="the data dir of `paymesh up`: its NATS and the operator's NATS user (default: "
                             "$PAYMESH_DATA_DIR, else ./.paymesh)")
    parser.set_defaults(handler=run_events)
