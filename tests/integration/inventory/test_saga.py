"""inventory_svc answering the saga: real nats-server, real SQLite and PostgreSQL, the service in-process."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paymesh.inventory.v1 import inventory_pb2
from tests.conftest import wait_for
from tests.integration.inventory.conftest import Rig

pytestmark = pytest.mark.timeout(30)

RESERVED = inventory_pb2.RESERVATION_STATUS_RESERVED
REJECTED = inventory_pb2.RESERVATION_STATUS_REJECTED
COMMITTED = inventory_pb2.RESERVATION_STATUS_COMMITTED
RELEASED = inventory_pb2.RESERVATION_STATUS_RELEASED


def order_id() -> str:
    return f"ord_{uuid.uuid4().hex}"


async def shelf(rig: Rig, sku: str) -> tuple[int, int, int]:
    p = await rig.product(sku)
    return p.available, p.reserved, p.sold


def lines(message: object) -> list[tuple[str, int]]:
    return [(line.sku, line.quantity) for line in message.lines]  # type: ignore[attr-defined]


async def test_reserve_publishes_reserved_with_its_headers(rig: Rig) -> None:
    await rig.put("mug", 5)
    await rig.put("tee", 3)
    oid = order_id()
    placed = await rig.placed(oid, ("mug", 2), ("tee", 1))
    await rig.settle()

    [out] = await rig.outputs(oid)
    assert out.name == "reserved"
    assert out.message.order_id == oid
    assert lines(out.message) == [("mug", 2), ("tee", 1)]
    assert out.message.occurred_at.seconds > 0
    assert out.headers["Nats-Msg-Id"] == out.message.event_id
    assert out.headers["Paymesh-Type"] == "paymesh.inventory.v1.InventoryReserved"
    inbound_trace = placed.headers["traceparent"].split("-")[1]
    assert out.headers["traceparent"].split("-")[1] == inbound_trace, "the answer continues the order's trace"

    assert await shelf(rig, "mug") == (3, 2, 0)
    assert await shelf(rig, "tee") == (2, 1, 0)
    reservation = await rig.reservation(oid)
    assert (reservation.status, reservation.cancelled) == (RESERVED, False)
    assert lines(reservation) == [("mug", 2), ("tee", 1)]


async def test_out_of_stock_on_one_line_of_three_rejects_and_moves_nothing(rig: Rig) -> None:
    for sku, n in [("mug", 5), ("tee", 1), ("cap", 5)]:
        await rig.put(sku, n)
    oid, unknown = order_id(), order_id()
    await rig.placed(oid, ("mug", 2), ("tee", 2), ("cap", 1))
    await rig.placed(unknown, ("mug", 1), ("ghost", 1))
    await rig.settle()

    [out] = await rig.outputs(oid)
    assert out.name == "rejected"
    m = out.message
    assert (m.reason, m.sku, m.requested, m.available) == ("OUT_OF_STOCK", "tee", 2, 1)
    [out] = await rig.outputs(unknown)
    assert (out.name, out.message.reason, out.message.sku) == ("rejected", "UNKNOWN_SKU", "ghost")
    for sku, n in [("mug", 5), ("tee", 1), ("cap", 5)]:
        assert await shelf(rig, sku) == (n, 0, 0)
    reservation = await rig.reservation(oid)
    assert (reservation.status, reservation.reason, reservation.sku) == (REJECTED, "OUT_OF_STOCK", "tee")


async def test_payment_succeeded_commits_and_payment_failed_releases(rig: Rig) -> None:
    await rig.put("mug", 10)
    paid, declined = order_id(), order_id()
    await rig.placed(paid, ("mug", 3))
    await rig.placed(declined, ("mug", 4))
    await rig.settle()
    assert await shelf(rig, "mug") == (3, 7, 0)

    await rig.paid(paid)
    await rig.declined(declined)
    await rig.settle()
    assert [o.name for o in await rig.outputs(paid)] == ["reserved", "committed"]
    committed = (await rig.outputs(paid))[1].message
    assert lines(committed) == [("mug", 3)]
    released = (await rig.outputs(declined))[1]
    assert released.name == "released"
    assert (lines(released.message), released.message.held, released.message.cause) == (
        [("mug", 4)], True, "PAYMENT_FAILED")
    assert await shelf(rig, "mug") == (7, 0, 3)
    assert (await rig.reservation(paid)).status == COMMITTED
    assert (await rig.reservation(declined)).status == RELEASED

    # Late or repeated answers from payment are ignored: no move, no event.
    await rig.declined(paid)
    await rig.paid(declined)
    await rig.paid(order_id())  # an order inventory never saw
    await rig.settle()
    assert len(await rig.outputs()) == 4
    assert await shelf(rig, "mug") == (7, 0, 3)


async def test_cancel_in_every_state_answers_exactly_once(rig: Rig) -> None:
    await rig.put("mug", 10)
    reserved, committed, rejected, failed, unseen = (order_id() for _ in range(5))
    await rig.placed(reserved, ("mug", 2))
    await rig.placed(committed, ("mug", 3))
    await rig.placed(rejected, ("mug", 50))
    await rig.placed(failed, ("mug", 1))
    await rig.settle()
    await rig.paid(committed)
    await rig.declined(failed)
    await rig.settle()
    assert await shelf(rig, "mug") == (5, 2, 3)

    for oid in (reserved, committed, rejected, failed, unseen):
        await rig.cancelled(oid)
    await rig.settle()
    # Everything is back on the shelf: held units released, sold units restocked.
    assert await shelf(rig, "mug") == (10, 0, 0)

    # A second cancel, and order.placed arriving after the cancel, change nothing.
    for oid in (reserved, committed, rejected, failed, unseen):
        await rig.cancelled(oid)
    await rig.placed(unseen, ("mug", 1))
    await rig.settle()
    assert await shelf(rig, "mug") == (10, 0, 0)

    expected = {
        reserved: ([("mug", 2)], True),
        committed: ([("mug", 3)], True),
        rejected: ([], False),
        failed: ([], False),
        unseen: ([], False),
    }
    for oid, (held_lines, held) in expected.items():
        answers = [o.message for o in await rig.outputs(oid) if o.name == "released"
                   and o.message.cause == "ORDER_CANCELLED"]
        assert len(answers) == 1, f"one answer to the cancel of {oid}"
        assert (lines(answers[0]), answers[0].held) == (held_lines, held)
        reservation = await rig.reservation(oid)
        assert reservation.cancelled
    assert [o.name for o in await rig.outputs(unseen)] == ["released"], "the late order.placed got no answer"
    assert [o.name for o in await rig.outputs(failed)] == ["reserved", "released", "released"]
    tombstone = await rig.reservation(unseen)
    assert (tombstone.status, list(tombstone.lines)) == (RELEASED, [])
    assert (await rig.reservation(rejected)).status == REJECTED


async def test_one_batch_is_applied_in_stream_order(rig: Rig) -> None:
    await rig.put("mug", 1)
    first, second, third, late = order_id(), order_id(), order_id(), order_id()
    async with rig.stopped():
        # While the service is down these queue up and arrive as one batch; each must see
        # the stock the events before it left: `second` finds none, the cancel frees the unit
        # for `third`, and the late order.placed meets its tombstone.
        await rig.placed(first, ("mug", 1))
        await rig.placed(second, ("mug", 1))
        await rig.cancelled(first)
        await rig.placed(third, ("mug", 1))
        await rig.placed(second, ("mug", 1))  # order_svc's duplicate under a new event id
        await rig.cancelled(late)
        await rig.placed(late, ("mug", 1))
    await rig.settle()
    assert [o.name for o in await rig.outputs(first)] == ["reserved", "released"]
    assert [o.name for o in await rig.outputs(second)] == ["rejected"]
    assert [o.name for o in await rig.outputs(third)] == ["reserved"]
    assert [o.name for o in await rig.outputs(late)] == ["released"]
    assert [o.message.available for o in await rig.outputs(second)] == [0]
    assert await shelf(rig, "mug") == (0, 1, 0)


async def test_a_republished_duplicate_has_no_second_effect(rig: Rig) -> None:
    await rig.put("mug", 10)
    oid = order_id()
    placed = await rig.placed(oid, ("mug", 2))
    # The same event (same event_id in the payload) under a new Nats-Msg-Id: JetStream stores it again.
    await rig.nc.jetstream().publish(placed.subject, placed.payload,
                                     headers={**placed.nats_headers(), "Nats-Msg-Id": str(uuid.uuid4())})
    await rig.settle()
    paid = await rig.paid(oid)
    await rig.nc.jetstream().publish(paid.subject, paid.payload,
                                     headers={**paid.nats_headers(), "Nats-Msg-Id": str(uuid.uuid4())})
    await rig.settle()
    info = await rig.nc.jetstream().stream_info("ORDER")
    assert info.state.messages == 2, "both copies are on the stream"
    assert [o.name for o in await rig.outputs(oid)] == ["reserved", "committed"]
    assert await shelf(rig, "mug") == (8, 0, 2)


async def test_thirty_orders_racing_for_ten_units(rig: Rig) -> None:
    await rig.put("mug", 10)
    orders = [order_id() for _ in range(30)]
    await asyncio.gather(*(rig.placed(oid, ("mug", 1)) for oid in orders))
    await rig.settle()

    outputs = await rig.outputs()
    names = [o.name for o in outputs]
    assert (names.count("reserved"), names.count("rejected")) == (10, 20)
    assert {o.message.order_id for o in outputs} == set(orders), "every order answered once"
    assert len(outputs) == 30
    assert await shelf(rig, "mug") == (0, 10, 0)
    # Each rejection saw what was left at its turn, in stream order: never a negative count.
    assert all(o.message.available == 0 for o in outputs if o.name == "rejected")

    # Half the winners pay, half are declined; stock is conserved throughout.
    winners = [o.message.order_id for o in outputs if o.name == "reserved"]
    await asyncio.gather(*(rig.paid(oid) for oid in winners[:5]), *(rig.declined(oid) for oid in winners[5:]))
    await rig.settle()
    assert await shelf(rig, "mug") == (5, 0, 5)


async def test_a_consumer_that_dies_is_logged_and_the_replica_stops_serving(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    settings = rig.host.runtime.settings
    async with grpc.aio.insecure_channel(settings.grpc_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status() -> int:
            return (await health.Check(health_pb2.HealthCheckRequest())).status

        async def not_serving() -> bool:
            return await status() == health_pb2.HealthCheckResponse.NOT_SERVING

        assert await status() == health_pb2.HealthCheckResponse.SERVING
        [loop] = [t for t in asyncio.all_tasks() if t.get_name() == "consumer-inventory_svc-order"]
        loop.cancel()  # what any BaseException escaping its loop does: nothing applies ORDER here any more
        await wait_for(not_serving, timeout=5, message="NOT_SERVING once a consumer is gone")
    assert rig.host.lost == ["consumer-inventory_svc-order"]
    [record] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "consumer-inventory_svc-order was cancelled while serving" in record.getMessage()
