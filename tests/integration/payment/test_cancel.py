"""order.cancelled in every state: void, wait for the charge in flight, refund; a refused refund."""

from __future__ import annotations

import pytest

from tests.conftest import wait_for
from tests.integration.payment.conftest import PS, Rig, gw, new_order_id

pytestmark = pytest.mark.timeout(30)


async def test_cancel_in_pending_voids(rig: Rig) -> None:
    order_id = new_order_id()
    await rig.place(order_id)
    await rig.wait_payment(order_id, PS.PAYMENT_STATUS_PENDING)
    await rig.cancel(order_id)
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_VOIDED)
    [voided] = await rig.wait_events(order_id, ["voided"])
    assert voided.message.payment_id == payment.payment_id
    # The reservation arriving late charges nothing.
    await rig.reserve(order_id)

    async def acked() -> bool:
        info = await rig.nc.jetstream().consumer_info("INVENTORY", "payment_svc-inventory")
        return info.delivered.stream_seq == 1 and info.num_ack_pending == 0

    await wait_for(acked, message="late reservation acked")
    assert gw(rig).charge_calls == {}
    assert (await rig.payment_of(order_id)).status == PS.PAYMENT_STATUS_VOIDED  # type: ignore[union-attr]


async def test_cancel_before_the_order_is_seen_leaves_a_tombstone(rig: Rig) -> None:
    order_id = new_order_id()
    await rig.cancel(order_id)
    [voided] = await rig.wait_events(order_id, ["voided"])
    assert voided.message.payment_id == "", "no payment existed"
    await rig.place(order_id)
    await rig.reserve(order_id)

    async def both_acked() -> bool:
        js = rig.nc.jetstream()
        order = await js.consumer_info("ORDER", "payment_svc-order")
        inventory = await js.consumer_info("INVENTORY", "payment_svc-inventory")
        return order.delivered.stream_seq == 2 and order.num_ack_pending == 0 and inventory.num_ack_pending == 0 \
            and inventory.delivered.stream_seq == 1

    await wait_for(both_acked, message="late order.placed and reservation acked")
    payment = await rig.payment_of(order_id)
    assert payment is not None and payment.status == PS.PAYMENT_STATUS_VOIDED and payment.amount_minor == 0
    assert gw(rig).charge_calls == {}


async def test_cancel_while_processing_refunds_once_the_charge_lands(rig: Rig) -> None:
    order_id = new_order_id()
    await rig.place(order_id, token="tok_slow", amount=700)
    await rig.reserve(order_id)
    gateway = gw(rig)
    await wait_for(gateway.slow_arrived.is_set, message="charge in flight at the gateway")
    await rig.cancel(order_id)

    async def cancel_recorded() -> bool:
        payment = await rig.payment_of(order_id)
        return payment is not None and payment.cancel_requested

    # Recorded while the gateway still holds the charge: no transaction is open across the call.
    await wait_for(cancel_recorded, message="cancel_requested while the charge is in flight")
    assert (await rig.payment_of(order_id)).status == PS.PAYMENT_STATUS_PROCESSING  # type: ignore[union-attr]
    gateway.release.set()

    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_REFUNDED)
    assert payment.refunded_minor == 700
    events = await rig.wait_events(order_id, ["succeeded", "refunded"])
    assert events[1].message.amount_minor == 700 and events[1].message.refunded_minor == 700
    assert gateway.charges[payment.payment_id].refunded_minor == 700
    assert len(gateway.refunds) == 1
    assert await rig.trail(payment.payment_id) == [
        "created", "charge_requested", "cancel_requested", "charge_succeeded", "refund_requested", "refunded"]


async def test_cancel_after_success_refunds(rig: Rig) -> None:
    order_id = new_order_id()
    await rig.place(order_id, amount=1234)
    await rig.reserve(order_id)
    await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED)
    await rig.cancel(order_id)
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_REFUNDED)
    [_, refunded] = await rig.wait_events(order_id, ["succeeded", "refunded"])
    assert (refunded.message.payment_id, refunded.message.amount_minor, refunded.message.refund_id) == (
        payment.payment_id, 1234, gw(rig).refunds[f"refund:{payment.payment_id}:1"].refund.refund_id)


async def test_refused_refund_is_refund_failed_with_its_event(rig: Rig) -> None:
    order_id = new_order_id()
    await rig.place(order_id, token="tok_refundFails")
    await rig.reserve(order_id)
    await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED)
    await rig.cancel(order_id)
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_REFUND_FAILED)
    assert payment.failure_code == "refund_declined" and payment.refunded_minor == 0
    [_, failed] = await rig.wait_events(order_id, ["succeeded", "refund_failed"])
    assert (failed.message.payment_id, failed.message.failure_code) == (payment.payment_id, "refund_declined")
    assert sum(gw(rig).refund_calls.values()) == 1, "a refusal is final: never retried"


async def test_a_refund_left_by_a_crash_is_resumed_at_start(rig: Rig) -> None:
    order_id = new_order_id()
    await rig.place(order_id, amount=900)
    await rig.reserve(order_id)
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_SUCCEEDED)
    await rig.gateway.stop()  # type: ignore[union-attr]
    await rig.cancel(order_id)
    await rig.wait_payment(order_id, PS.PAYMENT_STATUS_REFUNDING)
    await rig.restart()  # the refund was never answered
    await rig.gateway.start()  # type: ignore[union-attr]
    payment = await rig.wait_payment(order_id, PS.PAYMENT_STATUS_REFUNDED, timeout=15)
    assert payment.refunded_minor == 900
    assert list(gw(rig).refunds) == [f"refund:{payment.payment_id}:1"]
    await rig.wait_events(order_id, ["succeeded", "refunded"])
