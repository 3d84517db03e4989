"""End to end, compensation: cancel at each stage, a refund that fails, partial refunds, the saga deadline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from paymesh.ops.launcher import Mesh
from paymesh.payment.v1 import payment_service_pb2
from tests.e2e.events import Bus
from tests.e2e.harness import CS, OS, PS, Clients, new_id, refused, statuses


@pytest.mark.timeout(90)
async def test_cancel_while_pending_voids_and_holds_nothing(mesh: Mesh, clients: Clients, bus: Bus) -> None:
    """inventory_svc is down, so the order stays PENDING; it answers the cancel once it is back."""
    sku = await clients.put_product(4)
    await mesh.kill("inventory_svc")

    order = await clients.create_order([(sku, 2, 300)])
    trail = await bus.follow(order.order_id)
    await trail.wait_for("order.placed")
    assert (await clients.get_order(order.order_id)).status == OS.ORDER_STATUS_PENDING
    cancelling = await clients.cancel(order.order_id)
    assert cancelling.status in statuses("CANCELLING", "CANCELLED")
    # payment_svc has seen the cancel before the reservation can reach it: otherwise the charge
    # may start first, which is the cancel-during-charge race (refund), tested below.
    await trail.wait_for("payment.voided")
    await mesh.restart("inventory_svc")

    final = await clients.wait_order(order.order_id, statuses("CANCELLED"), timeout=30)
    assert final.failure_reason
    released, voided = await trail.wait_for("inventory.released", "payment.voided")
    assert released.message.cause == "ORDER_CANCELLED"
    await clients.wait_stock(sku, (4, 0, 0))
    assert await clients.charges(order.order_id) == []
    assert (await clients.payment_of(order.order_id)).status == PS.PAYMENT_STATUS_VOIDED


@pytest.mark.timeout(90)
async def test_cancel_while_awaiting_payment_releases_stock_and_voids(mesh: Mesh, clients: Clients, bus: Bus) -> None:
    """payment_svc is down, so the order waits in AWAITING_PAYMENT with nothing charged."""
    sku = await clients.put_product(4)
    await mesh.kill("payment_svc")

    order = await clients.create_order([(sku, 3, 300)])
    await clients.wait_order(order.order_id, statuses("AWAITING_PAYMENT"))
    await clients.wait_stock(sku, (1, 3, 0))
    cancelling = await clients.cancel(order.order_id)
    assert cancelling.status in statuses("CANCELLING", "CANCELLED")
    await mesh.restart("payment_svc")

    await clients.wait_order(order.order_id, statuses("CANCELLED"), timeout=45)
    await clients.wait_stock(sku, (4, 0, 0))
    assert await clients.charges(order.order_id) == []
    assert (await clients.payment_of(order.order_id)).status == PS.PAYMENT_STATUS_VOIDED


@pytest.mark.timeout(90)
async def test_cancel_while_the_charge_is_in_flight_refunds_it(clients: Clients, bus: Bus) -> None:
    """The gateway answers slowly; the cancel lands while payment_svc waits on the charge."""
    sku = await clients.put_product(4)
    await clients.configure_gateway(latency_ms=1500)

    order = await clients.create_order([(sku, 1, 2500)])
    await clients.wait_payment(order.order_id, [PS.PAYMENT_STATUS_PROCESSING])
    await clients.cancel(order.order_id)

    await clients.wait_order(order.order_id, statuses("CANCELLED"), timeout=45)
    await clients.wait_stock(sku, (4, 0, 0))
    charges = await clients.charges(order.order_id)
    # The charge went through (then refunded) or never happened; never money kept.
    assert len(charges) <= 1, charges
    for charge in charges:
        assert charge.status in (CS.CHARGE_STATUS_REFUNDED, CS.CHARGE_STATUS_DECLINED), charge
        if charge.status == CS.CHARGE_STATUS_REFUNDED:
            assert charge.refunded_minor == charge.amount_minor == 2500
    payment = await clients.payment_of(order.order_id)
    assert payment.status in (PS.PAYMENT_STATUS_REFUNDED, PS.PAYMENT_STATUS_VOIDED), payment


@pytest.mark.both_backends
@pytest.mark.timeout(60)
async def test_cancel_after_confirm_refunds_and_restocks(clients: Clients, bus: Bus) -> None:
    sku = await clients.put_product(5)
    order = await clients.create_order([(sku, 2, 1999)])
    trail = await bus.follow(order.order_id)
    await clients.wait_order(order.order_id, statuses("CONFIRMED"))
    await trail.wait_for("inventory.committed")
    await clients.wait_stock(sku, (3, 0, 2))

    cancelling = await clients.cancel(order.order_id, reason="changed mind")

    assert cancelling.status in statuses("CANCELLING", "CANCELLED")
    final = await clients.wait_order(order.order_id, statuses("CANCELLED"))
    assert "changed mind" in final.failure_reason
    refunded, released = await trail.wait_for("payment.refunded", "inventory.released")
    assert refunded.message.amount_minor == 3998
    assert released.message.held and released.message.cause == "ORDER_CANCELLED"
    await clients.wait_stock(sku, (5, 0, 0))
    charge = await clients.one_charge(order.order_id)
    assert (charge.status, charge.refunded_minor) == (CS.CHARGE_STATUS_REFUNDED, 3998)
    payment = await clients.payment_of(order.order_id)
    assert (payment.status, payment.refunded_minor) == (PS.PAYMENT_STATUS_REFUNDED, 3998)
    again = await refused(clients.cancel(order.order_id))
    assert (again.code, again.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ORDER_NOT_CANCELLABLE")


@pytest.mark.timeout(60)
async def test_a_refund_that_fails_for_good_puts_the_order_in_review(clients: Clients, bus: Bus) -> None:
    sku = await clients.put_product(2)
    order = await clients.create_order([(sku, 1, 800)], token="tok_refundFails")
    trail = await bus.follow(order.order_id)
    await clients.wait_order(order.order_id, statuses("CONFIRMED"))

    await clients.cancel(order.order_id)

    final = await clients.wait_order(order.order_id, statuses("REQUIRES_REVIEW"), timeout=30)
    assert final.failure_reason
    await trail.wait_for("payment.refund_failed")
    payment = await clients.payment_of(order.order_id)
    assert payment.status == PS.PAYMENT_STATUS_REFUND_FAILED and payment.failure_code
    charge = await clients.one_charge(order.order_id)
    assert (charge.status, charge.refunded_minor) == (CS.CHARGE_STATUS_SUCCEEDED, 0)


@pytest.mark.timeout(60)
async def test_partial_refund_then_the_rest(clients: Clients) -> None:
    sku = await clients.put_product(2)
    order = await clients.create_order([(sku, 1, 1000)])
    confirmed = await clients.wait_order(order.order_id, statuses("CONFIRMED"))

    def refund(amount: int) -> payment_service_pb2.RefundPaymentRequest:
        return payment_service_pb2.RefundPaymentRequest(
            request_id=new_id(), payment_id=confirmed.payment_id, amount_minor=amount, reason="partial"
        )

    first = await clients.payment.RefundPayment(refund(300), timeout=15)
    assert (first.payment.status, first.payment.refunded_minor, first.amount_minor) == (
        PS.PAYMENT_STATUS_PARTIALLY_REFUNDED,
        300,
        300,
    )
    assert first.refund_id
    too_much = await refused(clients.payment.RefundPayment(refund(701), timeout=15))
    assert (too_much.code, too_much.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_BALANCE")
    charge = await clients.one_charge(order.order_id)
    assert (charge.status, charge.refunded_minor) == (CS.CHARGE_STATUS_PARTIALLY_REFUNDED, 300)

    rest = await clients.payment.RefundPayment(refund(0), timeout=15)

    assert (rest.payment.status, rest.payment.refunded_minor, rest.amount_minor) == (
        PS.PAYMENT_STATUS_REFUNDED,
        1000,
        700,
    )
    assert rest.refund_id != first.refund_id
    charge = await clients.one_charge(order.order_id)
    assert (charge.status, charge.refunded_minor) == (CS.CHARGE_STATUS_REFUNDED, 1000)
    nothing_left = await refused(clients.payment.RefundPayment(refund(0), timeout=15))
    assert nothing_left.code == grpc.StatusCode.FAILED_PRECONDITION
    trail = await clients.payment.ListPaymentEvents(
        payment_service_pb2.ListPaymentEventsRequest(payment_id=confirmed.payment_id), timeout=10
    )
    sequences = [e.sequence for e in trail.events]
    assert sequences == sorted(sequences) and len(sequences) >= 4, trail.events


@pytest.mark.timeout(90)
async def test_a_saga_past_its_deadline_is_cancelled(new_mesh: Callable[..., Awaitable[Mesh]]) -> None:
    """The gateway is down past a short saga timeout: the order is cancelled, nothing charged or held."""
    mesh = await new_mesh(PAYMESH_SAGA_TIMEOUT_S="3")
    async with Clients(mesh).session() as clients:
        sku = await clients.put_product(3)
        await mesh.kill("gateway_mock")

        order = await clients.create_order([(sku, 1, 500)])

        final = await clients.wait_order(order.order_id, statuses("CANCELLED"), timeout=45)
        assert final.failure_reason == "SAGA_TIMEOUT", final
        await clients.wait_stock(sku, (3, 0, 0))
        payment = await clients.payment_of(order.order_id)
        assert payment.status in (PS.PAYMENT_STATUS_VOIDED, PS.PAYMENT_STATUS_FAILED), payment
        await mesh.restart("gateway_mock")
        assert await clients.charges(order.order_id) == []
