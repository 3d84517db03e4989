"""The one place a payment's state change, its audit-trail rows and its outbox events are written."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from payment_svc.domain import Payment
from payment_svc.store import PaymentRepository
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.events import OutboundEvent
from paymesh.chassis.service import Runtime


def utcnow() -> datetime:
    return datetime.now(UTC)


class Ledger:
    """Writes changed payments with their audit steps, refunds and events in the caller's transaction;
    after the commit, hands new refunds to whoever asks the gateway for them (`on_refund_requested`)."""

    def __init__(self, runtime: Runtime, repository: PaymentRepository) -> None:
        self.runtime = runtime
        self.repository = repository
        # Called with (merchant_id, payment_id).
        self.on_refund_requested: Callable[[str, str], None] = lambda merchant_id, payment_id: None

    async def record(
        self,
        uow: UnitOfWork,
        payments: Iterable[Payment],
        events: list[OutboundEvent],
        now: datetime,
        *,
        hand_over: bool = True,
    ) -> None:
        payments = [p for p in payments if p.is_new or p.changed]
        refunding = [(p.merchant_id, p.payment_id) for p in payments if p.new_refunds]
        # The statuses entered, read before the save clears the steps: counted once the transaction commits.
        entered = [s.to_status.value for p in payments for s in p.steps if s.to_status != s.from_status]
        await self.repository.save(uow.conn, payments, now)
        if entered:
            uow.after_commit(lambda: self._count(entered))
        await self.runtime.publish(uow, events)
        if refunding and hand_over:
            uow.after_commit(lambda: self._hand_over(refunding))

    def _count(self, statuses: list[str]) -> None:
        counter = self.runtime.metrics.payments
        for status in statuses:
            counter.labels(status).inc()

    def _hand_over(self, payments: list[tuple[str, str]]) -> None:
        for merchant_id, payment_id in payments:
            self.on_refund_requested(merchant_id, payment_id)
