"""`paymesh reconcile`'s comparison on fabricated facts: a sound ledger agrees, each kind of mismatch is named."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from paymesh.ops.reconcile import (
    KINDS,
    GatewayRefund,
    Report,
    StoredCharge,
    StoredPayment,
    compare,
    format_text,
    since_time,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MER = "mer_a"


def payment(n: int, status: str, amount: int = 1000, refunded: int = 0, *, charged: bool = True,
            **extra: object) -> StoredPayment:
    fields: dict[str, object] = {
        "payment_id": f"pay_{n}", "order_id": f"ord_{n}", "status": status, "amount_minor": amount,
        "refunded_minor": refunded, "charge_id": f"ch_{n}" if charged else "", "merchant_id": MER,
        "currency": "USD", "idempotency_key": f"pay_{n}", "deadline": NOW - timedelta(minutes=5),
        "create_time": NOW - timedelta(minutes=6),
    }
    return StoredPayment(**{**fields, **extra})  # type: ignore[arg-type]


def charge(n: int, status: str, amount: int = 1000, refunded: int = 0, **extra: object) -> StoredCharge:
    fields: dict[str, object] = {
        "charge_id": f"ch_{n}", "order_id": f"ord_{n}", "status": status, "amount_minor": amount,
        "refunded_minor": refunded, "merchant_id": MER, "currency": "USD", "idempotency_key": f"pay_{n}",
        "create_time": NOW - timedelta(minutes=6),
    }
    return StoredCharge(**{**fields, **extra})  # type: ignore[arg-type]


def sound() -> tuple[list[StoredPayment], list[StoredCharge], list[GatewayRefund]]:
    """A healthy ledger: 1 succeeded, 2 declined, 3 refunded after a cancel, 4 partly refunded twice, 5 refund
    failed, 6 voided before its charge, 7 failed with the gateway unreachable, 8 in flight within its deadline."""
    payments = [
        payment(1, "SUCCEEDED"),
        payment(2, "FAILED", charged=False, failure_code="card_declined"),
        payment(3, "REFUNDED", refunded=1000),
        payment(4, "PARTIALLY_REFUNDED", refunded=500),
        payment(5, "REFUND_FAILED"),
        payment(6, "VOIDED", charged=False),
        payment(7, "FAILED", charged=False, failure_code="GATEWAY_UNAVAILABLE"),
        payment(8, "PROCESSING", charged=False, deadline=NOW + timedelta(seconds=20)),
    ]
    charges = [
        charge(1, "SUCCEEDED"),
        charge(2, "DECLINED", decline_code="card_declined"),
        charge(3, "REFUNDED", refunded=1000),
        charge(4, "PARTIALLY_REFUNDED", refunded=500),
        charge(5, "SUCCEEDED"),
        charge(8, "SUCCEEDED"),  # charged, its answer not yet recorded
    ]
    refunds = [GatewayRefund("re_3", "ch_3", 1000), GatewayRefund("re_4a", "ch_4", 200),
               GatewayRefund("re_4b", "ch_4", 300)]
    return payments, charges, refunds


def kinds(report: Report) -> list[str]:
    return [m.kind for m in report.mismatches]


def test_a_sound_ledger_agrees_and_counts_each_status() -> None:
    report = compare(*sound(), now=NOW)
    assert report.ok, report.mismatches
    c = report.counts
    assert (c.payments, c.charges, c.refunds) == (8, 6, 3)
    assert c.payments_by_status == {"FAILED": 2, "PARTIALLY_REFUNDED": 1, "PROCESSING": 1, "REFUNDED": 1,
                                    "REFUND_FAILED": 1, "SUCCEEDED": 1, "VOIDED": 1}
    assert c.charges_by_status == {"DECLINED": 1, "PARTIALLY_REFUNDED": 1, "REFUNDED": 1, "SUCCEEDED": 3}
    assert (c.declines_agreeing, c.in_flight) == (1, 1)
    text = format_text(report)
    assert text.splitlines()[0] == "reconciled 8 payments and 6 charges, 3 refunds: all agree"
    assert "payments: FAILED 2, PARTIALLY_REFUNDED 1" in text


def test_partial_refunds_agree_when_the_gateways_refunds_sum_to_the_payments() -> None:
    p = payment(1, "PARTIALLY_REFUNDED", refunded=700)
    c = charge(1, "PARTIALLY_REFUNDED", refunded=700)
    parts = [GatewayRefund("re_1", "ch_1", 100), GatewayRefund("re_2", "ch_1", 250), GatewayRefund("re_3", "ch_1", 350)]
    assert compare([p], [c], parts, NOW).ok
    assert kinds(compare([p], [c], parts[:2], NOW)) == ["refunded_mismatch"]


def test_a_charge_no_payment_claims_is_named_while_the_gateway_keeps_its_money() -> None:
    payments, charges, refunds = sound()
    stray = charge(9, "SUCCEEDED", 4200, idempotency_key="manual-1", order_id="ord_unknown")
    report = compare(payments, [*charges, stray], refunds, NOW)
    assert kinds(report) == ["charge_without_payment"]
    m = report.mismatches[0]
    assert (m.merchant_id, m.order_id, m.payment_id, m.charge_id) == (MER, "ord_unknown", "", "ch_9")
    assert (m.ours, m.theirs) == (None, "SUCCEEDED 4200 USD")
    # Declined, or refunded in full at the gateway (the runbook's remedy): nothing kept, nothing to report.
    assert compare(payments, [*charges, dataclasses.replace(stray, status="DECLINED")], refunds, NOW).ok
    refunded = dataclasses.replace(stray, status="REFUNDED", refunded_minor=4200)
    assert compare(payments, [*charges, refunded], [*refunds, GatewayRefund("re_9", "ch_9", 4200)], NOW).ok


def test_a_second_charge_of_a_paid_order_is_a_charge_without_payment() -> None:
    second = charge(1, "SUCCEEDED", charge_id="ch_1b", idempotency_key="other-key")
    report = compare([payment(1, "SUCCEEDED")], [charge(1, "SUCCEEDED"), second], [], NOW)
    assert kinds(report) == ["charge_without_payment"]
    assert report.mismatches[0].charge_id == "ch_1b"
    assert "second charge of order ord_1" in report.mismatches[0].detail


def test_a_charged_payment_with_no_charge_at_the_gateway() -> None:
    payments, charges, refunds = sound()
    report = compare(payments, [c for c in charges if c.charge_id != "ch_1"], refunds, NOW)
    assert kinds(report) == ["payment_without_charge"]
    m = report.mismatches[0]
    assert (m.payment_id, m.charge_id, m.ours, m.theirs) == ("pay_1", "", "SUCCEEDED 1000 USD", None)


def test_amount_or_currency_that_differ() -> None:
    report = compare([payment(1, "SUCCEEDED", 1001)], [charge(1, "SUCCEEDED")], [], NOW)
    assert kinds(report) == ["amount_mismatch"]
    assert (report.mismatches[0].ours, report.mismatches[0].theirs) == ("1001 USD", "1000 USD")
    report = compare([payment(1, "SUCCEEDED", currency="EUR")], [charge(1, "SUCCEEDED")], [], NOW)
    assert kinds(report) == ["amount_mismatch"]
    assert (report.mismatches[0].ours, report.mismatches[0].theirs) == ("1000 EUR", "1000 USD")


def test_refunded_totals_that_differ() -> None:
    # The gateway refunded, the payment never learned it.
    report = compare([payment(1, "SUCCEEDED")], [charge(1, "REFUNDED", refunded=1000)],
                     [GatewayRefund("re_1", "ch_1", 1000)], NOW)
    assert kinds(report) == ["refunded_mismatch"]
    assert (report.mismatches[0].ours, report.mismatches[0].theirs) == ("0", "1000")
    # The payment counts a refund the gateway has no record of.
    report = compare([payment(1, "REFUNDED", refunded=1000)], [charge(1, "SUCCEEDED")], [], NOW)
    assert kinds(report) == ["refunded_mismatch"]


def test_payments_stuck_past_their_deadline_say_what_the_gateway_did() -> None:
    late = NOW - timedelta(minutes=5)
    unknown = payment(1, "PROCESSING", charged=False, deadline=late)
    report = compare([unknown], [], [], NOW)
    assert kinds(report) == ["payment_stuck"]
    assert report.mismatches[0].theirs is None
    assert "no charge with its key pay_1" in report.mismatches[0].detail
    report = compare([unknown], [charge(1, "SUCCEEDED")], [], NOW)
    assert kinds(report) == ["payment_stuck"]
    assert report.mismatches[0].theirs == "SUCCEEDED 1000 USD"
    # Within the deadline (and payment_svc's grace after it) it is in flight.
    fresh = dataclasses.replace(unknown, deadline=NOW - timedelta(seconds=1))
    assert compare([fresh], [], [], NOW).ok
    assert compare([fresh], [], [], NOW).counts.in_flight == 1
    # REFUNDING: its clock starts when the refund was asked.
    refunding = payment(2, "REFUNDING", deadline=late, refund_asked=NOW - timedelta(seconds=10))
    assert compare([refunding], [charge(2, "SUCCEEDED")], [], NOW).ok
    long_ago = dataclasses.replace(refunding, refund_asked=NOW - timedelta(hours=1))
    assert kinds(compare([long_ago], [charge(2, "SUCCEEDED")], [], NOW)) == ["payment_stuck"]


def test_a_charge_tagged_with_another_merchant() -> None:
    report = compare([payment(1, "SUCCEEDED")], [charge(1, "SUCCEEDED", merchant_id="mer_b")], [], NOW)
    assert kinds(report) == ["merchant_mismatch"]
    m = report.mismatches[0]
    assert (m.merchant_id, m.ours, m.theirs) == (MER, MER, "mer_b")
    # Found by its order only, under another merchant: still that payment's charge, and mis-tagged.
    by_order = charge(1, "SUCCEEDED", merchant_id="mer_b", charge_id="ch_x", idempotency_key="k")
    assert kinds(compare([payment(1, "SUCCEEDED", charged=False)], [by_order], [], NOW)) == ["merchant_mismatch"]


def test_a_declined_charge_agrees_with_a_failed_payment_and_disagrees_with_a_taken_one() -> None:
    declined = charge(1, "DECLINED", decline_code="card_declined")
    failed = payment(1, "FAILED", charged=False, failure_code="card_declined")
    assert compare([failed], [declined], [], NOW).counts.declines_agreeing == 1
    assert compare([dataclasses.replace(failed, status="VOIDED", failure_code="")], [declined], [], NOW).ok
    assert kinds(compare([payment(1, "SUCCEEDED")], [declined], [], NOW)) == ["status_mismatch"]
    other_code = dataclasses.replace(failed, failure_code="insufficient_funds")
    assert kinds(compare([other_code], [declined], [], NOW)) == ["status_mismatch"]
    # The gateway kept the money of a payment that failed.
    assert kinds(compare([failed], [charge(1, "SUCCEEDED")], [], NOW)) == ["status_mismatch"]


def test_every_kind_at_once_is_listed_in_a_stable_order_and_in_json() -> None:
    payments = [
        payment(1, "SUCCEEDED", 1001),
        payment(2, "SUCCEEDED", charged=False, idempotency_key="gone"),
        payment(3, "SUCCEEDED"),
        payment(4, "PROCESSING", charged=False),
        payment(5, "SUCCEEDED"),
        payment(6, "FAILED", charged=False),
    ]
    charges = [
        charge(1, "SUCCEEDED"),
        charge(3, "REFUNDED", refunded=1000),
        charge(5, "SUCCEEDED", merchant_id="mer_b"),
        charge(6, "SUCCEEDED"),
        charge(7, "SUCCEEDED", idempotency_key="manual"),
    ]
    report = compare(payments, charges, [GatewayRefund("re_3", "ch_3", 1000)], NOW, since=NOW - timedelta(hours=1))
    assert kinds(report) == list(KINDS)
    body = report.to_json()
    assert body["ok"] is False
    assert body["since"] == "2025-06-01T11:00:00+00:00"
    assert set(body["counts"]) == {"payments", "charges", "refunds", "payments_by_status", "charges_by_status",
                                   "declines_agreeing", "in_flight", "mismatches"}
    assert body["counts"]["mismatches"] == len(KINDS)
    for m in body["mismatches"]:
        assert set(m) == {"kind", "merchant_id", "order_id", "payment_id", "charge_id", "ours", "theirs", "detail"}
    text = format_text(report)
    assert text.splitlines()[0].startswith("charge_without_payment: merchant mer_a, order ord_7, payment -, "
                                           "charge ch_7: ours none, theirs SUCCEEDED 1000 USD")
    assert "reconciled 6 payments and 5 charges, 1 refund created since 2025-06-01T11:00:00+00:00: 7 mismatches" \
        in text


def test_since_reads_an_iso_time_or_a_duration_back_from_now() -> None:
    assert since_time("24h", NOW) == NOW - timedelta(hours=24)
    assert since_time("30m", NOW) == NOW - timedelta(minutes=30)
    assert since_time("2025-05-31T08:00:00Z", NOW) == datetime(2025, 5, 31, 8, tzinfo=UTC)
    assert since_time("2025-05-31T10:00:00+02:00", NOW) == datetime(2025, 5, 31, 8, tzinfo=UTC)
    assert since_time("2025-05-31", NOW) == datetime(2025, 5, 31, tzinfo=UTC)  # UTC without an offset
    with pytest.raises(ValueError, match="neither an ISO time"):
        since_time("yesterday", NOW)
