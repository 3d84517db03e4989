"""The payment state machine, pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from payment_svc import domain as d
from payment_svc.domain import Payment, Status

NOW = datetime(2026, 1, 1, tzinfo=UTC)
M = "mer_1"
LATER = NOW + timedelta(seconds=60)


def payment(status: Status = Status.PENDING, **kw: object) -> Payment:
    p = Payment.place(M, "pay_1", "ord_1", 1000, "USD", "tok_visa", NOW + timedelta(seconds=30), NOW)
    p.status = status
    p.charge_id = "ch_1" if status not in (Status.PENDING, Status.PROCESSING) else ""
    for k, v in kw.items():
        setattr(p, k, v)
    p.steps, p.events = [], []
    return p


def refund_of(p: Payment, amount: int) -> d.RefundRequest:
    return d.RefundRequest(p.merchant_id, "re_x", p.payment_id, amount, "k")


# (action, statuses it is allowed from, status after)
ACTIONS = {
    "start_charge": (lambda p: p.start_charge(), {Status.PENDING, Status.PROCESSING}),
    "charge_succeeded": (lambda p: p.charge_succeeded("ch_9"), {Status.PROCESSING}),
    "charge_declined": (lambda p: p.charge_declined("card_declined", "no"), {Status.PROCESSING}),
    "charge_unresolved": (lambda p: p.charge_unresolved(False, "down"), {Status.PROCESSING}),
    "give_up": (lambda p: p.give_up(LATER), {Status.PROCESSING}),
    "request_refund": (lambda p: p.request_refund(100, "x"), {Status.SUCCEEDED, Status.PARTIALLY_REFUNDED}),
    "refund_succeeded": (lambda p: p.refund_succeeded(refund_of(p, 100), "re_1"), {Status.REFUNDING}),
    "refund_refused": (lambda p: p.refund_refused(refund_of(p, 100), "refund_declined", "no"), {Status.REFUNDING}),
}


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("status", list(Status))
def test_every_transition_is_allowed_or_refused(action: str, status: Status) -> None:
    apply, allowed = ACTIONS[action]
    p = payment(status, refunded_minor=500 if status is Status.PARTIALLY_REFUNDED else 0)
    if status in allowed:
        apply(p)
        assert p.changed
        assert p.steps or p.status is status, "every status change leaves an audit entry"
    else:
        with pytest.raises(d.InvalidTransition):
            apply(p)
        assert p.steps == [] and p.events == [] and p.status is status


def test_happy_charge_records_steps_and_event() -> None:
    p = Payment.place(M, "pay_1", "ord_1", 1000, "USD", "tok_visa", NOW, NOW)
    p.start_charge()
    p.charge_succeeded("ch_1")
    assert [(s.type, s.from_status, s.to_status) for s in p.steps] == [
        ("created", None, Status.PENDING),
        ("charge_requested", Status.PENDING, Status.PROCESSING),
        ("charge_succeeded", Status.PROCESSING, Status.SUCCEEDED),
    ]
    assert p.pull_events() == [d.Succeeded(M, "pay_1", "ord_1", "ch_1", 1000, "USD")]


def test_decline_fails_with_code_or_voids_when_cancelled() -> None:
    p = payment(Status.PROCESSING)
    p.charge_declined("insufficient_funds", "no money")
    assert (p.status, p.failure_code) == (Status.FAILED, "insufficient_funds")
    assert p.events == [d.Failed(M, "pay_1", "ord_1", "insufficient_funds", "no money")]
    q = payment(Status.PROCESSING, cancel_requested=True)
    q.charge_declined("card_declined", "no")
    assert q.status is Status.VOIDED and q.events == [d.Voided(M, "pay_1", "ord_1")]


def test_give_up_only_past_the_deadline_and_only_if_nothing_may_have_charged() -> None:
    p = payment(Status.PROCESSING)
    with pytest.raises(d.InvalidTransition):
        p.give_up(NOW)
    assert not p.can_give_up(NOW) and p.can_give_up(LATER)
    p.give_up(LATER)
    assert (p.status, p.failure_code) == (Status.FAILED, d.GATEWAY_UNAVAILABLE)
    unknown = payment(Status.PROCESSING, charge_outcome_unknown=True)
    assert not unknown.can_give_up(LATER)
    with pytest.raises(d.ChargeMayHaveHappened):
        unknown.give_up(LATER)
    in_flight = payment(Status.PROCESSING, charge_calls_open=1)  # a crash left a call open
    assert not in_flight.can_give_up(LATER)


def test_an_unanswered_call_that_may_have_reached_marks_the_outcome_unknown() -> None:
    p = payment(Status.PENDING)
    p.start_charge()
    assert p.charge_calls_open == 1 and p.may_have_charged
    p.charge_unresolved(False, "UNAVAILABLE")
    assert not p.may_have_charged
    p.start_charge()
    p.charge_unresolved(True, "DEADLINE_EXCEEDED")
    assert p.charge_outcome_unknown and p.status is Status.PROCESSING


@pytest.mark.parametrize(
    ("status", "to", "event"),
    [
        (Status.PENDING, Status.VOIDED, d.Voided(M, "pay_1", "ord_1")),
        (Status.PROCESSING, Status.PROCESSING, None),
        (Status.REFUNDING, Status.REFUNDING, None),
        (Status.SUCCEEDED, Status.REFUNDING, None),
        (Status.PARTIALLY_REFUNDED, Status.REFUNDING, None),
        (Status.FAILED, Status.FAILED, d.Voided(M, "pay_1", "ord_1")),
        (Status.VOIDED, Status.VOIDED, d.Voided(M, "pay_1", "ord_1")),
        (Status.REFUNDED, Status.REFUNDED, d.Refunded(M, "pay_1", "ord_1", 0, "", "USD", 1000, True)),
        (
            Status.REFUND_FAILED,
            Status.REFUND_FAILED,
            d.RefundFailed(M, "pay_1", "ord_1", "x", "refund failed earlier", True),
        ),
    ],
)
def test_cancel_in_every_status(status: Status, to: Status, event: d.DomainEvent | None) -> None:
    refunded = {Status.PARTIALLY_REFUNDED: 400, Status.REFUNDED: 1000}.get(status, 0)
    p = payment(status, refunded_minor=refunded, failure_code="x" if status is Status.REFUND_FAILED else "")
    p.cancel("customer asked")
    assert p.status is to and p.cancel_requested
    assert p.events == ([event] if event else [])
    if to is Status.REFUNDING and status is not Status.REFUNDING:
        [r] = p.new_refunds
        assert r.amount_minor == 1000 - refunded and r.idempotency_key == "refund:pay_1:1"


def test_cancel_while_processing_then_approved_refunds_at_once() -> None:
    p = payment(Status.PROCESSING)
    p.cancel("customer asked")
    p.charge_succeeded("ch_1")
    assert p.status is Status.REFUNDING
    assert [type(e) for e in p.events] == [d.Succeeded]
    [r] = p.new_refunds
    p.refund_succeeded(r, "re_1")
    assert (p.status, p.refunded_minor) == (Status.REFUNDED, 1000)


def test_tombstone_is_voided_with_an_empty_payment_id_in_its_event() -> None:
    t = Payment.tombstone(M, "pay_t", "ord_t", NOW)
    assert t.status is Status.VOIDED and t.is_new and t.events == [d.Voided(M, "", "ord_t")]


def test_refund_arithmetic_in_minor_units() -> None:
    p = payment(Status.SUCCEEDED)
    r1 = p.request_refund(300, "partial")
    assert (r1.amount_minor, r1.idempotency_key, p.status) == (300, "refund:pay_1:1", Status.REFUNDING)
    p.refund_succeeded(r1, "re_1")
    assert (p.status, p.refunded_minor, p.refundable_minor) == (Status.PARTIALLY_REFUNDED, 300, 700)
    with pytest.raises(d.RefundExceedsBalance) as exc:
        p.request_refund(701, "too much")
    assert (exc.value.asked_minor, exc.value.left_minor) == (701, 700)
    assert p.status is Status.PARTIALLY_REFUNDED, "a refused refund changes nothing"
    r2 = p.request_refund(0, "the rest", request_id="req-1")
    # The gateway's key is the payment's, never the client's request id (unique per merchant only).
    assert (r2.amount_minor, r2.idempotency_key, r2.request_id) == (700, "refund:pay_1:2", "req-1")
    assert r2.merchant_id == M
    p.refund_succeeded(r2, "re_2")
    assert (p.status, p.refunded_minor) == (Status.REFUNDED, 1000)
    assert [e.refunded_minor for e in p.events if isinstance(e, d.Refunded)] == [300, 1000]
    with pytest.raises(d.InvalidTransition):
        p.request_refund(0, "again")


def test_refund_refused_is_refund_failed() -> None:
    p = payment(Status.SUCCEEDED)
    r = p.request_refund(0, "cancel")
    p.refund_refused(r, "refund_declined", "issuer said no")
    assert (p.status, p.failure_code, p.refunded_minor) == (Status.REFUND_FAILED, "refund_declined", 0)
    assert p.events[-1] == d.RefundFailed(M, "pay_1", "ord_1", "refund_declined", "issuer said no", False)


def test_a_cancelled_partial_refund_asks_for_the_rest() -> None:
    p = payment(Status.SUCCEEDED)
    r = p.request_refund(200, "goodwill")
    p.cancel("customer asked")
    assert p.status is Status.REFUNDING and len(p.new_refunds) == 1
    p.refund_succeeded(r, "re_1")
    assert p.status is Status.REFUNDING and p.new_refunds[-1].amount_minor == 800
    # The client's partial refund is not the cancel's answer; the refund of the rest is.
    assert [e.answers_cancel for e in p.pull_events()] == [False]
    p.refund_succeeded(p.new_refunds[-1], "re_2")
    assert p.status is Status.REFUNDED
    assert [e.answers_cancel for e in p.pull_events()] == [True]


def test_a_clients_full_refund_landing_after_a_cancel_answers_it() -> None:
    p = payment(Status.SUCCEEDED)
    r = p.request_refund(0, "customer asked")
    p.cancel("order cancelled meanwhile")
    p.refund_succeeded(r, "re_1")
    assert p.status is Status.REFUNDED
    assert [e.answers_cancel for e in p.pull_events()] == [True]


def test_a_clients_refund_without_a_cancel_does_not_answer_one() -> None:
    p = payment(Status.SUCCEEDED)
    p.refund_succeeded(p.request_refund(0, "goodwill"), "re_1")
    assert [e.answers_cancel for e in p.pull_events()] == [False]


def test_every_event_and_refund_carries_the_payments_merchant() -> None:
    """The merchant goes with each thing a payment causes, whatever path caused it."""
    p = Payment.place("mer_x", "pay_1", "ord_1", 1000, "USD", "tok_visa", NOW, NOW)
    p.start_charge()
    p.charge_succeeded("ch_1")
    p.cancel("customer asked")
    [r] = p.new_refunds
    p.refund_succeeded(r, "re_1")
    p.cancel("asked again")
    q = Payment.place("mer_y", "pay_2", "ord_2", 1000, "USD", "tok_visa", NOW, NOW)
    q.start_charge()
    q.charge_declined("card_declined", "no")
    q.cancel("late")
    t = Payment.tombstone("mer_z", "pay_3", "ord_3", NOW)
    assert r.merchant_id == "mer_x"
    assert {e.merchant_id for e in p.pull_events()} == {"mer_x"}
    assert {e.merchant_id for e in q.pull_events()} == {"mer_y"}
    assert [e.merchant_id for e in t.pull_events()] == ["mer_z"]


def test_refund_keys_are_unique_per_payment_whatever_request_id_the_client_sends() -> None:
    """Two merchants may send the same request_id; the gateway, one namespace, must see two keys."""
    a = Payment.place("mer_a", "pay_a", "ord_1", 1000, "USD", "tok_visa", NOW, NOW)
    b = Payment.place("mer_b", "pay_b", "ord_1", 1000, "USD", "tok_visa", NOW, NOW)
    for p in (a, b):
        p.status = Status.SUCCEEDED
    ra = a.request_refund(100, "x", request_id="11111111-1111-1111-1111-111111111111")
    rb = b.request_refund(100, "x", request_id="11111111-1111-1111-1111-111111111111")
    assert ra.idempotency_key != rb.idempotency_key
    assert (ra.merchant_id, rb.merchant_id) == ("mer_a", "mer_b")
