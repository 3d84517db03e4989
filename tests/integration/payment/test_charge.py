"""The charge, on a real nats-server, real SQLite and PostgreSQL stores and a scripted gateway over gRPC."""

from __future__ import annotations

import pytest

from paymesh.payment.v1 import payment_service_pb2
from tests.conftest import wait_for
from tests.integration.payment.conftest import PS, Rig, gw, new_order_id

pytestmark = pytest.mark.timeout(30)


async def test_happy_charge_publishes_succeeded_with_headers_and_audit_trail(rig: Rig) -> None:
    order_id = new_order_id()
    await rig.place(order_id, amount=4250)
    reserved = await rig.reserve(order_id)
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED)

    [succeeded] = await rig.wait_events(order_id, ["succeeded"])
    message = succeeded.message
    assert (message.order_id, message.payment_id, message.amount_minor, message.currency) == (
        order_id, payment.payment_id, 4250, "USD")
    assert message.charge_id == payment.charge_id and payment.charge_id.startswith("ch_")
    assert succeeded.headers["Nats-Msg-Id"] == message.event_id
    assert succeeded.headers["Paymesh-Type"] == "paymesh.payment.v1.PaymentSucceeded"
    # Same trace as the inventory.reserved that caused it.
    assert succeeded.headers["traceparent"].split("-")[1] == reserved.headers["traceparent"].split("-")[1]

    assert payment.idempotency_key == payment.payment_id and payment.payment_id.startswith("pay_")
    assert gw(rig).charge_calls[payment.payment_id] == 1
    reply = await rig.payments.ListPaymentEvents(
        payment_service_pb2.ListPaymentEventsRequest(payment_id=payment.payment_id))
    steps = [(e.sequence, e.type, PS.Name(e.from_status), PS.Name(e.to_status)) for e in reply.events]
    assert steps == [
        (1, "created", "PAYMENT_STATUS_UNSPECIFIED", "PAYMENT_STATUS_PENDING"),
        (2, "charge_requested", "PAYMENT_STATUS_PENDING", "PAYMENT_STATUS_PROCESSING"),
        (3, "charge_succeeded", "PAYMENT_STATUS_PROCESSING", "PAYMENT_STATUS_SUCCEEDED"),
    ]
    # Paging the trail: one step per page, in order.
    seen, token = [], ""
    while True:
        page = await rig.payments.ListPaymentEvents(payment_service_pb2.ListPaymentEventsRequest(
            payment_id=payment.payment_id, page_size=1, page_token=token))
        seen += [e.type for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["created", "charge_requested", "charge_succeeded"]


@pytest.mark.parametrize(("token", "code"), [("tok_chargeDeclined", "card_declined"),
                                             ("tok_chargeDeclinedInsufficientFunds", "insufficient_funds")])
async def test_decline_fails_the_payment_with_the_decline_code(rig: Rig, token: str, code: str) -> None:
    order_id = new_order_id()
    await rig.place(order_id, token=token)
    await rig.reserve(order_id)
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_FAILED)
    assert payment.failure_code == code
    [failed] = await rig.wait_events(order_id, ["failed"])
    assert (failed.message.failure_code, failed.message.payment_id) == (code, payment.payment_id)
    assert gw(rig).charge_calls[payment.payment_id] == 1, "a decline is never retried"


async def test_reservation_before_the_order_is_redelivered_then_charged_once(rig: Rig) -> None:
    order_id = new_order_id()
    await rig.reserve(order_id)
    consumer = next(c for c in rig.host.consumers if c.name == "payment_svc-inventory")

    async def redelivered() -> bool:
        info = await rig.nc.jetstream().consumer_info("INVENTORY", "payment_svc-inventory")
        return info.num_redelivered > 0 or info.delivered.consumer_seq > 1

    await wait_for(redelivered, message="inventory.reserved redelivered while no payment exists")
    assert await rig.payment_of(order_id) is None and consumer.applied == 0
    await rig.place(order_id)
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED)
    await rig.wait_events(order_id, ["succeeded"])
    assert gw(rig).charge_calls[payment.payment_id] == 1


async def test_lost_response_charges_exactly_once(rig: Rig) -> None:
    order_id = new_order_id()
    await rig.place(order_id, token="tok_lostResponse")
    await rig.reserve(order_id)
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED)
    gateway = gw(rig)
    assert gateway.charge_calls[payment.payment_id] == 2, "asked again with the same key"
    assert len([c for c in gateway.charges.values() if c.order_id == order_id]) == 1
    assert payment.charge_id == gateway.charges[payment.payment_id].charge_id
    await rig.wait_events(order_id, ["succeeded"])


async def test_flaky_gateway_succeeds_after_in_process_retries(rig: Rig) -> None:
    order_id = new_order_id()
    await rig.place(order_id, token="tok_flaky")
    await rig.reserve(order_id)
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED)
    assert gw(rig).charge_calls[payment.payment_id] == 3
    assert "charge_retried" not in await rig.trail(payment.payment_id), "resolved within one call sequence"
    await rig.wait_events(order_id, ["succeeded"])


async def test_a_duplicate_event_with_a_new_msg_id_charges_once(rig: Rig) -> None:
    order_id = new_order_id()
    await rig.place(order_id)
    first = await rig.reserve(order_id)
    await rig.reserve(order_id, event_id=first.event_id, msg_id="republished-1")
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED)
    await rig.wait_events(order_id, ["succeeded"])
    # A late copy, after the charge was recorded.
    await rig.reserve(order_id, event_id=first.event_id, msg_id="republished-2")

    async def all_acked() -> bool:
        info = await rig.nc.jetstream().consumer_info("INVENTORY", "payment_svc-inventory")
        return info.num_pending + info.num_ack_pending == 0 and info.delivered.stream_seq == 3

    await wait_for(all_acked, message="the three copies acked")
    assert gw(rig).charge_calls[payment.payment_id] == 1
    assert [e.event for e in await rig.published(order_id)] == ["succeeded"]
