"""webhook_svc's domain: the retry schedule with its jitter, what an answer does to an endpoint, secret rolls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from webhook_svc.domain import (
    DEFAULT_SCHEDULE_S,
    EVERY_TYPE,
    Attempt,
    Delivery,
    DeliveryStatus,
    DisabledReason,
    Endpoint,
    FailureReason,
    UnknownEventType,
    event_types,
    jittered,
    parse_schedule,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
FIVE_DAYS = timedelta(days=5)


def endpoint(events: tuple[str, ...] = (EVERY_TYPE,)) -> Endpoint:
    return Endpoint("we_" + "0" * 32, "mer_a", "https://example.com/h", events, "", "whsec_new", T0, T0)


def attempt(n: int, status: int, at: datetime = T0) -> Attempt:
    return Attempt(n, at, status, "" if status else "timed out after 10.0 s", 5)


def test_the_default_schedule_is_the_designs_about_three_days() -> None:
    assert DEFAULT_SCHEDULE_S == (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    assert timedelta(seconds=sum(DEFAULT_SCHEDULE_S)) == timedelta(days=3, hours=3, minutes=35, seconds=5)


def test_each_failure_waits_the_next_delay_jittered_then_the_delivery_fails() -> None:
    d = Delivery.new("evt_1", "we_1", "mer_a", T0)
    schedule = (0.0, 10.0, 100.0)
    d.answered(attempt(1, 500), schedule, draw=0.5)  # the middle of the jitter: the delay itself
    assert (d.status, d.attempts, d.next_attempt_time) == (DeliveryStatus.PENDING, 1, T0 + timedelta(seconds=10))
    d.answered(attempt(2, 0), schedule, draw=0.0)  # no answer counts as a failure; the earliest of the jitter
    assert d.next_attempt_time == T0 + timedelta(seconds=90)
    d.answered(attempt(3, 503), schedule, draw=0.99)
    assert (d.status, d.failure_reason, d.next_attempt_time) == (
        DeliveryStatus.FAILED, FailureReason.ATTEMPTS_EXHAUSTED, None)


@pytest.mark.parametrize(("status", "outcome", "reason"), [
    (200, DeliveryStatus.SUCCEEDED, None),
    (204, DeliveryStatus.SUCCEEDED, None),
    (410, DeliveryStatus.FAILED, FailureReason.ENDPOINT_GONE),
])
def test_a_2xx_delivers_and_a_410_ends_the_delivery(status: int, outcome: DeliveryStatus,
                                                    reason: FailureReason | None) -> None:
    d = Delivery.new("evt_1", "we_1", "mer_a", T0)
    d.answered(attempt(1, status), DEFAULT_SCHEDULE_S, draw=0.5)
    assert (d.status, d.failure_reason, d.next_attempt_time) == (outcome, reason, None)


@pytest.mark.parametrize("status", [301, 302, 400, 404, 429, 500])
def test_anything_else_is_retried(status: int) -> None:
    d = Delivery.new("evt_1", "we_1", "mer_a", T0)
    d.answered(attempt(1, status), DEFAULT_SCHEDULE_S, draw=0.5)
    assert d.status is DeliveryStatus.PENDING and d.next_attempt_time == T0 + timedelta(seconds=5)


def test_jitter_stays_within_a_tenth_either_way() -> None:
    assert jittered(100, 0.0) == pytest.approx(90)
    assert jittered(100, 0.5) == pytest.approx(100)
    assert jittered(100, 0.999999) == pytest.approx(110, abs=1e-3)
    assert jittered(0, 0.7) == 0


def test_a_410_disables_the_endpoint_and_five_days_of_failures_do_too() -> None:
    gone = endpoint()
    assert gone.answered(delivered=False, gone=True, now=T0, disable_after=FIVE_DAYS) is True
    assert gone.disabled_reason is DisabledReason.GONE and not gone.subscribed("order.confirmed")

    failing = endpoint()
    assert failing.answered(False, False, T0, FIVE_DAYS) is False
    assert failing.failing_since == T0
    assert failing.answered(False, False, T0 + FIVE_DAYS - timedelta(seconds=1), FIVE_DAYS) is False
    assert failing.answered(True, False, T0 + FIVE_DAYS - timedelta(seconds=1), FIVE_DAYS) is False
    assert failing.failing_since is None, "a success starts the five days again"
    later = T0 + timedelta(days=10)
    failing.answered(False, False, later, FIVE_DAYS)
    assert failing.answered(False, False, later + FIVE_DAYS, FIVE_DAYS) is True
    assert failing.disabled_reason is DisabledReason.FAILING
    failing.enable(later + FIVE_DAYS)
    assert not failing.disabled and failing.failing_since is None


def test_a_roll_signs_with_both_secrets_for_the_grace_then_the_new_alone() -> None:
    e = endpoint()
    e.roll("whsec_newer", timedelta(hours=1), T0)
    assert e.signing_secrets(T0 + timedelta(minutes=59)) == ["whsec_newer", "whsec_new"]
    assert e.signing_secrets(T0 + timedelta(hours=1)) == ["whsec_newer"]
    e.roll("whsec_newest", timedelta(0), T0)
    assert e.signing_secrets(T0) == ["whsec_newest"]
    assert "whsec" not in repr(e), "no secret in a repr"


def test_subscriptions() -> None:
    assert event_types(["order.confirmed", "payment.refunded", "order.confirmed"]) == (
        "order.confirmed", "payment.refunded")
    assert event_types(["order.confirmed", EVERY_TYPE]) == (EVERY_TYPE,)
    with pytest.raises(UnknownEventType, match="order.shipped"):
        event_types(["order.shipped"])
    e = endpoint(("order.confirmed",))
    assert e.subscribed("order.confirmed") and not e.subscribed("order.cancelled")


@pytest.mark.parametrize("text", ["", "a", "1,,2", "-1", "nan", "5,inf"])
def test_a_bad_schedule_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(text)


def test_a_schedule_parses() -> None:
    assert parse_schedule("0, 0.5,2") == (0.0, 0.5, 2.0)
