"""Durable pull consumer: a fetched batch applied in one transaction with the inbox, acked after commit."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import Table

from paymesh.chassis import inbox, tracing
from paymesh.chassis.backoff import Backoff
from paymesh.chassis.db import Database, UnitOfWork
from paymesh.chassis.events import InboundEvent, UndecodableEvent, decode, message_types
from paymesh.chassis.jetstream import ask_until_answered
from paymesh.chassis.metrics import Metrics
from paymesh.chassis.tracing import SpanHandle

if TYPE_CHECKING:
    from paymesh.chassis.observability import Telemetry

log = logging.getLogger(__name__)

# How long one pull request waits for a first message before it is renewed.
FETCH_WAIT_S = 0.5
# A safety bound on reading the answer to a no-wait pull (it comes at once).
NO_WAIT_ANSWER_S = 2.0
# Between fetches while NATS is unreachable or reconnecting.
FETCH_RETRY = Backoff(base_s=0.2, cap_s=2.0)

# The handler gets the batch's new events (already-applied ones are filtered by the
# inbox) and applies them in the given transaction; the chassis commits and acks.
BatchHandler = Callable[[UnitOfWork, list[InboundEvent]], Awaitable[None]]
# Optional first step, outside any transaction, for work that must not hold one open
# (a call to the payment gateway). It gets the events not yet in the inbox and may
# leave results in `event.context` for the handler. It can run again for the same
# event after a crash or a failed batch, so what it does must be idempotent.
Prepare = Callable[[list[InboundEvent]], Awaitable[None]]


class RetryLater(Exception):
    """Not now, but later: redeliver after `delay_s` (e.g. the gateway's circuit is open)."""

    def __init__(self, message: str, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class PermanentFailure(Exception):
    """This event can never be applied: dead-letter it now instead of retrying."""


@dataclass
class ConsumerSpec:
    """What a service consumes: a durable on another service's stream and its handler."""

    durable: str
    stream: str
    filter_subjects: list[str]
    handler: BatchHandler
    # The event classes this durable applies; the decoder's type map is derived from them.
    events: tuple[type[Message], ...]
    # Deliveries after which an event that raised goes to the DLQ. RetryLater naks
    # count as deliveries too but never dead-letter by themselves.
    max_deliver: int = 5
    # An event delivered this often was never answered (the process died applying
    # it each time): dead-letter it before handling, to end a crash loop.
    crash_loop_deliveries: int = 100
    batch_size: int = 100
    ack_wait_s: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    prepare: Prepare | None = None


    def __post_init__(self) -> None:
        self.types: dict[str, type[Message]] = message_types(*self.events)


def dlq_subject(service: str, durable: str) -> str:
    return f"dlq.{service}.{durable}"


class Consumer:
    """Runs one ConsumerSpec until stopped."""

    def __init__(
        self, spec: ConsumerSpec, js: JetStreamContext, db: Database, inbox_table: Table, service: str,
        *, telemetry: Telemetry | None = None,
    ):
        self.spec = spec
        self.telemetry = telemetry
        # A consumer made outside a service (a test's) still counts, into metrics nobody serves.
        self.metrics = telemetry.metrics if telemetry is not None else Metrics(service)
        # What became of each event of the batch being processed (applied, duplicate, retried, dead_lettered).
        self._outcomes: dict[str, str] = {}
        self.js = js
        self.db = db
        self.inbox = inbox_table
        self.service = service
        self.applied = 0
        self.dead_lettered = 0
        self._sub: Any = None
        self._stopping = False
        self._fetching = False
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.durable

    async def bind(self) -> None:
        """Create or update the durable consumer on the server and subscribe to pull from it."""
        spec = self.spec
        config = ConsumerConfig(
            durable_name=spec.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=spec.ack_wait_s,
            # Unlimited on the server: the consumer itself dead-letters after max_deliver,
            # so no message is ever silently parked by the server.
            max_deliver=-1,
            max_ack_pending=10_000,
            filter_subjects=spec.filter_subjects,
        )
        # Idempotent (the same durable, the same config): asked again while a new cluster elects leaders.
        await ask_until_answered(lambda: self.js.add_consumer(spec.stream, config), f"consumer {spec.durable}")
        self._sub = await self.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)

    async def start(self) -> None:
        await self.bind()
        self._task = asyncio.create_task(self.run(), name=f"consumer-{self.spec.durable}")

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The running loop, for the host to supervise: it ends only when stopped (or killed)."""
        return self._task

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            if self._fetching:
                self._task.cancel()  # idle in a long poll: nothing of ours is in flight
            await asyncio.gather(self._task, return_exceptions=True)
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # already closed connection: nothing left to release
                log.debug("unsubscribe %s: %s", self.name, exc)

    async def run(self) -> None:
        failures = 0
        while not self._stopping:
            self._fetching = True
            try:
                msgs = await self.next_batch()
            except TimeoutError:
                continue
            except Exception as exc:  # NATS down or reconnecting: keep trying
                failures += 1
                delay = FETCH_RETRY.delay(failures)
                log.warning("consumer %s: fetch failed (%s); retrying in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)  # backoff while the server is unreachable
                continue
            finally:
                self._fetching = False
            failures = 0
            try:
                await self.process(msgs)
            except Exception:
                log.exception("consumer %s: batch failed part way", self.name)
            finally:
                # Whatever the batch left unanswered (an ack or a DLQ publish that failed, an error in the
                # isolation, a cancellation) goes back now: left alone it would wait out ack_wait, held by
                # this replica and by no other. The inbox skips those already applied.
                await self.nak_unanswered(msgs)

    async def next_batch(self) -> list[Any]:
        """Wait for the first message, then take what else is waiting already, up to the batch size.

        Not nats-py's `fetch(n)` for n > 1: a message that reaches its lingering request is held
        there until the request expires (measured with a 0.5 s wait: 13 % of the events reaching
        an idle consumer waited 100–450 ms). A one-message fetch returns as soon as it has it;
        the rest is asked for with a no-wait pull, which the server answers at once.
        """
        first: list[Any] = await self._sub.fetch(1, timeout=FETCH_WAIT_S)
        if self.spec.batch_size > 1:
            first += await self._waiting(self.spec.batch_size - len(first))
        return first

    async def _waiting(self, limit: int) -> list[Any]:
        """Up to `limit` messages the server holds for this consumer now, without waiting for more."""
        sub = self._sub
        # nats-py keeps the pull subject and the reply inbox on the subscription; it has no public no-wait pull.
        await self.js._nc.publish(sub._nms, json.dumps({"batch": limit, "no_wait": True}).encode(), reply=sub._deliver)
        out: list[Any] = []
        while len(out) < limit:
            try:
                msg = await sub._sub.next_msg(timeout=NO_WAIT_ANSWER_S)
            except TimeoutError:
                break
            except Exception as exc:  # NATS went away mid-answer: the messages already here are still ours
                log.warning("consumer %s: no-wait pull cut short (%s)", self.name, exc)
                break
            if JetStreamContext.is_status_msg(msg):
                break  # 404: nothing more waiting (or a late answer to an earlier request)
            out.append(msg)
        return out

    async def process(self, msgs: list[Any]) -> None:
        """Apply a fetched batch (decode, one transaction for all, else one by one), each event in its own
        consumer span under the context its publisher sent, and counted by what became of it."""
        started = time.perf_counter()
        durable = self.name
        self.metrics.batch_size.labels(durable).observe(len(msgs))
        events, spans = await self._decoded(msgs)
        self._outcomes = {}
        try:
            await self._apply_batch(events)
        finally:
            consumed = self.metrics.consumed
            for event, span in zip(events, spans, strict=True):
                outcome = self._outcomes.get(event.event_id, "unanswered")
                consumed.labels(durable, event.subject.rpartition(".")[0], outcome).inc()
                span.set("paymesh.outcome", outcome)
                if outcome in ("retried", "dead_lettered", "unanswered"):
                    span.fail(outcome)
                span.end()
            self.metrics.handler_seconds.labels(durable).observe(time.perf_counter() - started)

    async def _decoded(self, msgs: list[Any]) -> tuple[list[InboundEvent], list[SpanHandle]]:
        """The batch's events to apply, each with its span started; the rest dead-lettered."""
        events: list[InboundEvent] = []
        spans: list[SpanHandle] = []
        redelivered = 0
        for raw in msgs:
            try:
                event = decode(raw, self.spec.types)
            except UndecodableEvent as exc:
                await self.dead_letter(raw, "UNDECODABLE", str(exc))
                continue
            if event.num_delivered > self.spec.crash_loop_deliveries:
                # Delivered more often than allowed without an answer: the process
                # applying it died each time. Stop the crash loop here.
                await self.dead_letter(raw, "MAX_DELIVER", f"delivered {event.num_delivered} times")
                continue
            if event.num_delivered > 1:
                redelivered += 1
            span = self._span(event)
            # What the handler publishes for this event continues the trace from this span.
            event.traceparent = span.traceparent
            events.append(event)
            spans.append(span)
        if redelivered:
            self.metrics.redeliveries.labels(self.name).inc(redelivered)
        return events, spans

    def _span(self, event: InboundEvent) -> SpanHandle:
        if self.telemetry is None:
            return SpanHandle(event.traceparent or "")
        return self.telemetry.tracing.start(
            f"process {event.subject.rpartition('.')[0]}", tracing.CONSUMER, event.traceparent,
            {"messaging.system": "nats", "messaging.operation.type": "process",
             "messaging.destination.name": event.subject, "messaging.consumer.group.name": self.name,
             "messaging.message.id": event.event_id, "messaging.nats.delivery_count": event.num_delivered,
             "messaging.nats.stream": self.spec.stream})

    async def _apply_batch(self, events: list[InboundEvent]) -> None:
        if not events:
            return
        if len(events) > 1:
            try:
                await self.apply(events)
                return
            except Exception as exc:
                log.info("consumer %s: batch of %d failed (%r); isolating", self.name, len(events), exc)
        for event in events:
            await self.apply_one(event)

    async def apply(self, events: list[InboundEvent]) -> None:
        if self.spec.prepare is not None:
            todo = await self._not_yet_applied(events)
            if todo:
                await self.spec.prepare(todo)
        async with self.db.unit_of_work() as uow:
            fresh_ids = await inbox.claim(uow.conn, self.inbox, self.name, (e.event_id for e in events))
            fresh: list[InboundEvent] = []
            for event in events:
                if event.event_id in fresh_ids:
                    fresh.append(event)
                    fresh_ids.discard(event.event_id)  # a second copy in the same batch is a duplicate
            if fresh:
                await self.spec.handler(uow, fresh)
            await uow.commit()
        self.applied += len(fresh)
        for event in events:
            await event.raw.ack()
            self._outcomes[event.event_id] = "duplicate"
        for event in fresh:
            self._outcomes[event.event_id] = "applied"

    async def _not_yet_applied(self, events: list[InboundEvent]) -> list[InboundEvent]:
        ids = [e.event_id for e in events]
        async with self.db.read() as conn:
            done = await inbox.applied(conn, self.inbox, self.name, ids)
        return [e for e in events if e.event_id not in done]

    async def apply_one(self, event: InboundEvent) -> None:
        try:
            await self.apply([event])
        except RetryLater as exc:
            await event.raw.nak(delay=exc.delay_s)
            self._outcomes[event.event_id] = "retried"
        except PermanentFailure as exc:
            await self.dead_letter(event.raw, "PERMANENT_FAILURE", str(exc))
            self._outcomes[event.event_id] = "dead_lettered"
        except Exception as exc:
            if event.num_delivered >= self.spec.max_deliver:
                await self.dead_letter(event.raw, "MAX_DELIVER", f"{type(exc).__name__}: {exc}")
                self._outcomes[event.event_id] = "dead_lettered"
                return
            delay = self.spec.backoff.delay(event.num_delivered)
            log.warning(
                "consumer %s: %s %s failed (delivery %d): %r; redelivery in %.2fs",
                self.name,
                event.type,
                event.event_id,
                event.num_delivered,
                exc,
                delay,
                extra={"order_id": event.order_id, "merchant_id": event.merchant_id, "event_id": event.event_id,
                       "trace_id": tracing.trace_id(event.traceparent)},
            )
            await event.raw.nak(delay=delay)
            self._outcomes[event.event_id] = "retried"

    async def nak_unanswered(self, msgs: list[Any]) -> None:
        """Nak, after the backoff of its delivery count, each fetched message not yet acked, nak'd or termed."""
        for raw in msgs:
            if raw.is_acked:
                continue
            try:
                await raw.nak(delay=self.spec.backoff.delay(raw.metadata.num_delivered))
            except Exception as exc:  # NATS away: the server redelivers after ack_wait instead
                log.warning("consumer %s: unanswered messages left to ack_wait (%s)", self.name, exc)
                return

    async def dead_letter(self, raw: Any, reason: str, error: str) -> None:
        """Copy the message to the DLQ stream with why it failed, then terminate it here."""
        meta = raw.metadata
        headers = dict(raw.headers or {})
        original_id = headers.pop("Nats-Msg-Id", "")
        headers.update(
            {
                # One DLQ entry per stored message, even if this is retried after a crash.
                "Nats-Msg-Id": f"dlq:{meta.stream}:{meta.sequence.stream}:{self.name}",
                "Paymesh-Dlq-Reason": reason,
                "Paymesh-Dlq-Error": error[:1000],
                "Paymesh-Original-Subject": raw.subject,
                "Paymesh-Original-Stream": meta.stream,
                "Paymesh-Original-Seq": str(meta.sequence.stream),
                "Paymesh-Original-Msg-Id": original_id,
                "Paymesh-Consumer": self.name,
                "Paymesh-Deliveries": str(meta.num_delivered),
            }
        )
        await self.js.publish(dlq_subject(self.service, self.name), raw.data, headers=headers)
        await raw.term()
        self.dead_lettered += 1
        self.metrics.dead_lettered.labels(self.name, reason).inc()
        log.error(
            "consumer %s: dead-lettered %s seq %d: %s: %s",
            self.name,
            raw.subject,
            meta.sequence.stream,
            reason,
            error,
        )
