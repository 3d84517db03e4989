"""Domain objects to protobuf: saga events for the outbox, payments, audit steps and refunds for replies."""

from __future__ import annotations

from typing import TypedDict, assert_never, cast

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from payment_svc import domain
from payment_svc.domain import AuditEntry, Payment, Status
from paymesh.chassis.events import OutboundEvent, new_event_id, now_timestamp, subject, to_timestamp
from paymesh.payment.v1 import events_pb2, payment_pb2, payment_service_pb2

CAUSE_ORDER_CANCELLED = "ORDER_CANCELLED"
CAUSE_REFUND_REQUESTED = "REFUND_REQUESTED"


class _Common(TypedDict):
    """The fields every saga event carries."""

    event_id: str
    order_id: str
    occurred_at: Timestamp
    merchant_id: str


def outbound(payment: Payment, event: domain.DomainEvent, cause_traceparent: str | None) -> OutboundEvent:
    """The event of `payment` as it goes on the PAYMENT stream, in the trace of the event or call that caused
    it; its merchant in the payload and (OutboundEvent.of) the Paymesh-Merchant header. The refund answers
    carry the payment as it stands after them (what webhook_svc tells the merchant)."""
    common = _Common(
        event_id=new_event_id(), order_id=event.order_id, occurred_at=now_timestamp(), merchant_id=event.merchant_id
    )
    message: Message
    match event:
        case domain.Succeeded():
            name = "succeeded"
            message = events_pb2.PaymentSucceeded(
                **common,
                payment_id=event.payment_id,
                charge_id=event.charge_id,
                amount_minor=event.amount_minor,
                currency=event.currency,
            )
        case domain.Failed():
            name = "failed"
            message = events_pb2.PaymentFailed(
                **common, payment_id=event.payment_id, failure_code=event.failure_code, reason=event.reason
            )
        case domain.Refunded():
            name = "refunded"
            message = events_pb2.PaymentRefunded(
                **common,
                payment_id=event.payment_id,
                amount_minor=event.amount_minor,
                refund_id=event.refund_id,
                currency=event.currency,
                refunded_minor=event.refunded_minor,
                cause=cause_of(event.answers_cancel),
                payment=payment_to_proto(payment),
            )
        case domain.Voided():
            name = "voided"
            message = events_pb2.PaymentVoided(**common, payment_id=event.payment_id, cause=CAUSE_ORDER_CANCELLED)
        case domain.RefundFailed():
            name = "refund_failed"
            message = events_pb2.PaymentRefundFailed(
                **common,
                payment_id=event.payment_id,
                failure_code=event.failure_code,
                reason=event.reason,
                cause=cause_of(event.answers_cancel),
                payment=payment_to_proto(payment),
            )
        case _:
            assert_never(event)
    return OutboundEvent.of(subject("payment", name, event.order_id), message, cause_traceparent)


def cause_of(answers_cancel: bool) -> str:
    return CAUSE_ORDER_CANCELLED if answers_cancel else CAUSE_REFUND_REQUESTED


WIRE_STATUS: dict[Status, payment_pb2.PaymentStatus] = {
    s: cast("payment_pb2.PaymentStatus", payment_pb2.PaymentStatus.Value(f"PAYMENT_STATUS_{s.value}")) for s in Status
}
_STATUS_OF_WIRE = {int(wire): status for status, wire in WIRE_STATUS.items()}


def status_to_proto(status: Status | None) -> payment_pb2.PaymentStatus:
    return payment_pb2.PAYMENT_STATUS_UNSPECIFIED if status is None else WIRE_STATUS[status]


def status_from_proto(value: int) -> Status | None:
    """PAYMENT_STATUS_SUCCEEDED -> Status.SUCCEEDED; None for UNSPECIFIED ("any status" in a filter)."""
    return _STATUS_OF_WIRE.get(value)


def payment_to_proto(p: Payment) -> payment_pb2.Payment:
    return payment_pb2.Payment(
        payment_id=p.payment_id,
        order_id=p.order_id,
        amount_minor=p.amount_minor,
        refunded_minor=p.refunded_minor,
        currency=p.currency,
        status=status_to_proto(p.status),
        charge_id=p.charge_id,
        failure_code=p.failure_code,
        idempotency_key=p.idempotency_key,
        create_time=to_timestamp(p.create_time),
        update_time=to_timestamp(p.update_time),
        cancel_requested=p.cancel_requested,
        charge_outcome_unknown=p.charge_outcome_unknown,
        deadline=to_timestamp(p.deadline),
        merchant_id=p.merchant_id,
    )


def step_to_proto(entry: AuditEntry) -> payment_pb2.PaymentEvent:
    return payment_pb2.PaymentEvent(
        sequence=entry.position,
        payment_id=entry.payment_id,
        type=entry.type,
        from_status=status_to_proto(entry.from_status),
        to_status=status_to_proto(entry.to_status),
        detail=entry.detail,
        create_time=to_timestamp(entry.create_time),
        order_id=entry.order_id,
        amount_minor=entry.amount_minor,
        merchant_id=entry.merchant_id,
    )


def refund_response(payment: Payment, refund_id: str, amount_minor: int) -> payment_service_pb2.RefundPaymentResponse:
    """RefundPayment's answer: the payment after the gateway's answer, and the refund if it was approved."""
    return payment_service_pb2.RefundPaymentResponse(
        payment=payment_to_proto(payment), refund_id=refund_id, amount_minor=amount_minor
    )
