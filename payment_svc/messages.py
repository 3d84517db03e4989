"""Domain objects to protobuf: saga events for the outbox, payments and audit steps for replies."""

from __future__ import annotations

from google.protobuf.message import Message

from payment_svc import domain
from payment_svc.store import PaymentRow, StepRow
from paymesh.chassis.events import OutboundEvent, child_traceparent, new_event_id, now_timestamp, subject, to_timestamp
from paymesh.payment.v1 import events_pb2, payment_pb2


def outbound(event: domain.DomainEvent, cause_traceparent: str | None) -> OutboundEvent:
    """The event as it goes on the PAYMENT stream, in the trace of the event or call that caused it."""
    common = {"event_id": new_event_id(), "order_id": event.order_id, "occurred_at": now_timestamp()}
    message: Message
    if isinstance(event, domain.Succeeded):
        name = "succeeded"
        message = events_pb2.PaymentSucceeded(
            **common,
            payment_id=event.payment_id,
            charge_id=event.charge_id,
            amount_minor=event.amount_minor,
            currency=event.currency,
        )
    elif isinstance(event, domain.Failed):
        name = "failed"
        message = events_pb2.PaymentFailed(
            **common, payment_id=event.payment_id, failure_code=event.failure_code, reason=event.reason
        )
    elif isinstance(event, domain.Refunded):
        name = "refunded"
        message = events_pb2.PaymentRefunded(
            **common,
            payment_id=event.payment_id,
            amount_minor=event.amount_minor,
            refund_id=event.refund_id,
            currency=event.currency,
            refunded_minor=event.refunded_minor,
            cause=cause_of(event.answers_cancel),
        )
    elif isinstance(event, domain.Voided):
        name = "voided"
        message = events_pb2.PaymentVoided(**common, payment_id=event.payment_id, cause=CAUSE_ORDER_CANCELLED)
    else:
        name = "refund_failed"
        message = events_pb2.PaymentRefundFailed(
            **common,
            payment_id=event.payment_id,
            failure_code=event.failure_code,
            reason=event.reason,
            cause=cause_of(event.answers_cancel),
        )
    return OutboundEvent.of(subject("payment", name, event.order_id), message, child_traceparent(cause_traceparent))


CAUSE_ORDER_CANCELLED = "ORDER_CANCELLED"
CAUSE_REFUND_REQUESTED = "REFUND_REQUESTED"


def cause_of(answers_cancel: bool) -> str:
    return CAUSE_ORDER_CANCELLED if answers_cancel else CAUSE_REFUND_REQUESTED



def status_value(status: str | domain.Status | None) -> int:
    if not status:
        return payment_pb2.PAYMENT_STATUS_UNSPECIFIED
    return payment_pb2.PaymentStatus.Value(f"PAYMENT_STATUS_{status}")


def status_name(value: int) -> str:
    """PAYMENT_STATUS_SUCCEEDED (3) -> "SUCCEEDED"; "" for UNSPECIFIED."""
    if value == payment_pb2.PAYMENT_STATUS_UNSPECIFIED:
        return ""
    return payment_pb2.PaymentStatus.Name(value).removeprefix("PAYMENT_STATUS_")


def payment_message(row: PaymentRow) -> payment_pb2.Payment:
    p = row.payment
    return payment_pb2.Payment(
        payment_id=p.payment_id,
        order_id=p.order_id,
        amount_minor=p.amount_minor,
        refunded_minor=p.refunded_minor,
        currency=p.currency,
        status=status_value(p.status),  # type: ignore[arg-type]
        charge_id=p.charge_id,
        failure_code=p.failure_code,
        idempotency_key=p.idempotency_key,
        create_time=to_timestamp(row.create_time),
        update_time=to_timestamp(row.update_time),
        cancel_requested=p.cancel_requested,
        charge_outcome_unknown=p.charge_outcome_unknown,
        deadline=to_timestamp(p.deadline),
    )


def step_message(row: StepRow) -> payment_pb2.PaymentEvent:
    return payment_pb2.PaymentEvent(
        sequence=row.position,
        payment_id=row.payment_id,
        type=row.type,
        from_status=status_value(row.from_status),  # type: ignore[arg-type]
        to_status=status_value(row.to_status),  # type: ignore[arg-type]
        detail=row.detail,
        create_time=to_timestamp(row.create_time),
        order_id=row.order_id,
        amount_minor=row.amount_minor,
    )
