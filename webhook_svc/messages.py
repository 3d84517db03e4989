"""Saga events to merchant events (type, object and JSON body), and the domain to the WebhookService's protos."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from paymesh.chassis.db import as_utc
from paymesh.chassis.events import InboundEvent, to_timestamp
from paymesh.order.v1 import order_pb2
from paymesh.order.v1.events_pb2 import OrderConfirmed, OrderStatusChanged
from paymesh.payment.v1.events_pb2 import PaymentRefunded, PaymentRefundFailed
from paymesh.webhook.v1 import webhook_pb2
from webhook_svc.domain import Attempt, Delivery, DeliveryStatus, Endpoint, MerchantEvent
from webhook_svc.store import EventCounts

# The final statuses order.status_changed announces, each its webhook's type (CONFIRMED comes as order.confirmed).
ORDER_TYPES: dict[int, str] = {
    order_pb2.ORDER_STATUS_REJECTED: "order.rejected",
    order_pb2.ORDER_STATUS_PAYMENT_FAILED: "order.payment_failed",
    order_pb2.ORDER_STATUS_CANCELLED: "order.cancelled",
    order_pb2.ORDER_STATUS_REQUIRES_REVIEW: "order.requires_review",
}


@dataclass(frozen=True)
class Happened:
    """What a saga event tells a merchant, before it is numbered and written."""

    type: str
    merchant_id: str
    order_id: str
    occurred_at: datetime
    obj: Message  # the order or payment as the gRPC API shows it


def happened(event: InboundEvent) -> Happened | None:
    """The merchant event a saga event makes; None for one a merchant is not told about."""
    message = event.message
    occurred = as_utc(message.occurred_at.ToDatetime())
    match message:
        case OrderConfirmed():
            if not message.HasField("order"):
                return None  # published before order.confirmed carried its order: from before webhook_svc
            return Happened("order.confirmed", event.merchant_id, message.order_id, occurred, message.order)
        case OrderStatusChanged():
            type_ = ORDER_TYPES.get(message.order.status)
            if type_ is None:
                return None
            return Happened(type_, event.merchant_id, message.order_id, occurred, message.order)
        case PaymentRefunded():
            return Happened("payment.refunded", event.merchant_id, message.order_id, occurred, message.payment)
        case PaymentRefundFailed():
            return Happened("payment.refund_failed", event.merchant_id, message.order_id, occurred, message.payment)
        case _:
            raise TypeError(f"webhook_svc does not consume {type(message).__name__}")


def body(event_id: str, what: Happened, sequence: int) -> str:
    """The JSON every delivery of the event POSTs (DESIGN.md, Webhooks), compact and in a fixed key order."""
    return json.dumps(
        {
            "id": event_id,
            "type": what.type,
            "created": to_timestamp(what.occurred_at).ToJsonString(),
            "merchant_id": what.merchant_id,
            "sequence": sequence,
            "data": {"object": json_format.MessageToDict(what.obj)},
        },
        separators=(",", ":"),
    )


def _time(value: datetime | None) -> Timestamp | None:
    return None if value is None else to_timestamp(value)


def endpoint_to_proto(endpoint: Endpoint) -> webhook_pb2.Endpoint:
    """The endpoint as the API shows it: never a secret, only its first characters."""
    return webhook_pb2.Endpoint(
        endpoint_id=endpoint.endpoint_id,
        url=endpoint.url,
        enabled_events=list(endpoint.enabled_events),
        description=endpoint.description,
        disabled=endpoint.disabled,
        disabled_reason="" if endpoint.disabled_reason is None else endpoint.disabled_reason.value,
        create_time=to_timestamp(endpoint.create_time),
        update_time=to_timestamp(endpoint.update_time),
        secret_hint=endpoint.secret[: len("whsec_") + 4],
        previous_secret_expire_time=_time(endpoint.previous_secret_expire_time),
        failing_since=_time(endpoint.failing_since),
    )


def event_to_proto(event: MerchantEvent, counts: EventCounts) -> webhook_pb2.Event:
    return webhook_pb2.Event(
        event_id=event.event_id,
        type=event.type,
        create_time=to_timestamp(event.create_time),
        order_id=event.order_id,
        sequence=event.sequence,
        body=event.body,
        pending_deliveries=counts.pending,
        succeeded_deliveries=counts.succeeded,
        failed_deliveries=counts.failed,
    )


STATUSES = {
    DeliveryStatus.PENDING: webhook_pb2.DELIVERY_STATUS_PENDING,
    DeliveryStatus.SUCCEEDED: webhook_pb2.DELIVERY_STATUS_SUCCEEDED,
    DeliveryStatus.FAILED: webhook_pb2.DELIVERY_STATUS_FAILED,
}


def delivery_to_proto(delivery: Delivery, attempts: list[Attempt]) -> webhook_pb2.Delivery:
    return webhook_pb2.Delivery(
        delivery_id=delivery.delivery_id,
        event_id=delivery.event_id,
        endpoint_id=delivery.endpoint_id,
        status=STATUSES[delivery.status],
        next_attempt_time=_time(delivery.next_attempt_time),
        attempts=[
            webhook_pb2.DeliveryAttempt(
                attempt=a.attempt,
                attempt_time=to_timestamp(a.attempt_time),
                http_status=a.http_status,
                error=a.error,
                latency_ms=a.latency_ms,
            )
            for a in attempts
        ],
        create_time=to_timestamp(delivery.create_time),
        failure_reason="" if delivery.failure_reason is None else delivery.failure_reason.value,
    )
