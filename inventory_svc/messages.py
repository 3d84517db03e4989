"""Between the domain and the wire: products and reservations as protobuf, and domain events as outbox rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from inventory_svc.domain import (
    Committed,
    Event,
    Line,
    Product,
    Rejected,
    Released,
    Reservation,
    ReservationStatus,
    Reserved,
)
from inventory_svc.store import Stored
from paymesh.chassis.events import OutboundEvent, new_event_id, now_timestamp, subject, to_timestamp
from paymesh.inventory.v1 import events_pb2, inventory_pb2

_STATUS = {
    ReservationStatus.RESERVED: inventory_pb2.RESERVATION_STATUS_RESERVED,
    ReservationStatus.REJECTED: inventory_pb2.RESERVATION_STATUS_REJECTED,
    ReservationStatus.COMMITTED: inventory_pb2.RESERVATION_STATUS_COMMITTED,
    ReservationStatus.RELEASED: inventory_pb2.RESERVATION_STATUS_RELEASED,
    # The proto has no tombstone status: an order cancelled before it was seen held nothing.
    ReservationStatus.CANCELLED: inventory_pb2.RESERVATION_STATUS_RELEASED,
}


def _lines(lines: Sequence[Line]) -> list[inventory_pb2.ReservationLine]:
    return [inventory_pb2.ReservationLine(sku=line.sku, quantity=line.quantity) for line in lines]


def product_to_proto(stored: Stored[Product]) -> inventory_pb2.Product:
    product = stored.value
    return inventory_pb2.Product(
        merchant_id=product.merchant_id,
        sku=product.sku,
        name=product.name,
        available=product.available,
        reserved=product.reserved,
        sold=product.sold,
        create_time=to_timestamp(stored.create_time),
        update_time=to_timestamp(stored.update_time),
    )


def reservation_to_proto(stored: Stored[Reservation]) -> inventory_pb2.Reservation:
    reservation = stored.value
    return inventory_pb2.Reservation(
        merchant_id=reservation.merchant_id,
        order_id=reservation.order_id,
        lines=_lines(reservation.lines),
        status=_STATUS[reservation.status],
        reason=reservation.reason,
        sku=reservation.sku,
        create_time=to_timestamp(stored.create_time),
        update_time=to_timestamp(stored.update_time),
        cancelled=reservation.cancel_answered,
    )


class _Common(TypedDict):
    """The fields every inventory event carries."""

    event_id: str
    merchant_id: str
    order_id: str
    occurred_at: Timestamp


def outbound(event: Event, traceparent: str | None) -> OutboundEvent:
    """The protobuf message, subject and headers (Paymesh-Merchant among them) of a domain event, in a span
    under `traceparent`."""
    common: _Common = {
        "event_id": new_event_id(),
        "merchant_id": event.merchant_id,
        "order_id": event.order_id,
        "occurred_at": now_timestamp(),
    }
    message: Message
    match event:
        case Reserved():
            name, message = "reserved", events_pb2.InventoryReserved(**common, lines=_lines(event.lines))
        case Rejected():
            name, message = "rejected", events_pb2.InventoryRejected(
                **common, reason=event.reason, sku=event.sku, requested=event.requested, available=event.available
            )
        case Committed():
            name, message = "committed", events_pb2.InventoryCommitted(**common, lines=_lines(event.lines))
        case Released():
            name, message = "released", events_pb2.InventoryReleased(
                **common, lines=_lines(event.lines), held=event.held, cause=event.cause
            )
    return OutboundEvent.of(subject("inventory", name, event.order_id), message, traceparent)
