"""Merchants on order_svc: each sees and changes only its own orders, request ids are its own, and every event
names the order's merchant; an answer naming another merchant's order is an answer for an unknown order."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from paymesh.chassis.events import InboundEvent
from paymesh.order.v1 import order_pb2
from paymesh.order.v1 import order_service_pb2 as pb
from tests.conftest import wait_for
from tests.integration.order.conftest import (
    Rig,
    S,
    Stub,
    create_request,
    released,
    reserved,
    succeeded,
    voided,
)
from tests.keys import MERCHANT_A, MERCHANT_B

pytestmark = pytest.mark.timeout(30)

UNKNOWN_ORDER = "ord_" + "0" * 32
ID = "<order_id>"


def refusal(err: grpc.aio.AioRpcError, order_id: str) -> tuple[Any, ...]:
    """Everything a client is told by a refusal, with the order id it named written as `<order_id>`, so the
    answers for two ids compare equal exactly when they differ only by the id."""
    status = rpc_status.from_call(err)
    assert status is not None, "a rich status"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return (
        err.code(),
        (err.details() or "").replace(order_id, ID),
        status.message.replace(order_id, ID),
        [d.type_url for d in status.details],
        (info.reason, info.domain),
        {k: v.replace(order_id, ID) for k, v in info.metadata.items()},
    )


async def refused(call: Any, order_id: str) -> tuple[Any, ...]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return refusal(err.value, order_id)


async def listed(stub: Stub, **filters: Any) -> list[str]:
    """Every order id ListOrders pages through for this stub's merchant."""
    out: list[str] = []
    token = ""
    while True:
        page = await stub.ListOrders(pb.ListOrdersRequest(page_token=token, page_size=2, **filters))
        out.extend(o.order_id for o in page.orders)
        token = page.next_page_token
        if not token:
            return out


def batch_of(*messages: Any) -> list[InboundEvent]:
    return [InboundEvent(m.event_id, "", type(m).DESCRIPTOR.full_name, m, None, 1, None) for m in messages]


async def test_another_merchants_order_answers_as_a_missing_one_and_stays_as_it_was(rig: Rig) -> None:
    mine = await rig.create()
    b = rig.stubs[MERCHANT_B]

    missing = await refused(b.GetOrder(pb.GetOrderRequest(order_id=UNKNOWN_ORDER)), UNKNOWN_ORDER)
    assert missing[0] == grpc.StatusCode.NOT_FOUND and missing[4][0] == "ORDER_NOT_FOUND"
    assert await refused(b.GetOrder(pb.GetOrderRequest(order_id=mine.order_id)), mine.order_id) == missing

    def cancel(order_id: str) -> Any:
        return b.CancelOrder(pb.CancelOrderRequest(order_id=order_id, request_id=str(uuid.uuid4()), reason="mine"))

    assert await refused(cancel(mine.order_id), mine.order_id) == await refused(cancel(UNKNOWN_ORDER), UNKNOWN_ORDER)

    async def watch(order_id: str) -> tuple[Any, ...]:
        seen: list[pb.WatchOrderResponse] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for reply in b.WatchOrder(pb.WatchOrderRequest(order_id=order_id)):
                seen.append(reply)
        assert seen == [], "not one state of it"
        return refusal(err.value, order_id)

    assert await watch(mine.order_id) == await watch(UNKNOWN_ORDER)
    assert not rig.watch._followers  # noqa: SLF001 - B's refused streams left nothing behind

    assert await rig.get(mine.order_id) == mine, "A's order unchanged"
    # Still open to its own merchant: B's cancel did nothing, A's works.
    assert (await rig.cancel(mine.order_id)).status == S.ORDER_STATUS_CANCELLING
    assert await rig.published_names(mine.order_id, 2) == ["placed", "cancelled"]


async def test_list_orders_shows_each_merchant_only_its_own(rig: Rig) -> None:
    a_orders = [(await rig.create(customer_id="cus_shared")).order_id for _ in range(3)]
    b_orders = [(await rig.create(customer_id="cus_shared", merchant=MERCHANT_B)).order_id for _ in range(2)]
    await rig.answer(succeeded(a_orders[0]))
    await rig.wait_status(a_orders[0], S.ORDER_STATUS_CONFIRMED)

    a, b = rig.stubs[MERCHANT_A], rig.stubs[MERCHANT_B]
    assert await listed(a) == list(reversed(a_orders))
    assert await listed(b) == list(reversed(b_orders))
    # The same customer id at two merchants is two customers.
    assert await listed(b, customer_id="cus_shared") == list(reversed(b_orders))
    assert await listed(b, status=S.ORDER_STATUS_CONFIRMED) == []
    assert await listed(a, status=S.ORDER_STATUS_CONFIRMED) == [a_orders[0]]
    # A page token is its merchant's: sent by B, the one A was given is refused, and says nothing of A's.
    token = (await a.ListOrders(pb.ListOrdersRequest(page_size=1))).next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await b.ListOrders(pb.ListOrdersRequest(page_size=10, page_token=token))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in (refused.value.details() or "")
    for order_id in b_orders:
        assert (await rig.get(order_id, merchant=MERCHANT_B)).merchant_id == MERCHANT_B


async def test_one_request_id_at_two_merchants_is_two_requests(rig: Rig) -> None:
    request_id = str(uuid.uuid4())
    a_request = create_request(request_id=request_id, customer_id="cus_a")
    b_request = create_request(request_id=request_id, customer_id="cus_b", currency="EUR")
    a_first = await rig.orders.CreateOrder(a_request)
    b_first = await rig.stubs[MERCHANT_B].CreateOrder(b_request)  # no REQUEST_ID_REUSED: not A's request log
    assert a_first.order.order_id != b_first.order.order_id
    assert (a_first.order.merchant_id, a_first.order.customer_id) == (MERCHANT_A, "cus_a")
    b_order = b_first.order
    assert (b_order.merchant_id, b_order.customer_id, b_order.currency) == (MERCHANT_B, "cus_b", "EUR")
    # Each replays its own first answer.
    assert await rig.orders.CreateOrder(a_request) == a_first
    assert await rig.stubs[MERCHANT_B].CreateOrder(b_request) == b_first
    assert await listed(rig.orders) == [a_first.order.order_id]
    assert await listed(rig.stubs[MERCHANT_B]) == [b_first.order.order_id]

    cancel_id = str(uuid.uuid4())
    a_cancel = await rig.orders.CancelOrder(
        pb.CancelOrderRequest(order_id=a_first.order.order_id, request_id=cancel_id)
    )
    b_cancel = await rig.stubs[MERCHANT_B].CancelOrder(
        pb.CancelOrderRequest(order_id=b_first.order.order_id, request_id=cancel_id)
    )
    assert (a_cancel.order.order_id, b_cancel.order.order_id) == (a_first.order.order_id, b_first.order.order_id)
    assert {a_cancel.order.status, b_cancel.order.status} == {S.ORDER_STATUS_CANCELLING}


async def test_every_event_carries_its_orders_merchant_in_payload_and_header(rig: Rig) -> None:
    a = await rig.create()
    b = await rig.create(merchant=MERCHANT_B)
    await rig.answer(reserved(a.order_id))
    await rig.answer(succeeded(a.order_id))
    await rig.wait_status(a.order_id, S.ORDER_STATUS_CONFIRMED)
    await rig.cancel(b.order_id, merchant=MERCHANT_B)
    assert await rig.published_names(a.order_id, 2) == ["placed", "confirmed"]
    assert await rig.published_names(b.order_id, 2) == ["placed", "cancelled"]
    for order, merchant in ((a, MERCHANT_A), (b, MERCHANT_B)):
        assert order.merchant_id == merchant
        for event in await rig.published(order.order_id):
            assert (event.message.merchant_id, event.headers["Paymesh-Merchant"]) == (merchant, merchant), event


async def test_an_answer_of_another_merchant_does_not_touch_the_order(rig: Rig) -> None:
    order = await rig.create()
    # As a broken or hostile payment_svc of merchant B would publish it, naming A's order.
    await rig.answer_and_wait(succeeded(order.order_id, payment_id="pay_b", merchant_id=MERCHANT_B))
    assert await rig.get(order.order_id) == order, "no transition, not even a version"

    await rig.answer(succeeded(order.order_id, payment_id="pay_a"))
    confirmed = await rig.wait_status(order.order_id, S.ORDER_STATUS_CONFIRMED)
    assert confirmed.payment_id == "pay_a"
    assert await rig.published_names(order.order_id, 2) == ["placed", "confirmed"]
    assert (await rig.published(order.order_id))[1].message.payment_id == "pay_a"


async def test_a_batch_mixing_merchants_applies_each_answer_to_its_own_merchants_order(rig: Rig) -> None:
    a = await rig.create()
    a_cancelling = await rig.create()
    await rig.cancel(a_cancelling.order_id)
    b = await rig.create(merchant=MERCHANT_B)
    batch = batch_of(
        reserved(a.order_id, merchant_id=MERCHANT_B),  # B naming A's order: nothing
        voided(a_cancelling.order_id, merchant_id=MERCHANT_B),
        released(a_cancelling.order_id, merchant_id=MERCHANT_B),
        reserved(b.order_id, merchant_id=MERCHANT_B),  # B's own
        reserved(b.order_id, merchant_id=MERCHANT_A),  # A naming B's order: nothing (and no duplicate either)
        succeeded(b.order_id, merchant_id=MERCHANT_B),
    )
    async with rig.host.runtime.db.unit_of_work() as uow:
        await rig.handler(uow, batch)
        await uow.commit()
    assert await rig.get(a.order_id) == a
    assert (await rig.get(a_cancelling.order_id)).status == S.ORDER_STATUS_CANCELLING
    assert (await rig.get(b.order_id, merchant=MERCHANT_B)).status == S.ORDER_STATUS_CONFIRMED
    assert await rig.published_names(b.order_id, 2) == ["placed", "confirmed"]


async def test_a_watch_sees_its_own_order_only(rig: Rig) -> None:
    rig.api.watch_reread_s = 30  # every state from the commits themselves
    order = await rig.create()
    stream = rig.orders.WatchOrder(pb.WatchOrderRequest(order_id=order.order_id))
    assert (await stream.read()).order.status == S.ORDER_STATUS_PENDING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.stubs[MERCHANT_B].WatchOrder(pb.WatchOrderRequest(order_id=order.order_id)).read()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert set(rig.watch._followers) == {(MERCHANT_A, order.order_id)}  # noqa: SLF001
    # One answer at a time: the two streams have two consumers, and a payment.succeeded applied before the
    # reservation would skip AWAITING_PAYMENT (a race the saga allows, not what this test is about).
    await rig.answer(reserved(order.order_id))
    states: list[order_pb2.Order] = [(await asyncio.wait_for(stream.read(), 5)).order]
    await rig.answer(succeeded(order.order_id))
    while (reply := await asyncio.wait_for(stream.read(), 5)) != grpc.aio.EOF:
        states.append(reply.order)
    assert [s.status for s in states] == [S.ORDER_STATUS_AWAITING_PAYMENT, S.ORDER_STATUS_CONFIRMED]
    assert {s.merchant_id for s in states} == {MERCHANT_A}


@pytest.mark.parametrize("saga_timeout_s", [0.4])
async def test_the_deadline_sweeps_every_merchant_each_cancel_naming_its_own(rig: Rig) -> None:
    a = await rig.create()
    b = await rig.create(merchant=MERCHANT_B)
    await rig.wait_status(a.order_id, S.ORDER_STATUS_CANCELLING)
    await rig.wait_status(b.order_id, S.ORDER_STATUS_CANCELLING, merchant=MERCHANT_B)
    for order, merchant in ((a, MERCHANT_A), (b, MERCHANT_B)):
        assert await rig.published_names(order.order_id, 2) == ["placed", "cancelled"]
        cancelled = (await rig.published(order.order_id))[-1]
        assert (cancelled.message.timed_out, cancelled.message.merchant_id) == (True, merchant)
        assert cancelled.headers["Paymesh-Merchant"] == merchant
    await wait_for(lambda: rig.sweeper.timed_out == 2, message="both swept")
