"""The events payment_svc consumes: order.placed / order.cancelled, and inventory.reserved (the charge)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

from payment_svc.domain import InvalidTransition, Payment, Status
from payment_svc.gateway_client import GatewayClient, Kind, Outcome
from payment_svc.ledger import Ledger, utcnow
from payment_svc.messages import outbound
from payment_svc.store import OrderKey, PaymentRepository
from paymesh.chassis import tracing
from paymesh.chassis.backoff import Backoff
from paymesh.chassis.consumer import ConsumerSpec, RetryLater
from paymesh.chassis.db import UnitOfWork, lock_pairs
from paymesh.chassis.events import InboundEvent, OutboundEvent
from paymesh.chassis.service import Runtime
from paymesh.inventory.v1 import events_pb2 as inventory_events
from paymesh.order.v1 import events_pb2 as order_events

log = logging.getLogger(__name__)

CHARGE = "charge"  # key of a prepared gateway outcome in InboundEvent.context


def new_payment_id() -> str:
    return f"pay_{uuid.uuid4().hex}"


def order_key(event: InboundEvent) -> OrderKey:
    """How an event names its payment: the order, under the event's merchant. Another merchant's event
    naming the same order id finds nothing, as an event for an unknown order."""
    return event.merchant_id, event.order_id


class SagaHandlers:
    """The consumers' handlers and the charge's prepare step."""

    def __init__(
        self,
        runtime: Runtime,
        repository: PaymentRepository,
        gateway: GatewayClient,
        ledger: Ledger,
        *,
        redelivery: Backoff,
        concurrency: int = 32,
    ) -> None:
        self.runtime = runtime
        self.repository = repository
        self.gateway = gateway
        self.ledger = ledger
        self.redelivery = redelivery
        self.concurrency = concurrency

    def consumers(self) -> list[ConsumerSpec]:
        return [
            ConsumerSpec(
                durable="payment_svc-order",
                stream="ORDER",
                filter_subjects=["order.placed.*", "order.cancelled.*"],
                handler=self.apply_order_events,
                events=(order_events.OrderPlaced, order_events.OrderCancelled),
            ),
            ConsumerSpec(
                durable="payment_svc-inventory",
                stream="INVENTORY",
                filter_subjects=["inventory.reserved.*"],
                handler=self.apply_reservations,
                events=(inventory_events.InventoryReserved,),
                prepare=self.charge,
                # A charge the gateway has not answered is asked again through redelivery,
                # for as long as it takes: never dead-letter it as a crash loop too early.
                crash_loop_deliveries=1000,
                # Gateway calls for a whole batch run before the transaction; a delivery lost
                # with a crashed process comes back after this, and the same key is asked again.
                ack_wait_s=15.0,
            ),
        ]

    # -- ORDER stream -----------------------------------------------------------------

    async def apply_order_events(self, uow: UnitOfWork, events: list[InboundEvent]) -> None:
        now = utcnow()
        keys = [order_key(e) for e in events]
        # The only batch that creates payments (placed, or a cancel's tombstone): the keys are locked first, so
        # another replica creating the same order's payment is waited for and then read, not written beside.
        await lock_pairs(uow.conn, "payments", keys)
        payments = await self.repository.by_orders(uow.conn, keys)
        out: list[OutboundEvent] = []
        for event in events:
            key = order_key(event)
            payment = payments.get(key)
            match event.message:
                case order_events.OrderPlaced() as placed:
                    if payment is not None:
                        log.info("order.placed for %s of %s: payment exists (%s); ignored", event.order_id,
                                 event.merchant_id, payment.status)
                        continue
                    payment = self._place(event.merchant_id, placed, now)
                case order_events.OrderCancelled() as cancelled:
                    if payment is None:
                        payment = Payment.tombstone(event.merchant_id, new_payment_id(), event.order_id, now)
                    else:
                        payment.cancel(cancelled.reason or ("saga timed out" if cancelled.timed_out else "cancelled"))
                case _:
                    raise TypeError(f"payment_svc-order does not consume {type(event.message).__name__}")
            payments[key] = payment
            out.extend(outbound(payment, e, event.traceparent) for e in payment.pull_events())
        await self.ledger.record(uow, payments.values(), out, now)

    def _place(self, merchant_id: str, placed: order_events.OrderPlaced, now: datetime) -> Payment:
        if placed.HasField("deadline"):
            deadline = placed.deadline.ToDatetime(tzinfo=UTC)
        else:
            deadline = now + timedelta(seconds=self.runtime.settings.saga_timeout_s)
        return Payment.place(
            merchant_id,
            new_payment_id(),
            placed.order_id,
            placed.amount_minor,
            placed.currency,
            placed.payment_method_token,
            deadline,
            now,
        )

    # -- INVENTORY stream: the charge ---------------------------------------------------

    async def charge(self, events: list[InboundEvent]) -> None:
        """Prepare step: mark PROCESSING and commit, then call the gateway outside any transaction."""
        todo = [e for e in events if CHARGE not in e.context]
        if not todo:
            return  # outcomes kept from an earlier try of this same delivery
        calls: dict[OrderKey, Payment] = {}
        async with self.runtime.db.unit_of_work() as uow:
            payments = await self.repository.by_orders(uow.conn, (order_key(e) for e in todo))
            for key, payment in payments.items():
                if payment.status in (Status.PENDING, Status.PROCESSING):
                    payment.start_charge()
                    calls[key] = payment
            await self.ledger.record(uow, calls.values(), [], utcnow())
            await uow.commit()
        if not calls:
            return

        limit = asyncio.Semaphore(self.concurrency)
        # Each charge is made in the span of the event that asked for it.
        traces = {order_key(e): e.traceparent for e in todo}

        async def call(p: Payment) -> Outcome:
            async with limit:
                tracing.enter(traces.get((p.merchant_id, p.order_id)))  # this call's own task: nothing to undo
                return await self.gateway.charge(p.idempotency_key, p.amount_minor, p.currency,
                                                 p.payment_method_token, p.order_id, merchant_id=p.merchant_id)

        results = await asyncio.gather(*(call(p) for p in calls.values()))
        outcomes = dict(zip(calls, results, strict=True))
        for event in todo:
            if order_key(event) in outcomes:
                event.context[CHARGE] = outcomes[order_key(event)]
        unresolved = {key: o for key, o in outcomes.items() if not o.resolved}
        if unresolved:
            await self._close_unresolved(unresolved)

    async def _close_unresolved(self, outcomes: dict[OrderKey, Outcome]) -> None:
        """Committed on its own: the handler's transaction is rolled back when it asks for redelivery."""
        async with self.runtime.db.unit_of_work() as uow:
            payments = await self.repository.by_orders(uow.conn, outcomes)
            for key, payment in payments.items():
                outcome = outcomes[key]
                try:
                    payment.charge_unresolved(outcome.may_have_reached, outcome.detail)
                except InvalidTransition:
                    continue  # resolved meanwhile by another delivery
            await self.ledger.record(uow, payments.values(), [], utcnow())
            await uow.commit()

    async def apply_reservations(self, uow: UnitOfWork, events: list[InboundEvent]) -> None:
        """Records the prepared outcomes: SUCCEEDED, FAILED (declined, or given up), or redelivery later."""
        now = utcnow()
        payments = await self.repository.by_orders(uow.conn, (order_key(e) for e in events))
        out: list[OutboundEvent] = []
        for event in events:
            payment = payments.get(order_key(event))
            if payment is None:
                raise RetryLater(f"no payment for {event.order_id} of {event.merchant_id} yet (order.placed not seen)",
                                 self.redelivery.delay(event.num_delivered))
            outcome: Outcome | None = event.context.get(CHARGE)
            if payment.status not in (Status.PENDING, Status.PROCESSING):
                log.info("inventory.reserved for %s of %s: payment is %s; ignored", event.order_id,
                         event.merchant_id, payment.status)
                continue
            if outcome is None:
                raise RetryLater(f"payment of {event.order_id} became chargeable meanwhile",
                                 self.redelivery.delay(event.num_delivered))
            try:
                self._settle(payment, outcome, now, event.num_delivered)
            except InvalidTransition as exc:
                log.info("inventory.reserved for %s: %s; ignored", event.order_id, exc)
                continue
            out.extend(outbound(payment, e, event.traceparent) for e in payment.pull_events())
        await self.ledger.record(uow, payments.values(), out, now)

    def _settle(self, payment: Payment, outcome: Outcome, now: datetime, deliveries: int) -> None:
        if outcome.kind is Kind.APPROVED:
            payment.charge_succeeded(outcome.id)
        elif outcome.kind is Kind.DECLINED:
            payment.charge_declined(outcome.code, outcome.detail)
        elif payment.can_give_up(now):
            payment.give_up(now)
        else:
            why = "the gateway may have charged; asking again with the same key" if payment.may_have_charged \
                else "the gateway is unreachable"
            raise RetryLater(f"payment {payment.payment_id}: {why} ({outcome.detail})",
                             self.redelivery.delay(deliveries))

