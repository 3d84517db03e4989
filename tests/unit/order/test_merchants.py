"""An order is one merchant's: it is placed with one, shows it on the wire and in every event, and its states
reach only that merchant's watchers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from order_svc.domain import Line, Order
from order_svc.messages import order_to_proto, outbound
from order_svc.watch import OrderWatch
from paymesh.chassis.events import MERCHANT, message_types
from paymesh.order.v1 import events_pb2

TYPES = message_types(events_pb2)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
A = "mer_unit_a"
B = "mer_unit_b"


def placed(merchant_id: str = A, order_id: str | None = None) -> Order:
    return Order.place(
        merchant_id=merchant_id,
        customer_id="cus_1",
        lines=[Line("sku-1", 1, 500)],
        currency="USD",
        payment_method_token="tok_visa",
        now=T0,
        timeout=timedelta(seconds=30),
        order_id=order_id,
    )


def test_an_order_is_placed_for_a_merchant() -> None:
    assert placed(A).merchant_id == A
    with pytest.raises(ValueError, match="merchant_id"):
        placed("")


def test_the_order_and_each_of_its_events_name_its_merchant() -> None:
    order = placed(B)
    assert order_to_proto(order).merchant_id == B
    events = order.pull_events()
    order.pay("pay_1", T0)
    events += order.pull_events()
    order.cancel("", T0)
    events += order.pull_events()
    assert len(events) == 3
    for event in events:
        wire = outbound(order, event, None)
        assert (TYPES[wire.type].FromString(wire.payload).merchant_id, wire.headers[MERCHANT]) == (B, B)
    assert [outbound(order, e, None).type.rsplit(".", 1)[1] for e in events] == [
        "OrderPlaced",
        "OrderConfirmed",
        "OrderCancelled",
    ]


class AfterCommit:
    """The part of a unit of work the hub uses: callbacks run once it commits."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], Any]] = []

    def after_commit(self, callback: Callable[[], Any]) -> None:
        self.callbacks.append(callback)

    def commit(self) -> None:
        for callback in self.callbacks:
            callback()


def test_a_state_reaches_only_the_streams_of_the_orders_own_merchant() -> None:
    watch = OrderWatch()
    order = placed(A, order_id="ord_" + "1" * 32)
    with watch.follow(A, order.order_id) as mine, watch.follow(B, order.order_id) as theirs:
        uow = AfterCommit()
        order.reserve(T0)
        watch.deliver_after_commit(uow, [watch.snapshot(order)])  # type: ignore[arg-type]
        uow.commit()
        assert [s.order.merchant_id for s in [mine.get_nowait()]] == [A]
        assert theirs.empty(), "another merchant asking for the same id hears nothing"
    with watch.follow(B, order.order_id):
        assert watch.snapshot(order) is None, "nobody of A's follows it: no state is even made"
