"""Merchants on payment_svc: one merchant's key never reads or changes another's payments, request ids are
per merchant, events carry their merchant, and an event of one merchant never touches another's row."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from paymesh.payment.v1 import payment_pb2, payment_service_pb2
from tests.conftest import wait_for
from tests.integration.payment.conftest import PS, Published, Rig, gw, new_order_id
from tests.keys import MERCHANT_A, MERCHANT_B

pytestmark = pytest.mark.timeout(40)
pb = payment_service_pb2


async def charged(rig: Rig, merchant: str, amount: int = 1000) -> payment_pb2.Payment:
    order_id = new_order_id()
    await rig.place(order_id, amount=amount, merchant=merchant)
    await rig.reserve(order_id, merchant=merchant)
    return await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED, merchant=merchant)


def refund(payment_id: str, amount: int, request_id: str | None = None) -> Any:
    return pb.RefundPaymentRequest(request_id=request_id or str(uuid.uuid4()), payment_id=payment_id,
                                   amount_minor=amount, reason="goodwill")


async def refusal(call: Any, request: Any, payment_id: str) -> tuple[Any, ...]:
    """Everything a client sees of a refusal, with the payment id written as <id>: two refusals that say
    the same of different ids compare equal."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request)
    status = rpc_status.from_call(err.value)
    assert status is not None
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        assert detail.Unpack(info), "NOT_FOUND carries one ErrorInfo and nothing else"
        metadata = {k: v.replace(payment_id, "<id>") for k, v in info.metadata.items()}
        infos.append((info.reason, info.domain, sorted(metadata.items())))
    return err.value.code(), err.value.details().replace(payment_id, "<id>"), infos


def of(events: list[Published], merchant: str) -> list[Published]:
    return [e for e in events if e.message.merchant_id == merchant]


async def test_another_merchants_payment_answers_exactly_as_a_missing_one(rig: Rig) -> None:
    payment = await charged(rig, MERCHANT_A)
    missing = f"pay_{uuid.uuid4().hex}"
    b = rig.as_merchant(MERCHANT_B)
    calls = [
        (b.GetPayment, lambda pid: pb.GetPaymentRequest(payment_id=pid)),
        (b.ListPaymentEvents, lambda pid: pb.ListPaymentEventsRequest(payment_id=pid)),
        (b.RefundPayment, lambda pid: refund(pid, 100)),
        (b.RefundPayment, lambda pid: refund(pid, 0)),
    ]
    for call, request in calls:
        foreign = await refusal(call, request(payment.payment_id), payment.payment_id)
        absent = await refusal(call, request(missing), missing)
        assert foreign == absent
        assert foreign[0] == grpc.StatusCode.NOT_FOUND and foreign[2][0][0] == "PAYMENT_NOT_FOUND"

    # B's list shows none of A's payments, with or without A's order id as its filter.
    assert list((await b.ListPayments(pb.ListPaymentsRequest())).payments) == []
    assert list((await b.ListPayments(pb.ListPaymentsRequest(order_id=payment.order_id))).payments) == []
    # A's payment is as it was: no refund asked, none at the gateway, nothing in its trail or on the stream.
    after = (await rig.payments.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id))).payment
    assert after == payment
    assert after.merchant_id == MERCHANT_A
    assert gw(rig).refund_calls == {}
    assert await rig.trail(payment.payment_id) == ["created", "charge_requested", "charge_succeeded"]
    assert [e.event for e in await rig.published(payment.order_id)] == ["succeeded"]


async def test_the_same_request_id_from_two_merchants_makes_two_independent_refunds(rig: Rig) -> None:
    a_payment = await charged(rig, MERCHANT_A, amount=1000)
    b_payment = await charged(rig, MERCHANT_B, amount=800)
    a, b = rig.as_merchant(MERCHANT_A), rig.as_merchant(MERCHANT_B)
    request_id = str(uuid.uuid4())

    a_reply = await a.RefundPayment(refund(a_payment.payment_id, 300, request_id))
    # Not A's stored answer (another request under that id would be ALREADY_EXISTS), but B's own refund.
    b_reply = await b.RefundPayment(refund(b_payment.payment_id, 200, request_id))
    assert (a_reply.payment.payment_id, a_reply.amount_minor, a_reply.payment.refunded_minor) == (
        a_payment.payment_id, 300, 300)
    assert (b_reply.payment.payment_id, b_reply.amount_minor, b_reply.payment.refunded_minor) == (
        b_payment.payment_id, 200, 200)
    assert a_reply.refund_id != b_reply.refund_id
    assert (a_reply.payment.merchant_id, b_reply.payment.merchant_id) == (MERCHANT_A, MERCHANT_B)

    # Each replays its own first answer and nothing moves again.
    assert await a.RefundPayment(refund(a_payment.payment_id, 300, request_id)) == a_reply
    assert await b.RefundPayment(refund(b_payment.payment_id, 200, request_id)) == b_reply
    # Each merchant's id is still bound to its own request.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await b.RefundPayment(refund(b_payment.payment_id, 300, request_id))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # At the gateway: two refunds under two keys (request ids are per merchant; its keys are one namespace).
    gateway = gw(rig)
    assert gateway.refunded_total(a_payment.payment_id) == 300
    assert gateway.refunded_total(b_payment.payment_id) == 200
    assert sorted(gateway.refund_calls.values()) == [1, 1]


async def test_events_and_charges_carry_their_merchant(rig: Rig) -> None:
    a_payment = await charged(rig, MERCHANT_A, amount=500)
    b_payment = await charged(rig, MERCHANT_B, amount=700)
    await rig.cancel(b_payment.order_id, merchant=MERCHANT_B)
    await rig.wait_payment(b_payment.order_id, PS.PAYMENT_STATUS_REFUNDED, merchant=MERCHANT_B)

    for payment, merchant, wanted in ((a_payment, MERCHANT_A, ["succeeded"]),
                                      (b_payment, MERCHANT_B, ["succeeded", "refunded"])):
        events = await rig.wait_events(payment.order_id, wanted)
        for event in events:
            assert event.message.merchant_id == merchant
            assert event.headers["Paymesh-Merchant"] == merchant
        # The charge at the bank is tagged with the merchant; its refund with the charge's.
        charge = gw(rig).charges[payment.payment_id]
        assert charge.merchant_id == merchant
    [refunded] = gw(rig).refunds.values()
    assert refunded.refund.merchant_id == MERCHANT_B
    assert gw(rig).auth_refusals == 0, "every call came with the platform key"
    # The audit trail is the merchant's too.
    trail = await rig.as_merchant(MERCHANT_B).ListPaymentEvents(
        pb.ListPaymentEventsRequest(payment_id=b_payment.payment_id))
    assert [e.type for e in trail.events] == ["created", "charge_requested", "charge_succeeded", "refund_requested",
                                          "refunded"]
    assert {e.merchant_id for e in trail.events} == {MERCHANT_B}


async def test_an_event_of_another_merchant_naming_an_order_never_touches_its_payment(rig: Rig) -> None:
    # A charged payment, and B's order.cancelled naming its order: B's own tombstone, A's payment unrefunded.
    charged_a = await charged(rig, MERCHANT_A, amount=900)
    await rig.cancel(charged_a.order_id, merchant=MERCHANT_B)

    async def b_voided() -> list[Published]:
        return of(await rig.published(charged_a.order_id), MERCHANT_B)

    [voided] = await wait_for(b_voided, message="B's answer to its own cancel")
    assert (voided.event, voided.message.payment_id, voided.headers["Paymesh-Merchant"]) == (
        "voided", "", MERCHANT_B)
    tombstone = await rig.payment_of(charged_a.order_id, merchant=MERCHANT_B)
    assert tombstone is not None and tombstone.status == PS.PAYMENT_STATUS_VOIDED
    assert tombstone.payment_id != charged_a.payment_id
    assert await rig.payment_of(charged_a.order_id) == charged_a
    assert gw(rig).refund_calls == {}

    # A pending payment, and B's inventory.reserved naming its order: as for an order not seen yet, it is
    # redelivered later; nothing is charged, until A's own reservation comes.
    order_id = new_order_id()
    await rig.place(order_id, amount=400)
    pending = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_PENDING)
    await rig.reserve(order_id, merchant=MERCHANT_B)

    async def redelivered() -> bool:
        info = await rig.nc.jetstream().consumer_info("INVENTORY", "payment_svc-inventory")
        return info.num_redelivered > 0

    await wait_for(redelivered, message="B's reservation redelivered: it names no payment of B's")
    assert await rig.payment_of(order_id) == pending
    assert pending.payment_id not in gw(rig).charge_calls

    # B's order.placed naming A's order id makes B's own payment; A's keeps its amount and state.
    await rig.place(order_id, amount=12345, merchant=MERCHANT_B)
    b_payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_PENDING, merchant=MERCHANT_B)
    assert b_payment.payment_id != pending.payment_id and b_payment.amount_minor == 12345
    assert await rig.payment_of(order_id) == pending

    # A's own reservation charges A's payment, once, for A's amount; B's payment is still unpaid
    # (B's reservation, now matching B's payment, may charge it: that is B's saga, not A's).
    await rig.reserve(order_id)
    paid = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED)
    assert paid.payment_id == pending.payment_id and paid.amount_minor == 400
    assert gw(rig).charge_calls[pending.payment_id] == 1
    assert gw(rig).charges[pending.payment_id].merchant_id == MERCHANT_A


async def test_the_refund_scan_resumes_every_merchants_refunds(rig: Rig) -> None:
    """The background's work list is the platform's: a restart resumes the refunds of A and of B."""
    payments = {m: await charged(rig, m, amount=600) for m in (MERCHANT_A, MERCHANT_B)}
    await rig.gateway.stop()  # type: ignore[union-attr]
    for merchant, payment in payments.items():
        await rig.cancel(payment.order_id, merchant=merchant)
    for merchant, payment in payments.items():
        await rig.wait_payment(payment.order_id, PS.PAYMENT_STATUS_REFUNDING, merchant=merchant)
    await rig.restart()
    await rig.gateway.start()  # type: ignore[union-attr]
    for merchant, payment in payments.items():
        done = await rig.wait_payment(payment.order_id, PS.PAYMENT_STATUS_REFUNDED, timeout=15, merchant=merchant)
        assert done.refunded_minor == 600 and done.merchant_id == merchant
        assert gw(rig).refunded_total(payment.payment_id) == 600
