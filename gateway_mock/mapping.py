"""Proto to domain and back: each request validated (every violation at once) into a command; results to replies."""

from __future__ import annotations

from typing import Any

from gateway_mock.domain import (
    TEST_CARDS,
    Charge,
    ChargeCommand,
    ChargeQuery,
    ChargeStatus,
    Refund,
    RefundCommand,
)
from gateway_mock.faults import FaultConfig
from gateway_mock.store import TEXT_LEN
from paymesh.chassis import money, validation
from paymesh.chassis.validation import Violations
from paymesh.gateway.v1 import gateway_pb2, gateway_service_pb2

_STATUS_PREFIX = "CHARGE_STATUS_"
_STATUS_NUMBERS = set(gateway_pb2.ChargeStatus.values())
_CONFIG_FIELDS = ("latency_ms", "decline_rate", "transient_error_rate", "lost_response_rate", "seed")


def _key(v: Violations, value: str) -> None:
    v.identifier("idempotency_key", value)


def _text(v: Violations, field: str, value: str) -> None:
    v.check(len(value) <= TEXT_LEN, field, f"must be at most {TEXT_LEN} characters, got {len(value)}")


def charge_command(request: gateway_service_pb2.ChargeRequest) -> ChargeCommand:
    v = Violations()
    _key(v, request.idempotency_key)
    v.check(request.amount_minor > 0, "amount_minor", f"must be greater than 0, got {request.amount_minor}")
    v.check(
        money.is_currency(request.currency),
        "currency",
        f"must be an ISO 4217 currency code such as USD, got {request.currency!r}",
    )
    token = request.payment_method_token
    if v.check(bool(token), "payment_method_token", "is required, e.g. tok_visa"):
        v.check(
            token in TEST_CARDS,
            "payment_method_token",
            f"unknown token {token[:80]!r}; use one of {', '.join(TEST_CARDS)}",
        )
    v.identifier("order_id", request.order_id, required=False)
    _text(v, "description", request.description)
    v.raise_if_any()
    return ChargeCommand(
        idempotency_key=request.idempotency_key,
        amount_minor=request.amount_minor,
        currency=request.currency,
        token=token,
        order_id=request.order_id,
        description=request.description,
    )


def refund_command(request: gateway_service_pb2.RefundRequest) -> RefundCommand:
    v = Violations()
    _key(v, request.idempotency_key)
    v.identifier("charge_id", request.charge_id)
    v.check(
        request.amount_minor >= 0,
        "amount_minor",
        f"must be 0 (all that is left) or positive, got {request.amount_minor}",
    )
    _text(v, "reason", request.reason)
    v.raise_if_any()
    return RefundCommand(
        idempotency_key=request.idempotency_key,
        charge_id=request.charge_id,
        amount_minor=request.amount_minor,
        reason=request.reason,
    )


def charge_lookup(request: gateway_service_pb2.GetChargeRequest) -> dict[str, str]:
    """{"charge_id": ...} or {"idempotency_key": ...}."""
    v = Violations()
    which = request.WhichOneof("lookup")
    value = getattr(request, which) if which else ""
    if not value:
        v.add("charge_id", "charge_id or idempotency_key is required")
    else:
        v.identifier(which, value)  # type: ignore[arg-type]
    v.raise_if_any()
    return {which: value}  # type: ignore[dict-item]


def charge_query(request: gateway_service_pb2.ListChargesRequest) -> ChargeQuery:
    v = Violations()
    size = validation.page_size(v, request.page_size)
    v.identifier("order_id", request.order_id, required=False)
    status = None
    if request.status != gateway_pb2.CHARGE_STATUS_UNSPECIFIED:
        name = gateway_pb2.ChargeStatus.Name(request.status) if request.status in _STATUS_NUMBERS else ""
        if v.check(bool(name), "status", f"is not a ChargeStatus, got {request.status}"):
            status = ChargeStatus(name.removeprefix(_STATUS_PREFIX))
    filters = _filters(request)
    cursor = validation.decode_page_token(v, request.page_token)
    before_seq = None
    if cursor is not None:
        before_seq = cursor.get("before")
        if cursor.get("filters") != filters or not isinstance(before_seq, int):
            v.add("page_token", "was returned for other filters; send the same order_id and status, or omit it")
    v.raise_if_any()
    return ChargeQuery(page_size=size, before_seq=before_seq, order_id=request.order_id, status=status)


def _filters(request: gateway_service_pb2.ListChargesRequest) -> dict[str, Any]:
    return {"order_id": request.order_id, "status": int(request.status)}


def next_page_token(request: gateway_service_pb2.ListChargesRequest, next_seq: int | None) -> str:
    if next_seq is None:
        return ""
    return validation.encode_page_token({"before": next_seq, "filters": _filters(request)})


def fault_changes(request: gateway_service_pb2.ConfigureRequest) -> dict[str, object]:
    """The settings the request sets (unset fields keep their value), validated."""
    changes = {name: getattr(request, name) for name in _CONFIG_FIELDS if request.HasField(name)}
    problems = FaultConfig(**changes).problems()  # type: ignore[arg-type]
    if problems:
        v = Violations()
        for field, why in problems:
            v.add(field, why)
        v.raise_if_any()
    return changes


# domain -> proto


def charge_pb(charge: Charge) -> gateway_pb2.Charge:
    msg = gateway_pb2.Charge(
        charge_id=charge.charge_id,
        idempotency_key=charge.idempotency_key,
        amount_minor=charge.amount_minor,
        refunded_minor=charge.refunded_minor,
        currency=charge.currency,
        status=gateway_pb2.ChargeStatus.Value(_STATUS_PREFIX + charge.status.value),
        decline_code=charge.decline_code,
        order_id=charge.order_id,
        description=charge.description,
        card_last4=charge.card_last4,
    )
    msg.create_time.FromDatetime(charge.create_time)
    msg.update_time.FromDatetime(charge.update_time)
    return msg


def refund_pb(refund: Refund) -> gateway_pb2.Refund:
    msg = gateway_pb2.Refund(
        refund_id=refund.refund_id,
        charge_id=refund.charge_id,
        idempotency_key=refund.idempotency_key,
        amount_minor=refund.amount_minor,
        currency=refund.currency,
        reason=refund.reason,
    )
    msg.create_time.FromDatetime(refund.create_time)
    return msg


def config_pb(config: FaultConfig) -> gateway_pb2.FaultConfig:
    return gateway_pb2.FaultConfig(
        latency_ms=config.latency_ms,
        decline_rate=config.decline_rate,
        transient_error_rate=config.transient_error_rate,
        lost_response_rate=config.lost_response_rate,
        seed=config.seed,
    )
