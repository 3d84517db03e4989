"""The gateway client's retry policy, pure: which codes are retried, and the backoff between tries."""

from __future__ import annotations

import pytest

from payment_svc.gateway_client import RetryPolicy, is_auth_failure, is_refusal, is_retryable, may_have_reached
from paymesh.chassis.backoff import Backoff


@pytest.mark.parametrize(
    ("code", "retryable", "reached", "refusal", "auth"),
    [
        ("UNAVAILABLE", True, False, False, False),
        ("RESOURCE_EXHAUSTED", True, False, False, False),
        ("DEADLINE_EXCEEDED", True, True, False, False),
        ("INVALID_ARGUMENT", False, False, True, False),
        ("FAILED_PRECONDITION", False, False, True, False),
        ("ALREADY_EXISTS", False, False, True, False),
        ("INTERNAL", False, True, False, False),
        ("UNKNOWN", False, True, False, False),
        # The platform key refused: nothing happened, yet neither a decline nor worth an in-process retry.
        ("UNAUTHENTICATED", False, False, False, True),
        ("PERMISSION_DENIED", False, False, False, True),
    ],
)
def test_retry_classification(code: str, retryable: bool, reached: bool, refusal: bool, auth: bool) -> None:
    assert (is_retryable(code), may_have_reached(code), is_refusal(code), is_auth_failure(code)) == (
        retryable, reached, refusal, auth)


def test_backoff_is_exponential_jittered_and_bounded() -> None:
    backoff = RetryPolicy(attempts=3, backoff=Backoff(base_s=0.1, cap_s=0.4)).backoff
    assert [backoff.ceiling(n) for n in (1, 2, 3, 4, 10)] == [0.1, 0.2, 0.4, 0.4, 0.4]
    for attempt in range(1, 12):
        lo, hi = backoff.ceiling(attempt) / 2, backoff.ceiling(attempt)
        assert backoff.delay(attempt, lambda a, b: a) == lo
        assert backoff.delay(attempt, lambda a, b: b) == hi
        assert all(lo <= backoff.delay(attempt) <= hi for _ in range(50))
    assert RetryPolicy().worst_case_s() <= 1.0, "the in-process retries of one call stay under a second"
