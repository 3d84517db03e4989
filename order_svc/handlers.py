"""The saga's answers to an order: inventory's and payment's events, applied a batch at a time."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from order_svc.domain import InvalidTransition, Order
from order_svc.messages import outbox_rows
from order_svc.store import OrderKey, OrderRepository
from order_svc.watch import OrderWatch, Snapshot
from paymesh.chassis.consumer import ConsumerSpec
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.events import InboundEvent, OutboundEvent
from paymesh.chassis.service import Runtime
from paymesh.inventory.v1.events_pb2 import InventoryRejected, InventoryReleased, InventoryReserved
from paymesh.payment.v1.events_pb2 import (
    PaymentFailed,
    PaymentRefunded,
    PaymentRefundFailed,
    PaymentSucceeded,
    PaymentVoided,
)

log = logging.getLogger(__name__)


def apply_answer(order: Order, event: InboundEvent, now: datetime) -> bool:
    """One answer applied to the order in memory; False when it changes nothing (a duplicate).

    Raises InvalidTransition when the order's status does not take this answer: a late
    answer, e.g. a payment that succeeded after a cancel (payment_svc refunds it itself).
    """
    match message := event.message:
        case InventoryReserved():
            order.reserve(now)
        case InventoryRejected():
            order.reject(message.reason or "REJECTED", now)
        case InventoryReleased():
            return order.inventory_released(message.cause, now)
        case PaymentSucceeded():
            order.pay(message.payment_id, now)
        case PaymentFailed():
            order.fail_payment(message.payment_id, message.failure_code, now)
        case PaymentVoided() | PaymentRefunded():
            return order.payment_returned(message.payment_id, message.cause, now)
        case PaymentRefundFailed():
            return order.refund_failure(message.payment_id, message.failure_code, message.cause, now)
        case _:
            raise TypeError(f"order_svc does not consume {type(message).__name__}")
    return True


def key_of(event: InboundEvent) -> OrderKey:
    """The order an answer is about: its merchant's (legacy for an event from before merchants), by id."""
    return event.merchant_id, event.order_id


class SagaAnswers:
    """The batch handler of both consumers: one locked read, transitions in stream order, one write."""

    def __init__(self, runtime: Runtime, orders: OrderRepository, watch: OrderWatch) -> None:
        self.runtime = runtime
        self.orders = orders
        self.watch = watch

    async def apply(self, uow: UnitOfWork, events: list[InboundEvent]) -> None:
        """Each event acts on the order it names of the merchant it names; one that names another
        merchant's order finds none, as for an unknown order."""
        now = datetime.now(UTC)
        orders = await self.orders.lock(uow.conn, (key_of(e) for e in events))
        changed: dict[OrderKey, Order] = {}
        outgoing: list[OutboundEvent] = []
        states: list[Snapshot | None] = []
        for event in events:
            order = orders.get(key_of(event))
            if order is None:
                # Answers follow order.placed, which commits after its order: not one of ours, or
                # not of the merchant the event names.
                log.warning(
                    "%s %s for unknown order %r of merchant %r ignored",
                    event.type,
                    event.event_id,
                    event.order_id,
                    event.merchant_id,
                )
                continue
            try:
                if not apply_answer(order, event, now):
                    continue
            except InvalidTransition as exc:
                log.info("%s %s ignored: %s", event.type, event.event_id, exc)
                continue
            changed[key_of(event)] = order
            outgoing.extend(outbox_rows(uow, self.runtime.metrics, order, event.traceparent))
            states.append(self.watch.snapshot(order))
        await self.orders.save(uow.conn, changed.values())
        await self.runtime.publish(uow, outgoing)
        self.watch.deliver_after_commit(uow, states)

    def consumers(self) -> list[ConsumerSpec]:
        """A durable on each stream that answers: inventory's and payment's, both applied by `apply`."""
        return [
            ConsumerSpec(
                durable="order_svc-inventory",
                stream="INVENTORY",
                filter_subjects=["inventory.reserved.*", "inventory.rejected.*", "inventory.released.*"],
                handler=self.apply,
                events=(InventoryReserved, InventoryRejected, InventoryReleased),
            ),
            ConsumerSpec(
                durable="order_svc-payment",
                stream="PAYMENT",
                filter_subjects=["payment.>"],
                handler=self.apply,
                events=(PaymentSucceeded, PaymentFailed, PaymentRefunded, PaymentVoided, PaymentRefundFailed),
            ),
        ]
