"""End to end, the saga's outcomes: confirmed, declined, out of stock, a flaky gateway, a lost response, bad input."""

from __future__ import annotations

import uuid

import grpc
import pytest

from paymesh.inventory.v1 import events_pb2 as inventory_events
from paymesh.inventory.v1 import inventory_service_pb2
from paymesh.order.v1 import events_pb2 as order_events
from paymesh.order.v1 import order_service_pb2
from paymesh.payment.v1 import events_pb2 as payment_events
from paymesh.payment.v1 import payment_service_pb2
from tests.e2e.events import Bus
from tests.e2e.harness import CS, OS, PS, Clients, new_id, refused, statuses

TERMINAL = statuses("CONFIRMED", "REJECTED", "PAYMENT_FAILED", "CANCELLED", "REQUIRES_REVIEW")
HAPPY_EVENTS = {
    "order.placed": order_events.OrderPlaced,
    "inventory.reserved": inventory_events.InventoryReserved,
    "payment.succeeded": payment_events.PaymentSucceeded,
    "order.confirmed": order_events.OrderConfirmed,
    "inventory.committed": inventory_events.InventoryCommitted,
}


@pytest.mark.both_backends
@pytest.mark.timeout(60)
async def test_happy_path_confirms_moves_stock_to_sold_and_charges_once(clients: Clients, bus: Bus) -> None:
    sku_a, sku_b = await clients.put_product(10), await clients.put_product(5)

    order = await clients.create_order([(sku_a, 2, 1250), (sku_b, 1, 500)])
    trail = await bus.follow(order.order_id)

    assert order.status == OS.ORDER_STATUS_PENDING
    assert order.amount_minor == 3000
    final = await clients.wait_order(order.order_id, statuses("CONFIRMED"))
    assert final.payment_id
    events = await trail.wait_for(*HAPPY_EVENTS)
    for event, (name, cls) in zip(events, HAPPY_EVENTS.items(), strict=True):
        assert event.subject == f"{name}.{order.order_id}"
        assert isinstance(event.message, cls), (name, event.headers)
        assert event.headers["Nats-Msg-Id"] == event.message.event_id
        assert event.headers["Paymesh-Type"] == cls.DESCRIPTOR.full_name
        assert event.headers["traceparent"].startswith("00-"), event.headers
        assert event.message.order_id == order.order_id
    await clients.wait_stock(sku_a, (8, 0, 2))
    await clients.wait_stock(sku_b, (4, 0, 1))
    charge = await clients.one_charge(order.order_id)
    assert (charge.status, charge.amount_minor, charge.currency) == (CS.CHARGE_STATUS_SUCCEEDED, 3000, "USD")
    payment = await clients.payment_of(order.order_id)
    assert (payment.status, payment.charge_id, payment.payment_id) == (
        PS.PAYMENT_STATUS_SUCCEEDED,
        charge.charge_id,
        final.payment_id,
    )
    assert len(trail.named("payment.succeeded")) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("token", "code"),
    [("tok_chargeDeclined", "card_declined"), ("tok_chargeDeclinedInsufficientFunds", "insufficient_funds")],
)
async def test_a_decline_fails_the_payment_and_releases_the_stock(
    clients: Clients, bus: Bus, token: str, code: str
) -> None:
    sku = await clients.put_product(3)

    order = await clients.create_order([(sku, 2, 700)], token=token)
    trail = await bus.follow(order.order_id)

    final = await clients.wait_order(order.order_id, statuses("PAYMENT_FAILED"))
    assert code in final.failure_reason
    failed, released = await trail.wait_for("payment.failed", "inventory.released")
    assert failed.message.failure_code == code
    assert released.message.held and released.message.cause == "PAYMENT_FAILED"
    await clients.wait_stock(sku, (3, 0, 0))
    payment = await clients.payment_of(order.order_id)
    assert (payment.status, payment.failure_code) == (PS.PAYMENT_STATUS_FAILED, code)
    assert [c.status for c in await clients.charges(order.order_id)] in ([], [CS.CHARGE_STATUS_DECLINED])
    assert not trail.named("order.confirmed") and not trail.named("inventory.committed")


@pytest.mark.timeout(60)
async def test_out_of_stock_on_one_line_of_three_rejects_and_moves_nothing(clients: Clients, bus: Bus) -> None:
    plenty, scarce, more = await clients.put_product(10), await clients.put_product(1), await clients.put_product(10)

    order = await clients.create_order([(plenty, 1, 100), (scarce, 2, 100), (more, 3, 100)])
    trail = await bus.follow(order.order_id)

    final = await clients.wait_order(order.order_id, statuses("REJECTED"))
    assert final.failure_reason
    (rejected,) = await trail.wait_for("inventory.rejected")
    assert (rejected.message.sku, rejected.message.requested, rejected.message.available) == (scarce, 2, 1)
    for sku, stocked in ((plenty, 10), (scarce, 1), (more, 10)):
        assert await clients.stock(sku) == (stocked, 0, 0)
    assert await clients.charges(order.order_id) == []
    assert not trail.named("inventory.reserved") and not trail.named("payment.succeeded")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("token", ["tok_flaky", "tok_lostResponse"])
async def test_a_retried_charge_confirms_with_exactly_one_charge(clients: Clients, token: str) -> None:
    """tok_flaky answers UNAVAILABLE twice; tok_lostResponse charges but answers DEADLINE_EXCEEDED first."""
    sku = await clients.put_product(2)

    order = await clients.create_order([(sku, 1, 4200)], token=token)

    await clients.wait_order(order.order_id, statuses("CONFIRMED"), timeout=30)
    charge = await clients.one_charge(order.order_id)
    assert (charge.status, charge.amount_minor) == (CS.CHARGE_STATUS_SUCCEEDED, 4200)
    payment = await clients.payment_of(order.order_id)
    assert (payment.status, payment.charge_id) == (PS.PAYMENT_STATUS_SUCCEEDED, charge.charge_id)
    await clients.wait_stock(sku, (1, 0, 1))


def bad_requests(clients: Clients, sku: str) -> list[tuple[str, object, str]]:
    """(case, request, the BadRequest field it must name)"""

    def req(**changes: object) -> object:
        request = clients.order_request([(sku, 1, 100)], customer_id=f"cus_bad_{new_id()[:8]}")
        for name, value in changes.items():
            if name == "items":
                del request.items[:]
                for s, q, p in value:  # type: ignore[attr-defined]
                    request.items.add(sku=s, quantity=q, unit_price_minor=p)
            else:
                setattr(request, name, value)
        return request

    return [
        ("no request_id", req(request_id=""), "request_id"),
        ("request_id not a UUID", req(request_id="not-a-uuid"), "request_id"),
        ("no customer", req(customer_id=""), "customer_id"),
        ("no items", req(items=[]), "items"),
        ("zero quantity", req(items=[(sku, 0, 100)]), "items[0].quantity"),
        ("negative quantity", req(items=[(sku, -1, 100)]), "items[0].quantity"),
        ("negative price", req(items=[(sku, 1, -5)]), "items[0].unit_price_minor"),
        ("no sku", req(items=[("", 1, 100)]), "items[0].sku"),
        ("same sku twice", req(items=[(sku, 1, 100), (sku, 2, 100)]), "items[1].sku"),
        ("unknown currency", req(currency="XYZ"), "currency"),
        ("lower-case currency", req(currency="usd"), "currency"),
        ("no currency", req(currency=""), "currency"),
        ("no payment token", req(payment_method_token=""), "payment_method_token"),
        ("total overflows int64", req(items=[(sku, 2**62, 4)]), "items"),
    ]


@pytest.mark.timeout(60)
async def test_bad_create_order_requests_are_refused_field_by_field_and_change_nothing(
    clients: Clients, bus: Bus
) -> None:
    sku = await clients.put_product(5)
    placed = await bus.watch("ORDER", "order.placed.*")

    failures = []
    for case, request, field in bad_requests(clients, sku):
        err = await refused(clients.order.CreateOrder(request, timeout=10))
        if err.code != grpc.StatusCode.INVALID_ARGUMENT or not any(
            f == field or f.startswith(field + ".") or f.startswith(field + "[") for f in err.fields
        ):
            failures.append(f"{case}: {err.code.name} fields={err.fields} reason={err.reason} {err.message!r}")
        elif request.customer_id:  # type: ignore[attr-defined]
            assert await clients.orders_of(request.customer_id) == [], case  # type: ignore[attr-defined]
    assert not failures, "\n".join(failures)
    # A good order afterwards is the barrier: the relay publishes in commit order, so any
    # order.placed of a refused request would arrive before this one's.
    barrier = await clients.create_order([(sku, 1, 100)])
    await placed.wait_until(lambda events: any(e.message.order_id == barrier.order_id for e in events), "barrier")
    assert [e.message.order_id for e in placed.events] == [barrier.order_id]


@pytest.mark.timeout(60)
async def test_bad_requests_to_the_other_commands_are_refused_and_change_nothing(clients: Clients) -> None:
    sku = await clients.put_product(5)
    order = await clients.create_order([(sku, 1, 100)])
    confirmed = await clients.wait_order(order.order_id, statuses("CONFIRMED"))
    inv, pay, orders = inventory_service_pb2, payment_service_pb2, order_service_pb2
    unknown_order = f"ord_{uuid.uuid4().hex}"
    bad, missing = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    adjust, put = clients.inventory.AdjustStock, clients.inventory.PutProduct
    cancel, get, refund = clients.order.CancelOrder, clients.order.GetOrder, clients.payment.RefundPayment
    paid = confirmed.payment_id
    cases: list[tuple[str, object, grpc.StatusCode, str]] = [
        ("AdjustStock zero delta", adjust(inv.AdjustStockRequest(request_id=new_id(), sku=sku)), bad, "delta"),
        ("AdjustStock no request_id", adjust(inv.AdjustStockRequest(sku=sku, delta=1)), bad, "request_id"),
        ("AdjustStock unknown sku", adjust(inv.AdjustStockRequest(request_id=new_id(), sku=f"{sku}-x", delta=1)),
         missing, ""),
        ("PutProduct negative", put(inv.PutProductRequest(request_id=new_id(), sku=sku, available=-1)), bad,
         "available"),
        ("CancelOrder no request_id", cancel(orders.CancelOrderRequest(order_id=order.order_id)), bad, "request_id"),
        ("CancelOrder unknown order", cancel(orders.CancelOrderRequest(order_id=unknown_order, request_id=new_id())),
         missing, ""),
        ("GetOrder unknown order", get(orders.GetOrderRequest(order_id=unknown_order)), missing, ""),
        ("RefundPayment negative amount",
         refund(pay.RefundPaymentRequest(request_id=new_id(), payment_id=paid, amount_minor=-1)), bad, "amount_minor"),
        ("RefundPayment no payment_id", refund(pay.RefundPaymentRequest(request_id=new_id())), bad, "payment_id"),
    ]  # fmt: skip

    failures = []
    for case, call, code, field in cases:
        err = await refused(call)  # type: ignore[arg-type]
        if err.code != code or (field and field not in err.fields) or not err.reason:
            failures.append(f"{case}: {err.code.name} fields={err.fields} reason={err.reason!r} {err.message!r}")
    assert not failures, "\n".join(failures)
    assert await clients.stock(sku) == (4, 0, 1)
    assert (await clients.get_order(order.order_id)).status == OS.ORDER_STATUS_CONFIRMED
    payment = await clients.payment_of(order.order_id)
    assert (payment.status, payment.refunded_minor) == (PS.PAYMENT_STATUS_SUCCEEDED, 0)
