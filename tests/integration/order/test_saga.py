"""order_svc in the saga: its events on ORDER, and its answers to INVENTORY and PAYMENT, raced on purpose."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from paymesh.chassis.events import InboundEvent
from tests.conftest import wait_for
from tests.integration.order.conftest import (
    Rig,
    S,
    failed,
    refund_failed,
    refunded,
    rejected,
    released,
    reserved,
    succeeded,
    voided,
)

pytestmark = pytest.mark.timeout(30)

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


async def test_create_order_answers_pending_and_publishes_order_placed(rig: Rig) -> None:
    order = await rig.create(customer_id="cus_42", token="tok_chargeDeclined")
    assert re.fullmatch(r"ord_[0-9a-f]{32}", order.order_id)
    assert (order.status, order.customer_id, order.currency, order.amount_minor) == (
        S.ORDER_STATUS_PENDING,
        "cus_42",
        "USD",
        2 * 1250 + 99,
    )
    assert [(i.sku, i.quantity, i.unit_price_minor) for i in order.items] == [("sku-1", 2, 1250), ("sku-2", 1, 99)]
    assert order.deadline.ToDatetime() - order.create_time.ToDatetime() == timedelta(seconds=30)
    assert await rig.get(order.order_id) == order

    assert await rig.published_names(order.order_id, 1) == ["placed"]
    [event] = await rig.published(order.order_id)
    placed = event.message
    assert event.subject == f"order.placed.{order.order_id}"
    assert event.headers["Nats-Msg-Id"] == placed.event_id
    assert event.headers["Paymesh-Type"] == "paymesh.order.v1.OrderPlaced"
    assert TRACEPARENT.match(event.headers["traceparent"])
    assert (placed.order_id, placed.customer_id, placed.currency, placed.amount_minor, placed.payment_method_token) == (
        order.order_id,
        "cus_42",
        "USD",
        2599,
        "tok_chargeDeclined",
    )
    assert list(placed.items) == list(order.items)
    assert placed.deadline == order.deadline


async def test_a_callers_traceparent_is_continued(rig: Rig) -> None:
    from tests.integration.order.conftest import create_request

    trace = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    reply = await rig.orders.CreateOrder(create_request(), metadata=(("traceparent", trace),))
    await rig.published_names(reply.order.order_id, 1)
    [event] = await rig.published(reply.order.order_id)
    assert event.headers["traceparent"].startswith("00-" + "ab" * 16 + "-")
    assert event.headers["traceparent"] != trace


async def test_reserved_then_paid_confirms_and_publishes_order_confirmed(rig: Rig) -> None:
    order = await rig.create()
    await rig.answer(reserved(order.order_id))
    await rig.wait_status(order.order_id, S.ORDER_STATUS_AWAITING_PAYMENT)
    await rig.answer(succeeded(order.order_id, payment_id="pay_77"))
    confirmed = await rig.wait_status(order.order_id, S.ORDER_STATUS_CONFIRMED)
    assert confirmed.payment_id == "pay_77"
    assert confirmed.update_time.ToDatetime() > order.update_time.ToDatetime()
    assert await rig.published_names(order.order_id, 2, merchant_told=True) == ["placed", "confirmed"]
    event = (await rig.published(order.order_id))[1]
    assert (event.message.payment_id, event.headers["Paymesh-Type"]) == ("pay_77", "paymesh.order.v1.OrderConfirmed")
    # The order as GetOrder shows it, for the merchant's order.confirmed webhook.
    assert event.message.order == confirmed


async def test_a_final_status_no_saga_event_announces_is_published_as_status_changed(rig: Rig) -> None:
    order = await rig.create()
    await rig.answer(rejected(order.order_id))
    final = await rig.wait_status(order.order_id, S.ORDER_STATUS_REJECTED)
    assert await rig.published_names(order.order_id, 2, merchant_told=True) == ["placed", "status_changed"]
    told = (await rig.published(order.order_id, merchant_told=True))[1]
    assert told.headers["Paymesh-Type"] == "paymesh.order.v1.OrderStatusChanged"
    assert told.message.order == final and told.message.merchant_id == final.merchant_id


async def test_payment_before_the_reservation_still_confirms(rig: Rig) -> None:
    order = await rig.create()
    await rig.answer(succeeded(order.order_id))
    await rig.wait_status(order.order_id, S.ORDER_STATUS_CONFIRMED)
    await rig.answer_and_wait(reserved(order.order_id))  # late: ignored
    assert (await rig.get(order.order_id)).status == S.ORDER_STATUS_CONFIRMED
    assert await rig.published_names(order.order_id, 2) == ["placed", "confirmed"]


async def test_rejected_by_inventory(rig: Rig) -> None:
    order = await rig.create()
    await rig.answer(rejected(order.order_id, reason="OUT_OF_STOCK"))
    assert (await rig.wait_status(order.order_id, S.ORDER_STATUS_REJECTED)).failure_reason == "OUT_OF_STOCK"


async def test_payment_failed(rig: Rig) -> None:
    order = await rig.create()
    await rig.answer(reserved(order.order_id))
    await rig.answer(failed(order.order_id, code="insufficient_funds"))
    done = await rig.wait_status(order.order_id, S.ORDER_STATUS_PAYMENT_FAILED)
    assert (done.failure_reason, done.payment_id) == ("insufficient_funds", "pay_1")
    # inventory's release of the failed payment's stock is not an answer to anything here
    await rig.answer_and_wait(released(order.order_id, cause="PAYMENT_FAILED"))
    assert (await rig.get(order.order_id)).status == S.ORDER_STATUS_PAYMENT_FAILED
    assert await rig.published_names(order.order_id, 1) == ["placed"]


async def _bring_to(rig: Rig, status: int) -> str:
    order_id = (await rig.create()).order_id
    if status in (S.ORDER_STATUS_AWAITING_PAYMENT, S.ORDER_STATUS_CONFIRMED):
        await rig.answer(reserved(order_id))
        await rig.wait_status(order_id, S.ORDER_STATUS_AWAITING_PAYMENT)
    if status == S.ORDER_STATUS_CONFIRMED:
        await rig.answer(succeeded(order_id))
        await rig.wait_status(order_id, S.ORDER_STATUS_CONFIRMED)
    return order_id


@pytest.mark.parametrize("inventory_first", [True, False], ids=["inventory-first", "payment-first"])
async def test_cancel_waits_for_inventory_and_payment(rig: Rig, inventory_first: bool) -> None:
    for start in ("PENDING", "AWAITING_PAYMENT", "CONFIRMED"):
        order_id = await _bring_to(rig, S.Value(f"ORDER_STATUS_{start}"))
        cancelling = await rig.cancel(order_id, reason="customer asked")
        assert (cancelling.status, cancelling.failure_reason) == (S.ORDER_STATUS_CANCELLING, "customer asked")
        names = await rig.published_names(order_id, 3 if start == "CONFIRMED" else 2)
        assert names[-1] == "cancelled"
        cancelled = (await rig.published(order_id))[-1].message
        assert (cancelled.reason, cancelled.timed_out) == ("customer asked", False)

        money: Callable[[str], Message] = refunded if start == "CONFIRMED" else voided
        answers = [released(order_id), money(order_id)]
        if not inventory_first:
            answers.reverse()
        # Neither a release caused by a failed payment nor a late saga answer counts.
        await rig.answer_and_wait(released(order_id, cause="PAYMENT_FAILED"))
        await rig.answer_and_wait(succeeded(order_id))
        await rig.answer_and_wait(answers[0])
        assert (await rig.get(order_id)).status == S.ORDER_STATUS_CANCELLING, start
        await rig.answer(answers[1])
        done = await rig.wait_status(order_id, S.ORDER_STATUS_CANCELLED)
        assert done.failure_reason == "customer asked"
        assert (await rig.published(order_id))[-1].subject.startswith("order.cancelled."), "nothing after the cancel"


async def test_cancel_while_cancelling_answers_the_order_and_cancel_of_cancelled_is_refused(rig: Rig) -> None:
    order_id = await _bring_to(rig, S.ORDER_STATUS_PENDING)
    first = await rig.cancel(order_id)
    again = await rig.cancel(order_id, reason="twice")
    assert again == first, "the order as it is; no second order.cancelled"
    assert await rig.published_names(order_id, 2) == ["placed", "cancelled"]
    await rig.answer(voided(order_id))
    await rig.answer(released(order_id))
    await rig.wait_status(order_id, S.ORDER_STATUS_CANCELLED)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.cancel(order_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_details_pb2.ErrorInfo()
    assert rpc_status.from_call(err.value).details[0].Unpack(info)
    assert (info.reason, dict(info.metadata)) == (
        "ORDER_NOT_CANCELLABLE",
        {"order_id": order_id, "status": "CANCELLED"},
    )


async def test_rejected_order_is_not_cancellable(rig: Rig) -> None:
    order_id = await _bring_to(rig, S.ORDER_STATUS_PENDING)
    await rig.answer(rejected(order_id))
    await rig.wait_status(order_id, S.ORDER_STATUS_REJECTED)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rig.cancel(order_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("inventory_first", [True, False], ids=["inventory-first", "payment-first"])
async def test_refund_failed_needs_review(rig: Rig, inventory_first: bool) -> None:
    order_id = await _bring_to(rig, S.ORDER_STATUS_CONFIRMED)
    await rig.cancel(order_id)
    answers = [released(order_id), refund_failed(order_id)]
    if not inventory_first:
        answers.reverse()
    await rig.answer_and_wait(answers[0])
    assert (await rig.get(order_id)).status == S.ORDER_STATUS_CANCELLING
    await rig.answer(answers[1])
    done = await rig.wait_status(order_id, S.ORDER_STATUS_REQUIRES_REVIEW)
    assert done.failure_reason == "REFUND_FAILED: refund_declined"


async def test_a_failed_refund_of_a_confirmed_order_needs_review_at_once(rig: Rig) -> None:
    order_id = await _bring_to(rig, S.ORDER_STATUS_CONFIRMED)
    await rig.answer(refund_failed(order_id))  # a RefundPayment that failed for good
    await rig.wait_status(order_id, S.ORDER_STATUS_REQUIRES_REVIEW)


async def test_a_duplicate_event_under_a_new_msg_id_has_no_second_effect(rig: Rig) -> None:
    order = await rig.create()
    answer = succeeded(order.order_id)
    await rig.answer(answer)
    await rig.answer(answer, msg_id="republished-" + answer.event_id)  # passes JetStream's dedupe
    await rig.wait_status(order.order_id, S.ORDER_STATUS_CONFIRMED)
    await wait_for(rig.all_acked, message="both copies acked")
    assert rig.applied == 1, "the inbox skipped the copy"
    assert await rig.published_names(order.order_id, 2) == ["placed", "confirmed"]


@pytest.mark.parametrize("saga_timeout_s", [0.4])
async def test_saga_deadline_cancels_open_orders_with_timed_out(rig: Rig) -> None:
    pending = await rig.create()
    awaiting = await rig.create()
    confirmed = await rig.create()
    await rig.answer(reserved(awaiting.order_id))
    await rig.answer(succeeded(confirmed.order_id))
    for order in (pending, awaiting):
        timed_out = await rig.wait_status(order.order_id, S.ORDER_STATUS_CANCELLING)
        assert timed_out.failure_reason == "SAGA_TIMEOUT"
        assert (await rig.published_names(order.order_id, 2))[-1] == "cancelled"
        event = (await rig.published(order.order_id))[-1].message
        assert (event.timed_out, event.reason) == (True, "SAGA_TIMEOUT")
    assert (await rig.get(confirmed.order_id)).status == S.ORDER_STATUS_CONFIRMED
    # The timed-out saga finishes like any cancel.
    await rig.answer(voided(pending.order_id))
    await rig.answer(released(pending.order_id))
    await rig.wait_status(pending.order_id, S.ORDER_STATUS_CANCELLED)
    assert rig.sweeper.timed_out == 2


async def test_a_batch_is_applied_in_stream_order_in_one_transaction(rig: Rig) -> None:
    """The handler as the consumer calls it with a fetched batch: events of several orders, interleaved."""
    a, b, c = [await rig.create() for _ in range(3)]
    events = [
        reserved(a.order_id),
        rejected(b.order_id),
        succeeded(a.order_id),
        reserved(a.order_id),
        failed(c.order_id),
        succeeded(b.order_id),
    ]
    batch = [InboundEvent(e.event_id, "", type(e).DESCRIPTOR.full_name, e, None, 1, None) for e in events]
    runtime = rig.host.runtime
    async with runtime.db.unit_of_work() as uow:
        await rig.handler(uow, batch)
        await uow.commit()
    assert [(await rig.get(o.order_id)).status for o in (a, b, c)] == [
        S.ORDER_STATUS_CONFIRMED,
        S.ORDER_STATUS_REJECTED,
        S.ORDER_STATUS_PAYMENT_FAILED,
    ]
    assert await rig.published_names(a.order_id, 2) == ["placed", "confirmed"]
    assert await rig.published_names(b.order_id, 1) == ["placed"]
