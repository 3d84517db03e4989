"""Between the domain and the wire: charges, refunds and the fault settings as protobuf. The gateway emits no events."""

from __future__ import annotations

from gateway_mock.domain import Charge, ChargeStatus, Refund
from gateway_mock.faults import FaultConfig
from paymesh.gateway.v1 import gateway_pb2

# Looked up once per charge answered: a dict, not a name built and parsed each time.
_STATUS_TO_PROTO = {
    ChargeStatus.SUCCEEDED: gateway_pb2.CHARGE_STATUS_SUCCEEDED,
    ChargeStatus.DECLINED: gateway_pb2.CHARGE_STATUS_DECLINED,
    ChargeStatus.REFUNDED: gateway_pb2.CHARGE_STATUS_REFUNDED,
    ChargeStatus.PARTIALLY_REFUNDED: gateway_pb2.CHARGE_STATUS_PARTIALLY_REFUNDED,
}
_STATUS_FROM_PROTO: dict[int, ChargeStatus] = {number: status for status, number in _STATUS_TO_PROTO.items()}


def status_from_proto(value: int) -> ChargeStatus | None:
    """None for CHARGE_STATUS_UNSPECIFIED ("any status" in a filter) and for a number the enum does not have."""
    return _STATUS_FROM_PROTO.get(value)


def charge_to_proto(charge: Charge) -> gateway_pb2.Charge:
    msg = gateway_pb2.Charge(
        charge_id=charge.charge_id,
        idempotency_key=charge.idempotency_key,
        amount_minor=charge.amount_minor,
        refunded_minor=charge.refunded_minor,
        currency=charge.currency,
        status=_STATUS_TO_PROTO[charge.status],
        decline_code=charge.decline_code,
        order_id=charge.order_id,
        description=charge.description,
        card_last4=charge.card_last4,
        merchant_id=charge.merchant_id,
    )
    msg.create_time.FromDatetime(charge.create_time)
    msg.update_time.FromDatetime(charge.update_time)
    return msg


def refund_to_proto(refund: Refund) -> gateway_pb2.Refund:
    msg = gateway_pb2.Refund(
        refund_id=refund.refund_id,
        charge_id=refund.charge_id,
        idempotency_key=refund.idempotency_key,
        amount_minor=refund.amount_minor,
        currency=refund.currency,
        reason=refund.reason,
        merchant_id=refund.merchant_id,
    )
    msg.create_time.FromDatetime(refund.create_time)
    return msg


def config_to_proto(config: FaultConfig) -> gateway_pb2.FaultConfig:
    return gateway_pb2.FaultConfig(
        latency_ms=config.latency_ms,
        decline_rate=config.decline_rate,
        transient_error_rate=config.transient_error_rate,
        lost_response_rate=config.lost_response_rate,
        seed=config.seed,
    )
