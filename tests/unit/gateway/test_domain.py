"""gateway_mock's pure rules: every test token, the seeded fault model, refund arithmetic, refused transitions."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway_mock import domain, faults
from gateway_mock.domain import Charge, ChargeCommand, ChargeStatus, RefundCommand, decide_charge
from gateway_mock.faults import NO_FAULTS, FaultConfig, FaultModel, Faults

pytestmark = pytest.mark.timeout(10)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
MERCHANT = "mer_aaaaaaaaaaaaaaaa"


def command(token: str = "tok_visa", amount: int = 1000, key: str = "k-1", merchant_id: str = MERCHANT,
            **kw: str) -> ChargeCommand:
    return ChargeCommand(idempotency_key=key, amount_minor=amount, currency="USD", token=token,
                         merchant_id=merchant_id, **kw)


def charged(token: str = "tok_visa", amount: int = 1000) -> Charge:
    cmd = command(token, amount)
    return Charge.create("ch_1", cmd, decide_charge(domain.card_for(token), cmd.idempotency_key, 1), NOW)


def refund(amount: int = 0, key: str = "r-1") -> RefundCommand:
    return RefundCommand(idempotency_key=key, charge_id="ch_1", amount_minor=amount)


# --- tokens ---


@pytest.mark.parametrize(
    ("token", "status", "decline_code", "last4"),
    [
        ("tok_visa", ChargeStatus.SUCCEEDED, "", "4242"),
        ("tok_chargeDeclined", ChargeStatus.DECLINED, "card_declined", "0002"),
        ("tok_chargeDeclinedInsufficientFunds", ChargeStatus.DECLINED, "insufficient_funds", "9995"),
        ("tok_refundFails", ChargeStatus.SUCCEEDED, "", "5126"),
    ],
)
def test_first_attempt_outcome_of_each_token(token: str, status: ChargeStatus, decline_code: str, last4: str) -> None:
    decision = decide_charge(domain.card_for(token), "k", 1)
    assert (decision.status, decision.decline_code, decision.lose_response) == (status, decline_code, False)
    charge = Charge.create("ch_1", command(token), decision, NOW)
    assert (charge.card_last4, charge.refunded_minor, charge.token) == (last4, 0, token)


def test_flaky_fails_the_first_two_attempts_then_succeeds() -> None:
    card = domain.card_for("tok_flaky")
    for attempt in (1, 2):
        with pytest.raises(domain.TransientFailure) as err:
            decide_charge(card, "k-flaky", attempt)
        assert err.value.key == "k-flaky"
    assert decide_charge(card, "k-flaky", 3).status is ChargeStatus.SUCCEEDED


def test_lost_response_charges_but_loses_the_answer() -> None:
    decision = decide_charge(domain.card_for("tok_lostResponse"), "k", 1)
    assert (decision.status, decision.lose_response, decision.cause) == (
        ChargeStatus.SUCCEEDED, True, "tok_lostResponse",
    )


def test_scripted_tokens_ignore_random_faults_they_are_never_given() -> None:
    assert [c.token for c in domain.TEST_CARDS.values() if c.random_faults] == ["tok_visa"]


def test_unknown_token_is_refused() -> None:
    with pytest.raises(domain.UnknownToken):
        domain.card_for("tok_mastercard")


# --- random faults on tok_visa ---


def test_random_faults_on_a_good_card() -> None:
    visa = domain.card_for("tok_visa")
    with pytest.raises(domain.TransientFailure) as err:
        decide_charge(visa, "k", 1, Faults(transient=True, decline=True))
    assert err.value.cause == "transient_error_rate"
    declined = decide_charge(visa, "k", 1, Faults(decline=True, lose_response=True))
    assert (declined.status, declined.decline_code, declined.lose_response) == (
        ChargeStatus.DECLINED, "card_declined", True,
    )
    assert decide_charge(visa, "k", 1, NO_FAULTS) == domain.ChargeDecision(ChargeStatus.SUCCEEDED, "", False,
                                                                           "lost_response_rate")


def draws(model: FaultModel, n: int = 200) -> list[Faults]:
    return [model.draw() for _ in range(n)]


def test_same_seed_same_faults_and_reseeding_replays() -> None:
    config = FaultConfig(decline_rate=0.3, transient_error_rate=0.2, lost_response_rate=0.1, seed=42)
    first = draws(FaultModel(config))
    assert first == draws(FaultModel(config))
    assert first != draws(FaultModel(FaultConfig(decline_rate=0.3, transient_error_rate=0.2,
                                                 lost_response_rate=0.1, seed=43)))
    model = FaultModel(config)
    draws(model, 17)
    model.configure(config, reseed=True)
    assert draws(model) == first
    # The rates shape the outcome; roughly the asked proportion over many draws.
    many = draws(FaultModel(config), 5000)
    assert 0.25 < sum(f.decline for f in many) / 5000 < 0.35
    assert 0.15 < sum(f.transient for f in many) / 5000 < 0.25


def test_every_draw_consumes_the_same_randomness_whatever_the_rates() -> None:
    # Changing a rate without reseeding must not shift which draw the next call gets.
    quiet, noisy = FaultModel(FaultConfig(seed=7)), FaultModel(FaultConfig(seed=7, decline_rate=1.0))
    draws(quiet, 5), draws(noisy, 5)
    quiet.configure(FaultConfig(seed=7, decline_rate=0.5), reseed=False)
    noisy.configure(FaultConfig(seed=7, decline_rate=0.5), reseed=False)
    assert draws(quiet) == draws(noisy)


def test_no_faults_by_default() -> None:
    assert not any(f.transient or f.decline or f.lose_response for f in draws(FaultModel(), 1000))


def test_configure_arithmetic_and_bounds() -> None:
    current = FaultConfig(latency_ms=5, decline_rate=0.5, seed=9)
    assert faults.updated(current, reset=False, decline_rate=0.1) == FaultConfig(latency_ms=5, decline_rate=0.1,
                                                                                   seed=9)
    assert faults.updated(current, reset=True, seed=3) == FaultConfig(seed=3)
    assert faults.updated(current, reset=True) == FaultConfig()
    bad = FaultConfig(latency_ms=-1, decline_rate=1.5, transient_error_rate=float("nan"), lost_response_rate=-0.1)
    assert [f for f, _ in bad.problems()] == ["latency_ms", "decline_rate", "transient_error_rate",
                                             "lost_response_rate"]
    assert FaultConfig(latency_ms=60_000, decline_rate=1.0).problems() == []


# --- idempotency ---


def test_replay_with_the_same_request_and_refusal_of_another() -> None:
    charge = charged()
    assert charge.replay(command(description="free text is not part of the request's identity")) is charge
    for other in [command(amount=999), command(token="tok_flaky"), command(order_id="ord_2"),
                  ChargeCommand("k-1", 1000, "EUR", "tok_visa", MERCHANT)]:
        with pytest.raises(domain.IdempotencyKeyReused) as err:
            charge.replay(other)
        assert (err.value.key, err.value.existing_id) == ("k-1", "ch_1")


def test_a_charge_carries_its_merchant_and_a_retry_for_another_merchant_is_another_request() -> None:
    charge = charged()
    assert charge.merchant_id == MERCHANT
    # The key is the platform's, global: the same money and card for another merchant is not a retry.
    with pytest.raises(domain.IdempotencyKeyReused) as err:
        charge.replay(command(merchant_id="mer_bbbbbbbbbbbbbbbb"))
    assert (err.value.kind, err.value.key, err.value.existing_id) == ("charge", "k-1", "ch_1")
    assert charge.replay(command()) is charge


def test_the_fingerprint_is_the_one_stored_before_merchants() -> None:
    # Charges stored before merchants keep their fingerprint; a retry of one (as the legacy merchant's)
    # must still match it, so the merchant is compared beside the fingerprint, not inside it.
    assert command().fingerprint() == command(merchant_id="mer_legacy").fingerprint()
    assert command().fingerprint() == domain._fingerprint("charge", 1000, "USD", "tok_visa", "")


def test_a_refund_is_the_charge_merchant_s() -> None:
    charge = charged()
    assert charge.refund("re_1", refund(300), NOW).merchant_id == MERCHANT


def test_refund_replay_keeps_the_amount_as_asked() -> None:
    charge = charged()
    made = charge.refund("re_1", refund(0), NOW)
    assert made.replay(refund(0)) is made
    with pytest.raises(domain.IdempotencyKeyReused):
        made.replay(refund(1000))


# --- refunds ---


def test_partial_refunds_then_the_rest() -> None:
    charge = charged(amount=1000)
    first = charge.refund("re_1", refund(300), NOW)
    assert (first.amount_minor, first.currency) == (300, "USD")
    assert (charge.status, charge.refunded_minor, charge.refundable_minor) == (
        ChargeStatus.PARTIALLY_REFUNDED, 300, 700,
    )
    charge.refund("re_2", refund(200, key="r-2"), NOW)
    rest = charge.refund("re_3", refund(0, key="r-3"), NOW)
    assert rest.amount_minor == 500
    assert (charge.status, charge.refunded_minor, charge.refundable_minor) == (ChargeStatus.REFUNDED, 1000, 0)


def test_full_refund_in_one_go() -> None:
    charge = charged(amount=1000)
    assert charge.refund("re_1", refund(1000), NOW).amount_minor == 1000
    assert charge.status is ChargeStatus.REFUNDED


def test_over_refund_is_refused_and_changes_nothing() -> None:
    charge = charged(amount=1000)
    charge.refund("re_1", refund(600), NOW)
    with pytest.raises(domain.RefundExceedsBalance) as err:
        charge.refund("re_2", refund(401, key="r-2"), NOW)
    assert (err.value.requested_minor, err.value.refundable_minor) == (401, 400)
    assert (charge.refunded_minor, charge.status) == (600, ChargeStatus.PARTIALLY_REFUNDED)


@pytest.mark.parametrize("token", ["tok_chargeDeclined", "tok_chargeDeclinedInsufficientFunds"])
def test_a_declined_charge_cannot_be_refunded(token: str) -> None:
    charge = charged(token)
    with pytest.raises(domain.InvalidTransition) as err:
        charge.refund("re_1", refund(0), NOW)
    assert err.value.status is ChargeStatus.DECLINED


def test_a_fully_refunded_charge_cannot_be_refunded_again() -> None:
    charge = charged()
    charge.refund("re_1", refund(0), NOW)
    for amount in (0, 1):
        with pytest.raises(domain.InvalidTransition):
            charge.refund("re_2", refund(amount, key="r-2"), NOW)
    assert charge.refunded_minor == 1000


def test_every_refund_of_tok_refund_fails_is_declined() -> None:
    charge = charged("tok_refundFails")
    for amount in (0, 1, 1000):
        with pytest.raises(domain.RefundDeclined) as err:
            charge.refund("re_1", refund(amount), NOW)
        assert err.value.decline_code == "refund_declined"
    assert (charge.status, charge.refunded_minor) == (ChargeStatus.SUCCEEDED, 0)


@pytest.mark.parametrize("module", [domain, faults])
def test_the_pure_modules_import_no_framework(module: object) -> None:
    tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[attr-defined]
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"grpc", "nats", "sqlalchemy", "google", "paymesh"}


def test_reconfigure_applies_what_was_set_and_reseeds_on_a_seed_or_a_reset() -> None:
    current = FaultConfig(latency_ms=5, decline_rate=0.5, seed=9)
    assert faults.Reconfigure({"decline_rate": 0.1}).applied_to(current) == FaultConfig(latency_ms=5,
                                                                                        decline_rate=0.1, seed=9)
    assert faults.Reconfigure({"seed": 3}, reset=True).applied_to(current) == FaultConfig(seed=3)
    assert [faults.Reconfigure(c, reset=r).reseeds for c, r in [({}, False), ({"seed": 0}, False), ({}, True)]] == [
        False, True, True,
    ]
