"""api.refusal: every refusal of the gateway's domain has its one gRPC status and ErrorInfo reason."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest

from gateway_mock import domain
from gateway_mock.api import refusal

pytestmark = pytest.mark.timeout(10)

NOW = datetime(2026, 1, 2, tzinfo=UTC)
CMD = domain.ChargeCommand("k-1", 1000, "USD", "tok_visa", "mer_aaaaaaaaaaaaaaaa")
CHARGE = domain.Charge.create("ch_1", CMD, domain.ChargeDecision(domain.ChargeStatus.DECLINED, "card_declined"), NOW)


CASES = [
    (domain.UnknownToken("tok_x"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (domain.IdempotencyKeyReused("charge", "k-1", "ch_1"), grpc.StatusCode.ALREADY_EXISTS,
     "IDEMPOTENCY_KEY_REUSED"),
    (domain.ChargeNotFound(charge_id="ch_1"), grpc.StatusCode.NOT_FOUND, "CHARGE_NOT_FOUND"),
    (domain.InvalidTransition(CHARGE, "refunded"), grpc.StatusCode.FAILED_PRECONDITION, "CHARGE_NOT_REFUNDABLE"),
    (domain.RefundExceedsBalance(CHARGE, 5), grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_BALANCE"),
    (domain.RefundDeclined(CHARGE, "refund_declined"), grpc.StatusCode.FAILED_PRECONDITION, "REFUND_DECLINED"),
    (domain.TransientFailure("k-1", "x"), grpc.StatusCode.UNAVAILABLE, "GATEWAY_UNAVAILABLE"),
    (domain.ResponseLost("k-1", "x"), grpc.StatusCode.DEADLINE_EXCEEDED, "GATEWAY_RESPONSE_LOST"),
]


@pytest.mark.parametrize(("error", "code", "reason"), CASES)
def test_each_refusal_maps_to_its_status(error: domain.DomainError, code: grpc.StatusCode, reason: str) -> None:
    refused = refusal(error)
    assert (refused.code, refused.reason, refused.message) == (code, reason, str(error))


def test_every_domain_error_is_mapped() -> None:
    assert {type(error) for error, _, _ in CASES} == set(domain.DomainError.__subclasses__())
