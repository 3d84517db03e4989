"""The durable pull consumer against a real nats-server and real SQLite / PostgreSQL stores."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js import JetStreamContext

from paymesh.chassis import consumer as consumer_module
from paymesh.chassis.consumer import RetryLater
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.events import InboundEvent
from tests.conftest import wait_for
from tests.integration.chassis_harness import Rig, all_acked, consumer_for, placed, publish, stream_messages

pytestmark = pytest.mark.timeout(60)


async def _pull_waiting(js: JetStreamContext, stream: str, durable: str) -> bool:
    """True once the server holds a pull request of the durable (its consumer_info's num_waiting)."""
    return (await js.consumer_info(stream, durable)).num_waiting == 1


async def test_a_pull_returns_at_its_first_message_then_takes_what_else_waits(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def handler(uow: UnitOfWork, events: list[InboundEvent]) -> None:
        raise AssertionError("not run: the test pulls by hand")

    consumer = consumer_for(rig, handler)
    await consumer.bind()
    try:
        # A long wait: a message held until the pull expires would take ten seconds to come.
        monkeypatch.setattr(consumer_module, "FETCH_WAIT_S", 10.0)
        pulling = asyncio.create_task(consumer.next_batch())
        # The pull is waiting on the server when the event comes: the server says so itself.
        js = rig.nc.jetstream()
        await wait_for(lambda: _pull_waiting(js, "ORDER", "ledger"), timeout=5, message="a pull waiting")
        await publish(rig.nc, placed(order_id="o-first"))
        published = time.monotonic()
        first = await asyncio.wait_for(pulling, 5)
        assert time.monotonic() - published < 2.0, "returned at the first message"
        assert [m.subject for m in first] == ["order.placed.o-first"]
        await first[0].ack()

        waiting = [placed(order_id=f"o-{i}") for i in range(5)]
        for event in waiting:
            await publish(rig.nc, event)
        batch = await asyncio.wait_for(consumer.next_batch(), 5)
        assert [m.subject for m in batch] == [e.subject for e in waiting], "everything waiting, in one batch"
        for m in batch:
            await m.ack()

        monkeypatch.setattr(consumer_module, "FETCH_WAIT_S", 0.3)
        with pytest.raises(TimeoutError):
            await consumer.next_batch()  # nothing waiting: the pull ends at its wait
    finally:
        await consumer.stop()

async def test_a_fetched_batch_is_applied_in_one_transaction(rig: Rig) -> None:
    calls: list[int] = []

    async def handler(uow: UnitOfWork, events: list[InboundEvent]) -> None:
        calls.append(len(events))
        await rig.store.credit(uow, events)

    events = [placed() for _ in range(60)]
    for event in events:
        await publish(rig.nc, event)
    consumer = consumer_for(rig, handler)
    await consumer.start()
    try:
        await wait_for(lambda: consumer.applied == 60, message="60 events applied")
        await wait_for(lambda: all_acked(rig.nc), message="all acked")
    finally:
        await consumer.stop()
    assert await rig.store.credits() == {e.subject.rsplit(".", 1)[1]: 1 for e in events}
    assert max(calls) > 1, f"events were applied one per transaction: {calls}"


async def test_redelivered_event_is_skipped_by_the_inbox(rig: Rig) -> None:
    async def handler(uow: UnitOfWork, events: list[InboundEvent]) -> None:
        await rig.store.credit(uow, events)

    event = placed(order_id="o-dup")
    await publish(rig.nc, event)
    # The same event again under a new Nats-Msg-Id, so the stream's dedupe lets it through:
    # only the inbox stands between it and a second credit.
    await publish(rig.nc, event, msg_id="republished-1")
    consumer = consumer_for(rig, handler)
    await consumer.start()
    try:
        await wait_for(lambda: all_acked(rig.nc), message="both copies acked")
        # A third copy, arriving on its own after the first was applied.
        await publish(rig.nc, event, msg_id="republished-2")
        await wait_for(lambda: all_acked(rig.nc), message="late copy acked")
    finally:
        await consumer.stop()
    assert await rig.store.credits() == {"o-dup": 1}
    assert consumer.applied == 1


async def test_a_failing_event_is_isolated_and_the_rest_of_the_batch_applied(rig: Rig) -> None:
    attempts: dict[str, int] = {}

    async def handler(uow: UnitOfWork, events: list[InboundEvent]) -> None:
        for e in events:
            if e.order_id == "o-bad":
                attempts["o-bad"] = attempts.get("o-bad", 0) + 1
                if attempts["o-bad"] < 3:
                    raise RuntimeError("transient")
        await rig.store.credit(uow, events)

    for order_id in ["o-1", "o-2", "o-bad", "o-3"]:
        await publish(rig.nc, placed(order_id=order_id))
    consumer = consumer_for(rig, handler)
    await consumer.start()
    try:
        await wait_for(lambda: all_acked(rig.nc), message="all acked")
    finally:
        await consumer.stop()
    assert await rig.store.credits() == {"o-1": 1, "o-2": 1, "o-bad": 1, "o-3": 1}
    assert consumer.dead_lettered == 0


async def test_a_handler_that_keeps_failing_goes_to_the_dlq_and_the_consumer_goes_on(rig: Rig) -> None:
    async def handler(uow: UnitOfWork, events: list[InboundEvent]) -> None:
        if any(e.order_id == "o-poison" for e in events):
            raise ValueError("ledger refuses o-poison")
        await rig.store.credit(uow, events)

    await publish(rig.nc, placed(order_id="o-poison"))
    consumer = consumer_for(rig, handler, max_deliver=3)
    await consumer.start()
    try:
        await wait_for(lambda: consumer.dead_lettered == 1, message="poison message dead-lettered")
        await publish(rig.nc, placed(order_id="o-next"))
        await wait_for(lambda: all_acked(rig.nc), message="consumer moved on")
    finally:
        await consumer.stop()
    assert await rig.store.credits() == {"o-next": 1}
    dlq = await stream_messages(rig.nc, "DLQ")
    assert len(dlq) == 1
    subject, headers, _ = dlq[0]
    assert subject == "dlq.test_svc.ledger"
    assert headers["Paymesh-Dlq-Reason"] == "MAX_DELIVER"
    assert "ledger refuses o-poison" in headers["Paymesh-Dlq-Error"]
    assert headers["Paymesh-Original-Subject"] == "order.placed.o-poison"
    assert headers["Paymesh-Deliveries"] == "3"


async def test_garbage_bytes_go_to_the_dlq_not_a_crash_loop(rig: Rig) -> None:
    async def handler(uow: UnitOfWork, events: list[InboundEvent]) -> None:
        await rig.store.credit(uow, events)

    js = rig.nc.jetstream()
    await js.publish("order.placed.o-garbage", b"\xff\x00not a protobuf\xfe",
                     headers={"Paymesh-Type": "paymesh.order.v1.OrderPlaced", "Nats-Msg-Id": "g1"})
    await js.publish("order.placed.o-untyped", b"hello")
    await publish(rig.nc, placed(order_id="o-good"))
    consumer = consumer_for(rig, handler)
    await consumer.start()
    try:
        await wait_for(lambda: all_acked(rig.nc), message="all handled")
    finally:
        await consumer.stop()
    assert await rig.store.credits() == {"o-good": 1}
    dlq = await stream_messages(rig.nc, "DLQ")
    subjects = sorted(h["Paymesh-Original-Subject"] for _, h, _ in dlq)
    assert subjects == ["order.placed.o-garbage", "order.placed.o-untyped"]
    assert {h["Paymesh-Dlq-Reason"] for _, h, _ in dlq} == {"UNDECODABLE"}
    assert consumer.dead_lettered == 2


async def test_retry_later_redelivers_without_counting_as_a_failure(rig: Rig) -> None:
    seen: list[int] = []

    async def handler(uow: UnitOfWork, events: list[InboundEvent]) -> None:
        seen.append(events[0].num_delivered)
        if len(seen) < 4:
            raise RetryLater("gateway circuit open", delay_s=0.05)
        await rig.store.credit(uow, events)

    await publish(rig.nc, placed(order_id="o-wait"))
    consumer = consumer_for(rig, handler, max_deliver=2)
    await consumer.start()
    try:
        await wait_for(lambda: all_acked(rig.nc), message="applied after waiting")
    finally:
        await consumer.stop()
    assert await rig.store.credits() == {"o-wait": 1}
    assert consumer.dead_lettered == 0


async def test_what_a_failure_in_the_isolation_left_unanswered_is_redelivered_at_once_not_after_ack_wait(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def handler(uow: UnitOfWork, events: list[InboundEvent]) -> None:
        if len(events) > 1:
            raise RuntimeError("a batch fails, so it is isolated")
        await rig.store.credit(uow, events)

    for order_id in ["o-1", "o-2", "o-3"]:
        await publish(rig.nc, placed(order_id=order_id))
    # ack_wait far beyond the wait below: only a nak brings the batch back in time.
    consumer = consumer_for(rig, handler, ack_wait_s=60.0)
    isolate = consumer.apply_one
    isolated: list[str] = []

    async def apply_one(event: InboundEvent) -> None:
        isolated.append(event.order_id)
        if len(isolated) == 1:
            raise ConnectionError("the first answer of the isolation is lost")
        await isolate(event)

    monkeypatch.setattr(consumer, "apply_one", apply_one)
    await consumer.start()
    try:
        await wait_for(lambda: all_acked(rig.nc), timeout=10, message="every event applied well before ack_wait")
    finally:
        await consumer.stop()
    assert await rig.store.credits() == {"o-1": 1, "o-2": 1, "o-3": 1}
    assert consumer.dead_lettered == 0
