"""The invariant checks of `paymesh chaos` on fabricated states: a sound run passes, each kind of damage is caught."""

from __future__ import annotations

import dataclasses

from paymesh.tools.invariants import (
    ChargeFact,
    DeadLetterFact,
    Observed,
    OrderFact,
    PaymentFact,
    ProductFact,
    ReservationFact,
    StepFact,
    check_audit_trails,
    check_dead_letters,
    check_money,
    check_one_charge,
    check_stock,
    check_terminal,
    check_webhooks,
    format_report,
    run_checks,
)


def trail(*statuses: str) -> list[StepFact]:
    """Steps moving through `statuses` from nothing: trail("PENDING", "PROCESSING") is created, then one move."""
    steps, previous = [], ""
    for seq, status in enumerate(statuses, start=1):
        steps.append(StepFact(seq, "step", previous, status))
        previous = status
    return steps


def sound() -> Observed:
    """Four orders as a healthy mesh leaves them.

    o1 CONFIRMED (2 mugs), o2 CONFIRMED and partly refunded (1 mug), o3 CANCELLED after its charge was
    refunded, o4 REQUIRES_REVIEW: cancelled, refund declined, the gateway keeps the money.
    """
    orders = {
        "o1": OrderFact("o1", "CONFIRMED", 2000, (("mug", 2),)),
        "o2": OrderFact("o2", "CONFIRMED", 1000, (("mug", 1),)),
        "o3": OrderFact("o3", "CANCELLED", 500, (("mug", 1),)),
        "o4": OrderFact("o4", "REQUIRES_REVIEW", 700, (("mug", 1),)),
    }
    payments = {
        "o1": [PaymentFact("p1", "o1", "SUCCEEDED", 2000, 0, "c1")],
        "o2": [PaymentFact("p2", "o2", "PARTIALLY_REFUNDED", 1000, 300, "c2")],
        "o3": [PaymentFact("p3", "o3", "REFUNDED", 500, 500, "c3")],
        "o4": [PaymentFact("p4", "o4", "REFUND_FAILED", 700, 0, "c4", "refund_declined")],
    }
    charges = {
        "o1": [ChargeFact("c1", "o1", "SUCCEEDED", 2000)],
        "o2": [ChargeFact("c2", "o2", "PARTIALLY_REFUNDED", 1000, 300)],
        "o3": [ChargeFact("c3", "o3", "REFUNDED", 500, 500)],
        "o4": [ChargeFact("c4", "o4", "SUCCEEDED", 700)],
    }
    trails = {
        "p1": trail("PENDING", "PROCESSING", "SUCCEEDED"),
        "p2": trail("PENDING", "PROCESSING", "SUCCEEDED", "REFUNDING", "PARTIALLY_REFUNDED"),
        "p3": trail("PENDING", "PROCESSING", "SUCCEEDED", "REFUNDING", "REFUNDED"),
        "p4": trail("PENDING", "PROCESSING", "SUCCEEDED", "REFUNDING", "REFUND_FAILED"),
    }
    reservations = {
        "o1": ReservationFact("o1", "COMMITTED", (("mug", 2),)),
        "o2": ReservationFact("o2", "COMMITTED", (("mug", 1),)),
        "o3": ReservationFact("o3", "RELEASED", (("mug", 1),)),
        "o4": ReservationFact("o4", "RELEASED", (("mug", 1),)),
    }
    products = [ProductFact("mug", stocked=10, available=7, reserved=0, sold=3)]
    webhooks = {
        "o1": {"order.confirmed"},
        "o2": {"order.confirmed", "payment.refunded"},
        "o3": {"order.confirmed", "payment.refunded", "order.cancelled"},
        "o4": {"order.confirmed", "payment.refund_failed", "order.requires_review"},
    }
    return Observed(
        orders, products, payments, charges, reservations, trails, dead_letters=[], settled_after_s=3.0,
        settle_limit_s=60.0, webhooks=webhooks,
    )


def test_a_sound_run_passes_every_check_and_names_them_in_the_report() -> None:
    results = run_checks(sound())
    assert [r.ok for r in results] == [True] * len(results), format_report(results)
    report = format_report(results)
    for name in ("every order terminal", "stock conserved", "gateway net", "one charge", "audit trail", "DLQ",
                 "merchant told"):
        assert name in report
    assert "net captured 3400 = confirmed 2000 + partially refunded remains 700 + under review 700" in report


def test_an_order_whose_final_status_never_reached_its_merchant_is_caught() -> None:
    obs = sound()
    assert obs.webhooks is not None
    obs.webhooks["o3"].discard("order.cancelled")  # told it was confirmed, never that it was cancelled
    result = check_webhooks(obs)
    assert not result.ok and result.orders == ("o3",)
    assert "o3 ended CANCELLED; no order.cancelled webhook arrived" in result.problems
    assert result.figure == "3/4 final statuses delivered, signed"
    obs = sound()
    obs.unverified_webhooks = 2
    assert check_webhooks(obs).problems == ("2 deliveries did not verify",)
    obs.webhooks = None
    assert check_webhooks(obs).ok and check_webhooks(obs).figure == "not collected"


def test_a_double_charge_is_caught_with_its_order() -> None:
    obs = sound()
    obs.charges["o1"].append(ChargeFact("c1b", "o1", "SUCCEEDED", 2000))
    one, money = check_one_charge(obs), check_money(obs)
    assert not one.ok and one.orders == ("o1",)
    assert "2 successful charges" in one.problems[0]
    assert not money.ok and "o1" in money.orders  # the gateway keeps 4000 for a 2000 order
    assert "net captured 5400 != " in money.figure


def test_a_declined_charge_beside_the_real_one_is_not_a_double_charge() -> None:
    obs = sound()
    obs.charges["o1"].append(ChargeFact("c1x", "o1", "DECLINED", 2000))
    assert check_one_charge(obs).ok and check_money(obs).ok


def test_a_stock_mismatch_is_caught() -> None:
    obs = sound()
    obs.products = [dataclasses.replace(obs.products[0], available=8)]  # a unit appeared from nowhere
    result = check_stock(obs)
    assert not result.ok
    assert "stocked 10 != available 8 + reserved 0 + sold 3" in result.problems[0]


def test_negative_stock_and_a_leaked_reservation_are_caught() -> None:
    obs = sound()
    obs.products = [ProductFact("mug", 10, available=-1, reserved=1, sold=10)]
    obs.reservations["o3"] = ReservationFact("o3", "RESERVED", (("mug", 1),))  # a CANCELLED order still holds stock
    result = check_stock(obs)
    assert not result.ok and result.orders == ("o3",)
    assert any("negative stock" in p for p in result.problems)
    assert any("o3 is CANCELLED but its reservation is RESERVED" in p for p in result.problems)


def test_a_reservation_that_sold_other_than_its_order_asked_is_caught() -> None:
    obs = sound()
    # Stock still adds up (1 more sold, 1 fewer available), but o1 asked for 2 mugs and 3 were sold for it.
    obs.reservations["o1"] = ReservationFact("o1", "COMMITTED", (("mug", 3),))
    obs.products = [ProductFact("mug", stocked=10, available=6, reserved=0, sold=4)]
    result = check_stock(obs)
    assert not result.ok and result.orders == ("o1",)
    assert "o1: its COMMITTED reservation holds [('mug', 3)], the order asks for [('mug', 2)]" in result.problems
    # The same lines split differently are the same order.
    obs = sound()
    obs.orders["o1"] = dataclasses.replace(obs.orders["o1"], lines=(("mug", 1), ("mug", 1)))
    assert check_stock(obs).ok


def test_a_refund_lost_at_the_gateway_is_caught() -> None:
    obs = sound()
    obs.charges["o3"] = [ChargeFact("c3", "o3", "SUCCEEDED", 500)]  # cancelled, but the money was kept
    result = check_money(obs)
    assert not result.ok and result.orders == ("o3",)
    assert "the gateway keeps 500, the order owes 0" in result.problems[0]


def test_requires_review_without_a_failed_refund_is_unexplained() -> None:
    obs = sound()
    obs.payments["o4"] = [PaymentFact("p4", "o4", "SUCCEEDED", 700, 0, "c4")]
    result = check_money(obs)
    assert not result.ok and result.orders == ("o4",)
    assert "REQUIRES_REVIEW unexplained" in result.problems[0]


def test_a_charge_for_no_known_order_is_caught() -> None:
    obs = sound()
    obs.stray_charges = [ChargeFact("cx", "o-unknown", "SUCCEEDED", 900)]
    result = check_money(obs)
    assert not result.ok and result.orders == ("o-unknown",)


def test_an_order_left_open_or_settling_late_is_caught() -> None:
    obs = sound()
    obs.orders["o5"] = OrderFact("o5", "CANCELLING", 100)
    result = check_terminal(obs)
    assert not result.ok and result.orders == ("o5",)
    assert "4/5 terminal" in result.figure
    obs.orders["o0"] = OrderFact("o0", "PENDING", 100)  # several open orders are listed by id
    result = check_terminal(obs)
    assert result.orders == ("o0", "o5") and "4/6 terminal" in result.figure

    late = sound()
    late.settled_after_s = 75.0
    assert not check_terminal(late).ok


def test_an_audit_trail_that_skips_a_step_or_goes_back_in_sequence_is_caught() -> None:
    obs = sound()
    obs.trails["p1"] = [
        StepFact(1, "created", "", "PENDING"),
        StepFact(2, "charge_succeeded", "PROCESSING", "SUCCEEDED"),  # never went PROCESSING
    ]
    result = check_audit_trails(obs)
    assert not result.ok and result.orders == ("o1",)
    assert "from PROCESSING, but step 1 created left it PENDING" in result.problems[0]

    obs = sound()
    obs.trails["p2"] = [*trail("PENDING", "PROCESSING"), StepFact(1, "x", "PROCESSING", "SUCCEEDED")]
    obs.payments["o2"] = [dataclasses.replace(obs.payments["o2"][0], status="SUCCEEDED")]
    assert "sequence 1 after 2" in check_audit_trails(obs).problems[0]

    obs = sound()
    obs.trails["p3"] = obs.trails["p3"][:-1]  # stops at REFUNDING while the payment says REFUNDED
    assert "trail ends at REFUNDING, the payment is REFUNDED" in check_audit_trails(obs).problems[0]


def test_dead_letters_are_listed_with_their_reason_and_order() -> None:
    obs = sound()
    obs.dead_letters = [DeadLetterFact(3, "payment_svc-order", "order.placed.o9", "MAX_DELIVER", "boom")]
    result = check_dead_letters(obs)
    assert not result.ok and result.orders == ("o9",)
    assert "MAX_DELIVER: boom" in result.problems[0]
    report = format_report(run_checks(obs))
    assert "violated" in report and "orders involved: o9" in report
