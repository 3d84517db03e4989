"""The saga events inventory_svc consumes, applied batch-wise in stream order against in-memory stock."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from inventory_svc.domain import InvalidTransition, Line, Product, Reservation, reserve, tombstone
from inventory_svc.messages import outbound
from inventory_svc.store import InventoryRepository
from paymesh.chassis.consumer import ConsumerSpec
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.events import InboundEvent, OutboundEvent
from paymesh.chassis.service import Runtime
from paymesh.order.v1 import events_pb2 as order_events
from paymesh.payment.v1 import events_pb2 as payment_events

log = logging.getLogger(__name__)


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
        for event in reservation.pull_events():
            self.outgoing.append(outbound(event, cause.traceparent))

    async def write(self, uow: UnitOfWork, inventory: InventoryRepository) -> None:
        """Write back what changed: the products, the new reservations and the changed ones."""
        now = datetime.now(UTC)
        before_p, before_r = self._products_before, self._reservations_before
        changed = [p for sku, p in self.products.items() if p != before_p[sku]]
        new = [r for oid, r in self.reservations.items() if oid not in before_r]
        updated = [r for oid, r in self.reservations.items() if oid in before_r and r != before_r[oid]]
        await inventory.save_products(uow.conn, changed, now)
        await inventory.add_reservations(uow.conn, new, now)
        await inventory.save_reservations(uow.conn, updated, now)


class SagaHandlers:
    """Batch handlers for the ORDER and PAYMENT streams; the chassis commits them with the inbox."""

    def __init__(self, runtime: Runtime, inventory: InventoryRepository) -> None:
        self.runtime = runtime
        self.inventory = inventory

    async def on_order_events(self, uow: UnitOfWork, events: list[InboundEvent]) -> None:
        reservations = await self.inventory.lock_reservations(uow.conn, {e.order_id for e in events})
        skus = {line.sku for r in reservations.values() for line in r.lines}
        # A filter, not a dispatch: the skus an order.placed asks for, locked with the rest.
        skus.update(
            item.sku for e in events if isinstance(e.message, order_events.OrderPlaced) for item in e.message.items
        )
        batch = Batch(await self.inventory.lock_products(uow.conn, skus), reservations)
        for event in events:
            match event.message:
                case order_events.OrderPlaced() as placed:
                    self._place(batch, event, placed)
                case order_events.OrderCancelled():
                    self._cancel(batch, event)
                case _:
                    raise TypeError(f"inventory_svc-order does not consume {event.type}")
        await batch.write(uow, self.inventory)
        await self.runtime.publish(uow, batch.outgoing)

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
        reservations = await self.inventory.lock_reservations(uow.conn, {e.order_id for e in events})
        skus = {line.sku for r in reservations.values() for line in r.lines}
        batch = Batch(await self.inventory.lock_products(uow.conn, skus), reservations)
        for event in events:
            reservation = batch.reservations.get(event.order_id)
            if reservation is None:
                log.info("%s for %s ignored: no reservation", event.type, event.order_id)
                continue
            try:
                match event.message:
                    case payment_events.PaymentSucceeded():
                        reservation.commit(batch.products)
                    case payment_events.PaymentFailed():
                        reservation.release(batch.products)
                    case _:
                        raise TypeError(f"inventory_svc-payment does not consume {event.type}")
            except InvalidTransition as exc:
                log.info("%s for %s ignored: %s", event.type, event.order_id, exc)
                continue
            batch.emit(reservation, event)
        await batch.write(uow, self.inventory)
        await self.runtime.publish(uow, batch.outgoing)

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
