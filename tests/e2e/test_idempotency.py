"""End to end, AIP-155 request ids: a replay answers the first answer, concurrent duplicates act once,
and the same id with another request is refused (ALREADY_EXISTS, REQUEST_ID_REUSED)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from paymesh.inventory.v1 import inventory_service_pb2
from paymesh.order.v1 import order_service_pb2
from paymesh.payment.v1 import payment_service_pb2
from tests.e2e.events import Bus
from tests.e2e.harness import CS, PS, Clients, RpcError, new_id, refused, statuses

DUPLICATES = 5


async def duplicates(call: Callable[[], Awaitable[Any]], count: int = DUPLICATES) -> list[Any]:
    """`count` concurrent calls of the same request: each answer, or the RpcError of an ABORTED one."""

    async def one() -> Any:
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            return RpcError.of(err)

    answers = await asyncio.gather(*(one() for _ in range(count)))
    errors = [a for a in answers if isinstance(a, RpcError)]
    # A duplicate arriving while the first runs waits for it or is told to retry: nothing else.
    assert all(e.code == grpc.StatusCode.ABORTED for e in errors), errors
    assert len(errors) < count, errors
    return [a for a in answers if not isinstance(a, RpcError)]


def assert_reused(err: RpcError) -> None:
    assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"), err


@pytest.mark.both_backends
@pytest.mark.timeout(60)
async def test_create_order_replays_and_duplicates_place_one_order(clients: Clients) -> None:
    sku = await clients.put_product(10)
    request = clients.order_request([(sku, 1, 100)])

    first = (await clients.order.CreateOrder(request, timeout=10)).order
    replay = (await clients.order.CreateOrder(request, timeout=10)).order

    assert replay == first
    concurrent = clients.order_request([(sku, 2, 100)])
    answers = await duplicates(lambda: clients.order.CreateOrder(concurrent, timeout=10))
    assert len({a.order.order_id for a in answers}) == 1
    other = clients.order_request([(sku, 3, 100)], customer_id=request.customer_id, request_id=request.request_id)
    assert_reused(await refused(clients.order.CreateOrder(other, timeout=10)))
    assert [o.order_id for o in await clients.orders_of(request.customer_id)] == [first.order_id]
    assert [o.order_id for o in await clients.orders_of(concurrent.customer_id)] == [answers[0].order.order_id]
    for order_id in (first.order_id, answers[0].order.order_id):
        await clients.wait_order(order_id, statuses("CONFIRMED"))
        assert len(await clients.charges(order_id)) == 1
    await clients.wait_stock(sku, (7, 0, 3))


@pytest.mark.both_backends
@pytest.mark.timeout(60)
async def test_cancel_order_replays_and_duplicates_cancel_once(clients: Clients, bus: Bus) -> None:
    sku = await clients.put_product(10)
    order = await clients.create_order([(sku, 1, 100)])
    trail = await bus.follow(order.order_id)
    await clients.wait_order(order.order_id, statuses("CONFIRMED"))
    request = order_service_pb2.CancelOrderRequest(order_id=order.order_id, request_id=new_id(), reason="dup")

    answers = await duplicates(lambda: clients.order.CancelOrder(request, timeout=10))
    replay = await clients.order.CancelOrder(request, timeout=10)

    assert all(a.order.order_id == order.order_id for a in answers)
    assert replay.order == answers[0].order
    other = order_service_pb2.CancelOrderRequest(order_id=order.order_id, request_id=request.request_id, reason="x")
    assert_reused(await refused(clients.order.CancelOrder(other, timeout=10)))
    await clients.wait_order(order.order_id, statuses("CANCELLED"))
    await trail.wait_for("payment.refunded", "inventory.released")
    assert len(trail.named("order.cancelled")) == 1, trail.names()
    assert len(trail.named("payment.refunded")) == 1, trail.names()
    charge = await clients.one_charge(order.order_id)
    assert (charge.status, charge.refunded_minor) == (CS.CHARGE_STATUS_REFUNDED, 100)
    await clients.wait_stock(sku, (10, 0, 0))


@pytest.mark.both_backends
@pytest.mark.timeout(60)
async def test_refund_payment_replays_and_duplicates_refund_once(clients: Clients) -> None:
    sku = await clients.put_product(10)
    order = await clients.create_order([(sku, 1, 1000)])
    confirmed = await clients.wait_order(order.order_id, statuses("CONFIRMED"))
    request = payment_service_pb2.RefundPaymentRequest(
        request_id=new_id(), payment_id=confirmed.payment_id, amount_minor=250, reason="dup"
    )

    answers = await duplicates(lambda: clients.payment.RefundPayment(request, timeout=15))
    replay = await clients.payment.RefundPayment(request, timeout=15)

    assert len({a.refund_id for a in answers}) == 1 and answers[0].refund_id
    assert replay.refund_id == answers[0].refund_id and replay.amount_minor == 250
    other = payment_service_pb2.RefundPaymentRequest(
        request_id=request.request_id, payment_id=confirmed.payment_id, amount_minor=300, reason="dup"
    )
    assert_reused(await refused(clients.payment.RefundPayment(other, timeout=15)))
    payment = await clients.payment_of(order.order_id)
    assert (payment.status, payment.refunded_minor) == (PS.PAYMENT_STATUS_PARTIALLY_REFUNDED, 250)
    charge = await clients.one_charge(order.order_id)
    assert (charge.status, charge.refunded_minor) == (CS.CHARGE_STATUS_PARTIALLY_REFUNDED, 250)


@pytest.mark.both_backends
@pytest.mark.timeout(60)
async def test_adjust_stock_replays_and_duplicates_adjust_once(clients: Clients) -> None:
    sku = await clients.put_product(10)
    request = inventory_service_pb2.AdjustStockRequest(request_id=new_id(), sku=sku, delta=5)

    answers = await duplicates(lambda: clients.inventory.AdjustStock(request, timeout=10))
    replay = await clients.inventory.AdjustStock(request, timeout=10)

    assert all(a.product.available == 15 for a in answers), answers
    assert replay.product.available == 15
    other = inventory_service_pb2.AdjustStockRequest(request_id=request.request_id, sku=sku, delta=6)
    assert_reused(await refused(clients.inventory.AdjustStock(other, timeout=10)))
    assert await clients.stock(sku) == (15, 0, 0)
    below_zero = inventory_service_pb2.AdjustStockRequest(request_id=new_id(), sku=sku, delta=-16)
    err = await refused(clients.inventory.AdjustStock(below_zero, timeout=10))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_STOCK")
    assert await clients.stock(sku) == (15, 0, 0)
