"""Between the domain and the wire: orders as protobuf, and domain events as outbox rows (and as the saga's
metrics once they commit)."""

from __future__ import annotations

from typing import cast

from google.protobuf.message import Message

from order_svc.domain import Cancelled, Confirmed, Event, Line, Order, OrderStatus, Placed, StatusChanged
from paymesh.chassis.db import UnitOfWork, as_utc
from paymesh.chassis.events import OutboundEvent, new_event_id, subject, to_timestamp
from paymesh.chassis.metrics import Metrics
from paymesh.order.v1 import events_pb2, order_pb2

# The wire value of each status, looked up once (the stub types `OrderStatus.Value()` as a plain int).
WIRE_STATUS: dict[OrderStatus, order_pb2.OrderStatus] = {
    s: cast("order_pb2.OrderStatus", order_pb2.OrderStatus.Value(f"ORDER_STATUS_{s.value}")) for s in OrderStatus
}


def status_to_proto(status: OrderStatus) -> order_pb2.OrderStatus:
    return WIRE_STATUS[status]


def status_from_proto(value: int) -> OrderStatus | None:
    """None for ORDER_STATUS_UNSPECIFIED ("any status" in a filter)."""
    if value == order_pb2.ORDER_STATUS_UNSPECIFIED:
        return None
    return OrderStatus(order_pb2.OrderStatus.Name(value).removeprefix("ORDER_STATUS_"))


def line_items(lines: tuple[Line, ...]) -> list[order_pb2.LineItem]:
    return [order_pb2.LineItem(sku=ln.sku, quantity=ln.quantity, unit_price_minor=ln.unit_price_minor) for ln in lines]


def order_to_proto(order: Order) -> order_pb2.Order:
    return order_pb2.Order(
        order_id=order.order_id,
        merchant_id=order.merchant_id,
        customer_id=order.customer_id,
        items=line_items(order.lines),
        currency=order.currency,
        amount_minor=order.amount_minor,
        status=status_to_proto(order.status),
        failure_reason=order.failure_reason,
        payment_id=order.payment_id,
        create_time=to_timestamp(order.create_time),
        update_time=to_timestamp(order.update_time),
        deadline=to_timestamp(order.deadline),
    )


def outbox_rows(uow: UnitOfWork, metrics: Metrics, order: Order, traceparent: str | None) -> list[OutboundEvent]:
    """The order's new domain events as outbox rows; one that settles it (Confirmed, StatusChanged) is counted
    in the saga's metrics once `uow` commits, with the time since the order was placed."""
    events = order.pull_events()
    settled = [e.status if isinstance(e, StatusChanged) else OrderStatus.CONFIRMED
               for e in events if isinstance(e, Confirmed | StatusChanged)]
    if settled:
        seconds = max(0.0, (as_utc(order.update_time) - as_utc(order.create_time)).total_seconds())

        def count() -> None:
            for status in settled:
                metrics.orders_finished.labels(status.value).inc()
                metrics.saga_seconds.labels(status.value).observe(seconds)

        uow.after_commit(count)
    return [outbound(order, e, traceparent) for e in events]


def outbound(order: Order, event: Event, traceparent: str | None) -> OutboundEvent:
    """The outbox row of a domain event; `traceparent` continues the trace of what caused it.

    Every event names the order's merchant (and so carries the Paymesh-Merchant header)."""
    now = to_timestamp(order.update_time)
    message: Message
    match event:
        case Placed():
            name = "placed"
            message = events_pb2.OrderPlaced(
                event_id=new_event_id(),
                order_id=order.order_id,
                occurred_at=now,
                merchant_id=order.merchant_id,
                customer_id=order.customer_id,
                items=line_items(order.lines),
                currency=order.currency,
                amount_minor=order.amount_minor,
                payment_method_token=order.payment_method_token,
                deadline=to_timestamp(order.deadline),
            )
        case Confirmed():
            name = "confirmed"
            message = events_pb2.OrderConfirmed(
                event_id=new_event_id(),
                order_id=order.order_id,
                occurred_at=now,
                merchant_id=order.merchant_id,
                payment_id=event.payment_id,
                order=order_to_proto(order),
            )
        case Cancelled():
            name = "cancelled"
            message = events_pb2.OrderCancelled(
                event_id=new_event_id(),
                order_id=order.order_id,
                occurred_at=now,
                merchant_id=order.merchant_id,
                reason=event.reason,
                timed_out=event.timed_out,
            )
        case StatusChanged():
            name = "status_changed"
            message = events_pb2.OrderStatusChanged(
                event_id=new_event_id(),
                order_id=order.order_id,
                occurred_at=now,
                merchant_id=order.merchant_id,
                order=order_to_proto(order),
            )
        case _:
            raise TypeError(f"no wire form for {event!r}")
    return OutboundEvent.of(subject("order", name, order.order_id), message, traceparent)
