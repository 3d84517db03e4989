"""The saga's deadline: open orders past it are cancelled (CANCELLING, order.cancelled with timed_out)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from order_svc.messages import outbox_rows
from order_svc.store import OrderRepository
from order_svc.watch import OrderWatch
from paymesh.chassis.events import OutboundEvent, new_traceparent
from paymesh.chassis.periodic import every
from paymesh.chassis.service import Runtime

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.5
SWEEP_BATCH = 500


class DeadlineSweeper:
    """Every `interval_s`, times out every open order past its deadline, a batch per transaction.

    It is the system, not a merchant: it sweeps every merchant's orders, and each order.cancelled it
    publishes names that order's own merchant.

    Runs as one of the service's background loops (`Wiring.background`): started once
    the host has its schema and NATS, cancelled first at shutdown.
    """

    def __init__(
        self,
        runtime: Runtime,
        orders: OrderRepository,
        watch: OrderWatch,
        *,
        interval_s: float = SWEEP_INTERVAL_S,
        batch: int = SWEEP_BATCH,
    ) -> None:
        self.runtime = runtime
        self.orders = orders
        self.watch = watch
        self.interval_s = interval_s
        self.batch = batch
        self.timed_out = 0

    async def run(self) -> None:
        """Sweep every `interval_s` until the service begins to stop; a failed sweep is logged and tried again."""
        await every(self.interval_s, self.sweep, stop=self.runtime.stopping, name="deadline sweep")

    async def sweep(self) -> None:
        """Time out every overdue order, a batch per transaction."""
        while await self.sweep_once() == self.batch:
            pass  # a full batch: more may be overdue

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Time out one batch of overdue orders; returns how many."""
        now = now or datetime.now(UTC)
        async with self.runtime.db.unit_of_work() as uow:
            overdue = await self.orders.lock_overdue(uow.conn, now, self.batch)
            if not overdue:
                return 0
            events: list[OutboundEvent] = []
            for order in overdue:
                order.time_out(now)
                events.extend(outbox_rows(uow, self.runtime.metrics, order, new_traceparent()))
            await self.orders.save(uow.conn, overdue)
            await self.runtime.publish(uow, events)
            self.watch.deliver_after_commit(uow, [self.watch.snapshot(o) for o in overdue])
            await uow.commit()
        self.timed_out += len(overdue)
        log.info("cancelled %d order(s) past their saga deadline", len(overdue))
        return len(overdue)
