"""The saga events inventory_svc consumes, applied batch-wise in stream order against in-memory stock.

Each event acts for its merchant (`event.merchant_id`): it finds that merchant's reservation and moves that
merchant's stock only. An event naming another merchant's order finds nothing, as for an unseen order."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from inventory_svc.domain import InvalidTransition, Line, Product, Reservation, reserve, tombstone
from inventory_svc.messages import outbound
from inventory_svc.store import InventoryRepository, ProductKey, ReservationKey
from paymesh.chassis.consumer import ConsumerSpec
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.events import InboundEvent, OutboundEvent
from paymesh.chassis.service import Runtime
from paymesh.order.v1 import events_pb2 as order_events
from paymesh.payment.v1 import events_pb2 as payment_events

log = logging.getLogger(__name__)


ORDER_EVENTS = (order_events.OrderPlaced, order_events.OrderCancelled)
PAYMENT_EVENTS = (payment_events.PaymentSucceeded, payment_events.PaymentFailed)


def reservation_key(event: InboundEvent) -> ReservationKey:
    return event.merchant_id, event.order_id


@dataclass
class Batch:
    """The rows a batch touches, loaded once, changed in memory, written back once."""

    products: dict[ProductKey, Product]
    reservations: dict[ReservationKey, Reservation]
    outgoing: list[OutboundEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._products_before = {key: copy.copy(p) for key, p in self.products.items()}
        self._reservations_before = {key: copy.copy(r) for key, r in self.reservations.items()}
        # Each merchant's products by sku, the same objects: what the domain moves for that merchant's orders.
        self._shelves: dict[str, dict[str, Product]] = {}
        for (merchant_id, sku), product in self.products.items():
            self._shelves.setdefault(merchant_id, {})[sku] = product

    def shelf(self, merchant_id: str) -> dict[str, Product]:
        return self._shelves.get(merchant_id, {})

    def emit(self, reservation: Reservation, cause: InboundEvent) -> None:
        """Turn what the reservation recorded into outbox events, traced to the event that caused them."""
        for event in reservation.pull_events():
            self.outgoing.append(outbound(event, cause.traceparent))

    async def write(self, uow: UnitOfWork, inventory: InventoryRepository) -> None:
        """Write back what changed: the products, the new reservations and the changed ones."""
        now = datetime.now(UTC)
        before_p, before_r = self._products_before, self._reservations_before
        changed = [p for key, p in self.products.items() if p != before_p[key]]
        new = [r for key, r in self.reservations.items() if key not in before_r]
        updated = [r for key, r in self.reservations.items() if key in before_r and r != before_r[key]]
        await inventory.save_products(uow.conn, changed, now)
        await inventory.add_reservations(uow.conn, new, now)
        await inventory.save_reservations(uow.conn, updated, now)


class SagaHandlers:
    """Batch handlers for the ORDER and PAYMENT streams; the chassis commits them with the inbox."""

    def __init__(self, runtime: Runtime, inventory: InventoryRepository) -> None:
        self.runtime = runtime
        self.inventory = inventory

    async def _load(self, uow: UnitOfWork, events: list[InboundEvent], wanted: set[ProductKey]) -> Batch:
        """The events' reservations, and the stock they hold plus `wanted`, each by its own merchant."""
        reservations = await self.inventory.lock_reservations(uow.conn, {reservation_key(e) for e in events})
        held = {(r.merchant_id, line.sku) for r in reservations.values() for line in r.lines}
        return Batch(await self.inventory.lock_products(uow.conn, wanted | held), reservations)

    async def on_order_events(self, uow: UnitOfWork, events: list[InboundEvent]) -> None:
        # A filter, not a dispatch: the skus an order.placed asks for, of its own merchant, locked with the rest.
        asked = {
            (e.merchant_id, item.sku)
            for e in events
            if isinstance(e.message, order_events.OrderPlaced)
            for item in e.message.items
        }
        batch = await self._load(uow, events, asked)
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
        key = reservation_key(event)
        existing = batch.reservations.get(key)
        if existing is not None:
            # A duplicate, or order.placed arriving after the order was cancelled (tombstone).
            log.info("order.placed %s ignored: reservation is %s", event.order_id, existing.status.value)
            return
        lines = [Line(item.sku, item.quantity) for item in placed.items]
        reservation = reserve(event.merchant_id, event.order_id, lines, batch.shelf(event.merchant_id))
        batch.reservations[key] = reservation
        batch.emit(reservation, event)

    def _cancel(self, batch: Batch, event: InboundEvent) -> None:
        key = reservation_key(event)
        reservation = batch.reservations.get(key)
        if reservation is None:
            reservation = tombstone(event.merchant_id, event.order_id)
            batch.reservations[key] = reservation
        else:
            try:
                reservation.cancel(batch.shelf(event.merchant_id))
            except InvalidTransition as exc:
                log.info("order.cancelled %s ignored: %s", event.order_id, exc)
                return
        batch.emit(reservation, event)

    async def on_payment_events(self, uow: UnitOfWork, events: list[InboundEvent]) -> None:
        batch = await self._load(uow, events, set())
        for event in events:
            reservation = batch.reservations.get(reservation_key(event))
            if reservation is None:
                log.info("%s for %s ignored: no reservation of merchant %s", event.type, event.order_id,
                         event.merchant_id)
                continue
            shelf = batch.shelf(event.merchant_id)
            try:
                match event.message:
                    case payment_events.PaymentSucceeded():
                        reservation.commit(shelf)
                    case payment_events.PaymentFailed():
                        reservation.release(shelf)
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
