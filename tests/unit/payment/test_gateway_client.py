"""The gateway client's retry policy, pure: which codes are retried, and the backoff between tries."""

from __future__ import annotations

import pytest

from payment_svc.gateway_client import RetryPolicy, is_refusal, is_retryable, may_have_reached
from paymesh.chassis.backoff import Backoff


@pytest.mark.parametrize(
    ("code", "retryable", "reached", "refusal"),
    [
        ("UNAVAILABLE", True, False, False),
        ("RESOURCE_EXHAUSTED", True, False, False),
        ("DEADLINE_EXCEEDED", True, True, False),
        ("INVALID_ARGUMENT", False, False, True),
        ("FAILED_PRECONDITION", False, False, True),
        ("ALREADY_EXISTS", False, False, True),
        ("INTERNAL", False, True, False),
        ("UNKNOWN", False, True, False),
    ],
)
def test_retry_classification(code: str, retryable: bool, reached: bool, refusal: bool) -> None:
    assert (is_retryable(code), may_have_reached(code), is_refusal(code)) == (retryable, reached, refusal)


def test_backoff_is_exponential_jittered_and_bounded() -> None:
    backoff = RetryPolicy(attempts=3, backoff=Backoff(base_s=0.1, cap_s=0.4)).backoff
    assert [backoff.ceiling(n) for n in (1, 2, 3, 4, 10)] == [0.1, 0.2, 0.4, 0.4, 0.4]
    for attempt in range(1, 12):
        lo, hi = backoff.ceiling(attempt) / 2, backoff.ceiling(attempt)
        assert backoff.delay(attempt, lambda a, b: a) == lo
        assert backoff.delay(attempt, lambda a, b: b) == hi
        assert all(lo <= backoff.delay(attempt) <= hi for _ in range(50))
    assert RetryPolicy().worst_case_s() <= 1.0, "the in-process retries of one call stay under a second"
