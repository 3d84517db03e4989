"""The saga events inventory_svc consumes, applied batch-wise in stream order against in-memory stock."""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import Message

from inventory_svc import store
from inventory_svc.domain import (
    Committed,
    Event,
    InvalidTransition,
    Line,
    Product,
    Rejected,
    Released,
    Reservation,
    Reserved,
    reserve,
    tombstone,
)
from paymesh.chassis.consumer import ConsumerSpec
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.events import InboundEvent, OutboundEvent, child_traceparent, new_event_id, now_timestamp, subject
from paymesh.inventory.v1 import events_pb2 as inventory_events
from paymesh.inventory.v1 import inventory_pb2
from paymesh.order.v1 import events_pb2 as order_events
from paymesh.payment.v1 import events_pb2 as payment_events

log = logging.getLogger(__name__)

Publish = Callable[[UnitOfWork, Sequence[OutboundEvent]], Awaitable[None]]


ORDER_EVENTS = (order_events.OrderPlaced, order_events.OrderCancelled)
PAYMENT_EVENTS = (payment_events.PaymentSucceeded, payment_events.PaymentFailed)


@dataclass
class Batch:
    """The rows a batch touches, loaded once, changed in memory, written back once."""

    products: dict[str, Product]
    reservations: dict[str, Reservation]
    outgoing: list[OutboundEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._products_before = {sku: copy.copy(p) for sku, p in self.products.items()}
        self._reservations_before = {oid: copy.copy(r) for oid, r in self.reservations.items()}

    def emit(self, reservation: Reservation, cause: InboundEvent) -> None:
        """Turn what the reservation recorded into outbox events, traced to the event that caused them."""
        for event in reservation.events:
            self.outgoing.append(outbound(event, cause.traceparent))
        reservation.events.clear()

    async def write(self, uow: UnitOfWork, tables: store.Tables, publish: Publish) -> None:
        now = store.utcnow()
        before_p, before_r = self._products_before, self._reservations_before
        changed = [p for sku, p in self.products.items() if p != before_p[sku]]
        new = [r for oid, r in self.reservations.items() if oid not in before_r]
        updated = [r for oid, r in self.reservations.items() if oid in before_r and r != before_r[oid]]
        await store.save_products(uow.conn, tables, changed, now)
        await store.insert_reservations(uow.conn, tables, new, now)
        await store.update_reservations(uow.conn, tables, updated, now)
        await publish(uow, self.outgoing)


class SagaHandlers:
    """Batch handlers for the ORDER and PAYMENT streams; the chassis commits them with the inbox."""

    def __init__(self, tables: store.Tables, publish: Publish) -> None:
        self.tables = tables
        self.publish = publish

    async def on_order_events(self, uow: UnitOfWork, events: list[InboundEvent]) -> None:
        order_ids = {e.order_id for e in events}
        reservations = await store.load_reservations(uow.conn, self.tables, order_ids)
        skus = {item.sku for e in events if isinstance(e.message, order_events.OrderPlaced) for item in e.message.items}
        skus |= {line.sku for r in reservations.values() for line in r.lines}
        batch = Batch(await store.load_products(uow.conn, self.tables, skus), reservations)
        for event in events:
            if isinstance(event.message, order_events.OrderPlaced):
                self._place(batch, event, event.message)
            else:
                self._cancel(batch, event)
        await batch.write(uow, self.tables, self.publish)

    def _place(self, batch: Batch, event: InboundEvent, placed: order_events.OrderPlaced) -> None:
        existing = batch.reservations.get(placed.order_id)
        if existing is not None:
            # A duplicate, or order.placed arriving after the order was cancelled (tombstone).
            log.info("order.placed %s ignored: reservation is %s", placed.order_id, existing.status.value)
            return
        lines = [Line(item.sku, item.quantity) for item in placed.items]
        reservation = reserve(placed.order_id, lines, batch.products)
        batch.reservations[placed.order_id] = reservation
        batch.emit(reservation, event)

    def _cancel(self, batch: Batch, event: InboundEvent) -> None:
        reservation = batch.reservations.get(event.order_id)
        if reservation is None:
            reservation = tombstone(event.order_id)
            batch.reservations[event.order_id] = reservation
        else:
            try:
                reservation.cancel(batch.products)
            except InvalidTransition as exc:
                log.info("order.cancelled %s ignored: %s", event.order_id, exc)
                return
        batch.emit(reservation, event)

    async def on_payment_events(self, uow: UnitOfWork, events: list[InboundEvent]) -> None:
        reservations = await store.load_reservations(uow.conn, self.tables, {e.order_id for e in events})
        skus = {line.sku for r in reservations.values() for line in r.lines}
        batch = Batch(await store.load_products(uow.conn, self.tables, skus), reservations)
        for event in events:
            reservation = batch.reservations.get(event.order_id)
            if reservation is None:
                log.info("%s for %s ignored: no reservation", event.type, event.order_id)
                continue
            try:
                if isinstance(event.message, payment_events.PaymentSucceeded):
                    reservation.commit(batch.products)
                else:
                    reservation.release(batch.products)
            except InvalidTransition as exc:
                log.info("%s for %s ignored: %s", event.type, event.order_id, exc)
                continue
            batch.emit(reservation, event)
        await batch.write(uow, self.tables, self.publish)

    def consumers(self) -> list[ConsumerSpec]:
        return [
            ConsumerSpec(
                durable="inventory_svc-order",
                stream="ORDER",
                filter_subjects=["order.placed.*", "order.cancelled.*"],
                handler=self.on_order_events,
                events=ORDER_EVENTS,
            ),
            ConsumerSpec(
                durable="inventory_svc-payment",
                stream="PAYMENT",
                filter_subjects=["payment.succeeded.*", "payment.failed.*"],
                handler=self.on_payment_events,
                events=PAYMENT_EVENTS,
            ),
        ]


def _lines(lines: Sequence[Line]) -> list[inventory_pb2.ReservationLine]:
    return [inventory_pb2.ReservationLine(sku=line.sku, quantity=line.quantity) for line in lines]


def outbound(event: Event, traceparent: str | None) -> OutboundEvent:
    """The protobuf message, subject and headers of a domain event."""
    common = {"event_id": new_event_id(), "order_id": event.order_id, "occurred_at": now_timestamp()}
    message: Message
    match event:
        case Reserved():
            name, message = "reserved", inventory_events.InventoryReserved(**common, lines=_lines(event.lines))
        case Rejected():
            name, message = "rejected", inventory_events.InventoryRejected(
                **common, reason=event.reason, sku=event.sku, requested=event.requested, available=event.available
            )
        case Committed():
            name, message = "committed", inventory_events.InventoryCommitted(**common, lines=_lines(event.lines))
        case Released():
            name, message = "released", inventory_events.InventoryReleased(
                **common, lines=_lines(event.lines), held=event.held, cause=event.cause
            )
    return OutboundEvent.of(subject("inventory", name, event.order_id), message, child_traceparent(traceparent))
