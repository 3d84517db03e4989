"""The saga's events that merchants are told about, each written once with a pending delivery per endpoint."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from paymesh.chassis.consumer import ConsumerSpec
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.events import InboundEvent
from paymesh.order.v1.events_pb2 import OrderConfirmed, OrderStatusChanged
from paymesh.payment.v1.events_pb2 import PaymentRefunded, PaymentRefundFailed
from webhook_svc.domain import Delivery, MerchantEvent, new_event_id
from webhook_svc.messages import body, happened
from webhook_svc.store import WebhookRepository


class MerchantEvents:
    """The batch handler of both consumers: the batch's merchant events numbered per order, written with one
    pending delivery per enabled endpoint subscribed to the type, in the inbox's transaction."""

    def __init__(self, repo: WebhookRepository, wake_sender: Callable[[], None], schedule: tuple[float, ...]) -> None:
        self.repo = repo
        self.wake_sender = wake_sender
        self.schedule = schedule

    async def apply(self, uow: UnitOfWork, events: list[InboundEvent]) -> None:
        now = datetime.now(UTC)
        told = [(event, what) for event in events if (what := happened(event)) is not None]
        if not told:
            return
        conn = uow.conn
        sequences = await self.repo.next_sequences(conn, [(w.merchant_id, w.order_id) for _, w in told])
        subscribers = await self.repo.subscribers(conn, (w.merchant_id for _, w in told))
        written: list[MerchantEvent] = []
        deliveries: list[Delivery] = []
        for (event, what), sequence in zip(told, sequences, strict=True):
            event_id = new_event_id()
            written.append(MerchantEvent(event_id, what.merchant_id, what.type, what.order_id, sequence,
                                         what.occurred_at, body(event_id, what, sequence), event.event_id))
            deliveries.extend(Delivery.new(event_id, endpoint.endpoint_id, what.merchant_id, now, self.schedule)
                              for endpoint in subscribers.get(what.merchant_id, ()) if endpoint.subscribed(what.type))
        await self.repo.add_events(conn, written, deliveries)
        if deliveries:
            uow.after_commit(self.wake_sender)

    def consumers(self) -> list[ConsumerSpec]:
        """A durable on each stream with something to tell: the order's status changes and the refunds' answers."""
        return [
            ConsumerSpec(
                durable="webhook_svc-order",
                stream="ORDER",
                filter_subjects=["order.confirmed.*", "order.status_changed.*"],
                handler=self.apply,
                events=(OrderConfirmed, OrderStatusChanged),
            ),
            ConsumerSpec(
                durable="webhook_svc-payment",
                stream="PAYMENT",
                filter_subjects=["payment.refunded.*", "payment.refund_failed.*"],
                handler=self.apply,
                events=(PaymentRefunded, PaymentRefundFailed),
            ),
        ]
