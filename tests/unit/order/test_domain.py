"""The order's state machine: every allowed transition, every refused one, totals and their overflow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from order_svc.domain import (
    CANCEL_REQUESTED,
    CAUSE_ORDER_CANCELLED,
    SAGA_TIMEOUT,
    Cancelled,
    Confirmed,
    InvalidTransition,
    Line,
    NotCancellable,
    Order,
    OrderStatus,
    Placed,
    StatusChanged,
    TotalOverflow,
    total_of,
)
from paymesh.chassis.money import INT64_MAX

S = OrderStatus
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(seconds=1)
TIMEOUT = timedelta(seconds=30)
MERCHANT = "mer_unit"


def order_in(status: OrderStatus, **fields: object) -> Order:
    order = Order.place(
        merchant_id=MERCHANT,
        customer_id="cus_1",
        lines=[Line("sku-1", 2, 500), Line("sku-2", 1, 250)],
        currency="USD",
        payment_method_token="tok_visa",
        now=T0,
        timeout=TIMEOUT,
    )
    order.pull_events()
    order.status = status
    for name, value in fields.items():
        setattr(order, name, value)
    return order


def test_place_computes_the_total_and_records_order_placed() -> None:
    order = Order.place(
        merchant_id=MERCHANT,
        customer_id="cus_1",
        lines=[Line("a", 3, 199), Line("b", 1, 1)],
        currency="USD",
        payment_method_token="tok_visa",
        now=T0,
        timeout=TIMEOUT,
    )
    assert (order.status, order.amount_minor, order.deadline) == (S.PENDING, 598, T0 + TIMEOUT)
    assert order.order_id.startswith("ord_") and len(order.order_id) == 36
    assert order.pull_events() == [Placed(order.order_id)]
    assert order.pull_events() == []


def test_totals_are_checked_for_int64_overflow() -> None:
    assert total_of([Line("a", 1, INT64_MAX)]) == INT64_MAX
    with pytest.raises(TotalOverflow):
        total_of([Line("a", 1, INT64_MAX), Line("b", 1, 1)])
    with pytest.raises(TotalOverflow):
        total_of([Line("a", 2**32, 2**32)])
    with pytest.raises(TotalOverflow):
        Order.place(
            merchant_id=MERCHANT,
            customer_id="c",
            lines=[Line("a", 2, INT64_MAX)],
            currency="USD",
            payment_method_token="tok_visa",
            now=T0,
            timeout=TIMEOUT,
        )


# (name, how to apply it, statuses it is allowed from, status it leads to)
ANSWERS = [
    ("reserve", lambda o: o.reserve(LATER), {S.PENDING}, S.AWAITING_PAYMENT),
    ("reject", lambda o: o.reject("OUT_OF_STOCK", LATER), {S.PENDING, S.AWAITING_PAYMENT}, S.REJECTED),
    ("pay", lambda o: o.pay("pay_1", LATER), {S.PENDING, S.AWAITING_PAYMENT}, S.CONFIRMED),
    (
        "fail_payment",
        lambda o: o.fail_payment("pay_1", "card_declined", LATER),
        {S.PENDING, S.AWAITING_PAYMENT},
        S.PAYMENT_FAILED,
    ),
]


@pytest.mark.parametrize("status", list(S))
@pytest.mark.parametrize(("name", "apply", "allowed", "to"), ANSWERS, ids=[a[0] for a in ANSWERS])
def test_answers_move_only_from_the_statuses_the_table_allows(status, name, apply, allowed, to) -> None:  # type: ignore[no-untyped-def]
    order = order_in(status)
    if status not in allowed:
        with pytest.raises(InvalidTransition):
            apply(order)
        assert (order.status, order.version) == (status, 1), "a refused transition changes nothing"
        return
    apply(order)
    assert order.status == to
    assert (order.version, order.update_time) == (2, LATER)


def test_reject_and_payment_failure_record_why() -> None:
    rejected = order_in(S.PENDING)
    rejected.reject("OUT_OF_STOCK", LATER)
    assert rejected.failure_reason == "OUT_OF_STOCK"
    failed = order_in(S.AWAITING_PAYMENT)
    failed.fail_payment("pay_9", "insufficient_funds", LATER)
    assert (failed.failure_reason, failed.payment_id) == ("insufficient_funds", "pay_9")
    # The saga's own services hear nothing more; the merchant is told (webhook_svc reads StatusChanged).
    assert rejected.pull_events() == [StatusChanged(rejected.order_id, S.REJECTED)]
    assert failed.pull_events() == [StatusChanged(failed.order_id, S.PAYMENT_FAILED)]


def test_payment_confirms_even_before_the_reservation_and_emits_order_confirmed() -> None:
    order = order_in(S.PENDING)
    order.pay("pay_1", LATER)
    assert (order.status, order.payment_id) == (S.CONFIRMED, "pay_1")
    assert order.pull_events() == [Confirmed(order.order_id, "pay_1")]  # it tells the merchant too
    with pytest.raises(InvalidTransition):
        order.reserve(LATER)  # the late reservation is refused (the handler ignores it)


@pytest.mark.parametrize("status", [S.PENDING, S.AWAITING_PAYMENT, S.CONFIRMED])
def test_cancel_from_open_or_confirmed_starts_cancelling(status: OrderStatus) -> None:
    order = order_in(status)
    assert order.cancel("customer asked", LATER) is True
    assert (order.status, order.failure_reason) == (S.CANCELLING, "customer asked")
    assert order.pull_events() == [Cancelled(order.order_id, "customer asked", timed_out=False)]


def test_cancel_without_reason_and_cancel_again_while_cancelling() -> None:
    order = order_in(S.PENDING)
    order.cancel("", LATER)
    assert order.failure_reason == CANCEL_REQUESTED
    order.pull_events()
    assert order.cancel("again", LATER) is False
    assert order.pull_events() == [] and order.failure_reason == CANCEL_REQUESTED


@pytest.mark.parametrize("status", [S.REJECTED, S.PAYMENT_FAILED, S.CANCELLED, S.REQUIRES_REVIEW])
def test_cancel_of_a_settled_order_is_refused(status: OrderStatus) -> None:
    order = order_in(status)
    with pytest.raises(NotCancellable):
        order.cancel("too late", LATER)
    assert order.status == status and order.pull_events() == []


@pytest.mark.parametrize("status", list(S))
def test_time_out_only_open_orders_past_their_deadline(status: OrderStatus) -> None:
    order = order_in(status)
    past = order.deadline
    if status not in {S.PENDING, S.AWAITING_PAYMENT}:
        with pytest.raises(InvalidTransition):
            order.time_out(past)
        return
    with pytest.raises(InvalidTransition):
        order.time_out(past - timedelta(microseconds=1))
    order.time_out(past)
    assert (order.status, order.failure_reason) == (S.CANCELLING, SAGA_TIMEOUT)
    assert order.pull_events() == [Cancelled(order.order_id, SAGA_TIMEOUT, timed_out=True)]


@pytest.mark.parametrize("inventory_first", [True, False])
def test_cancelled_only_once_inventory_and_payment_both_answered(inventory_first: bool) -> None:
    order = order_in(S.CANCELLING)

    def inventory() -> bool:
        return order.inventory_released(CAUSE_ORDER_CANCELLED, LATER)

    def payment() -> bool:
        return order.payment_returned("p", CAUSE_ORDER_CANCELLED, LATER)

    first, second = (inventory, payment) if inventory_first else (payment, inventory)
    assert first() is True
    assert order.status == S.CANCELLING
    assert first() is False, "a second copy of the same answer is a no-op"
    assert second() is True
    assert order.status == S.CANCELLED
    assert order.pull_events() == [StatusChanged(order.order_id, S.CANCELLED)]


def test_a_release_for_a_failed_payment_is_not_the_cancels_answer() -> None:
    order = order_in(S.CANCELLING)
    with pytest.raises(InvalidTransition):
        order.inventory_released("PAYMENT_FAILED", LATER)
    assert not order.inventory_answered


@pytest.mark.parametrize("status", [s for s in S if s != S.CANCELLING])
def test_cancel_answers_are_refused_outside_cancelling(status: OrderStatus) -> None:
    order = order_in(status)
    with pytest.raises(InvalidTransition):
        order.inventory_released(CAUSE_ORDER_CANCELLED, LATER)
    with pytest.raises(InvalidTransition):
        order.payment_returned("p", CAUSE_ORDER_CANCELLED, LATER)


def test_a_clients_refund_landing_during_a_cancel_is_not_its_answer() -> None:
    order = order_in(S.CANCELLING)
    with pytest.raises(InvalidTransition):
        order.payment_returned("pay_1", "REFUND_REQUESTED", LATER)
    with pytest.raises(InvalidTransition):
        order.refund_failure("pay_1", "refund_declined", "REFUND_REQUESTED", LATER)
    assert not order.payment_answered and not order.refund_failed
    assert order.payment_returned("pay_1", CAUSE_ORDER_CANCELLED, LATER) is True


def test_refund_failure_while_cancelling_waits_for_inventory() -> None:
    order = order_in(S.CANCELLING)
    assert order.refund_failure("pay_1", "refund_declined", CAUSE_ORDER_CANCELLED, LATER) is True
    assert order.status == S.CANCELLING
    order.inventory_released(CAUSE_ORDER_CANCELLED, LATER)
    assert (order.status, order.failure_reason) == (S.REQUIRES_REVIEW, "REFUND_FAILED: refund_declined")


def test_refund_failure_after_inventory_answered_needs_review_at_once() -> None:
    order = order_in(S.CANCELLING, inventory_answered=True)
    order.refund_failure("pay_1", "", CAUSE_ORDER_CANCELLED, LATER)
    assert (order.status, order.failure_reason) == (S.REQUIRES_REVIEW, "REFUND_FAILED")


def test_refund_failure_of_a_confirmed_order_needs_review_at_once() -> None:
    order = order_in(S.CONFIRMED)
    order.refund_failure("pay_1", "refund_declined", CAUSE_ORDER_CANCELLED, LATER)
    assert order.status == S.REQUIRES_REVIEW
    assert order.refund_failure("pay_1", "refund_declined", CAUSE_ORDER_CANCELLED, LATER) is False


@pytest.mark.parametrize("status", [S.PENDING, S.AWAITING_PAYMENT, S.REJECTED, S.PAYMENT_FAILED, S.CANCELLED])
def test_refund_failure_is_refused_where_nothing_was_refunded(status: OrderStatus) -> None:
    with pytest.raises(InvalidTransition):
        order_in(status).refund_failure("p", "x", CAUSE_ORDER_CANCELLED, LATER)
