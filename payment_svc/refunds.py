"""Refunds at the gateway: one attempt on demand, background retries until answered, and the resume of
payments a crash left REFUNDING. The gateway is only ever called outside a transaction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from payment_svc.domain import GATEWAY_UNAVAILABLE, InvalidTransition, RetryPolicy, Status
from payment_svc.gateway import GatewayClient, Kind, Outcome
from payment_svc.handlers import Recorder, utcnow
from payment_svc.messages import outbound, payment_message
from payment_svc.store import PaymentRow, PaymentStore, RefundRow
from paymesh.chassis.service import Runtime
from paymesh.payment.v1 import payment_service_pb2

log = logging.getLogger(__name__)

METHOD = "RefundPayment"


@dataclass(frozen=True)
class Attempt:
    """`idle`: no refund was pending; `answered`: the gateway's answer is recorded (`response` for a
    RefundPayment request); neither: unanswered, to be asked again."""

    idle: bool = False
    answered: bool = False
    response: payment_service_pb2.RefundPaymentResponse | None = None


class Refunder:
    def __init__(
        self,
        runtime: Runtime,
        store: PaymentStore,
        gateway: GatewayClient,
        recorder: Recorder,
        *,
        backoff: RetryPolicy,
        scan_interval_s: float = 5.0,
        refund_timeout_s: float = 600.0,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.gateway = gateway
        self.recorder = recorder
        self.backoff = backoff
        self.scan_interval_s = scan_interval_s
        self.refund_timeout = timedelta(seconds=refund_timeout_s)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._scanner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Resumes every REFUNDING payment now (a crash may have left some), then rescans periodically."""
        self._scanner = asyncio.create_task(self._scan(), name="refund-scan")

    async def stop(self) -> None:
        self._stop.set()
        tasks = [t for t in (self._scanner, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()  # the same key is asked again after a restart
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def kick(self, payment_id: str) -> None:
        """Work on this payment's pending refund in the background, unless already doing so."""
        if self._stop.is_set() or payment_id in self._tasks:
            return
        task = asyncio.create_task(self._until_done(payment_id), name=f"refund-{payment_id}")
        self._tasks[payment_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(payment_id, None))

    async def _scan(self) -> None:
        while not self._stop.is_set():
            try:
                async with self.runtime.db.read() as conn:
                    for payment_id in await self.store.refunding(conn):
                        self.kick(payment_id)
            except Exception:
                log.exception("refund scan failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.scan_interval_s)

    async def _until_done(self, payment_id: str) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                result = await self.attempt(payment_id)
                if result.idle:
                    return
                if result.answered:
                    continue  # a cancel may have asked for the rest: look again at once
            except Exception:
                log.exception("refund of %s failed; retrying", payment_id)
            failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.backoff.delay(failures))

    async def attempt(self, payment_id: str) -> Attempt:
        """Ask the gateway once (with its in-process retries) for the payment's pending refund."""
        async with self.runtime.db.read() as conn:
            row = await self.store.get(conn, payment_id)
            refund = await self.store.pending_refund(conn, payment_id)
        if row is None or row.payment.status is not Status.REFUNDING or refund is None:
            return Attempt(idle=True)
        r = refund.request
        outcome = await self.gateway.refund(r.idempotency_key, row.payment.charge_id, r.amount_minor, r.reason)
        if outcome.resolved:
            return Attempt(answered=True, response=await self.record(refund, outcome))
        now = utcnow()
        if now >= refund.create_time + self.refund_timeout and not (refund.outcome_unknown or outcome.may_have_reached):
            gave_up = Outcome(Kind.DECLINED, code=GATEWAY_UNAVAILABLE, detail=f"gateway unreachable: {outcome.detail}")
            return Attempt(answered=True, response=await self.record(refund, gave_up))
        if outcome.may_have_reached and not refund.outcome_unknown:
            async with self.runtime.db.unit_of_work() as uow:
                await self.store.mark_refund_unknown(uow.conn, r.refund_id, now)
                await uow.commit()
        log.warning("refund %s of %s unanswered (%s); retrying later", r.refund_id, payment_id, outcome.detail)
        return Attempt()

    async def record(self, refund: RefundRow, outcome: Outcome) -> payment_service_pb2.RefundPaymentResponse | None:
        """The gateway's answer, in one transaction with the payment, its events and the request log."""
        r = refund.request
        now = utcnow()
        async with self.runtime.db.unit_of_work() as uow:
            row = await self.store.get(uow.conn, r.payment_id, lock=True)
            current = await self.store.pending_refund(uow.conn, r.payment_id, lock=True)
            if row is None or current is None or current.request.refund_id != r.refund_id:
                return await self._recorded(r.refund_id)  # recorded by a concurrent attempt
            payment = row.payment
            try:
                if outcome.kind is Kind.APPROVED:
                    payment.refund_succeeded(r, outcome.id)
                else:
                    payment.refund_refused(r, outcome.code, outcome.detail)
            except InvalidTransition:
                return await self._recorded(r.refund_id)
            events = [outbound(e, None) for e in payment.drain_events()]
            await self.recorder.record(uow, [payment], events, now)
            approved = outcome.kind is Kind.APPROVED
            await self.store.finish_refund(
                uow.conn, r.refund_id, "SUCCEEDED" if approved else "FAILED", outcome.id, outcome.code, now
            )
            response = payment_service_pb2.RefundPaymentResponse(
                payment=payment_message(PaymentRow(payment, row.create_time, now)),
                refund_id=outcome.id if approved else "",
                amount_minor=r.amount_minor if approved else 0,
            )
            if r.request_id:
                await self.runtime.requests.complete(uow, r.request_id, response)
            await uow.commit()
        return response

    async def _recorded(self, refund_id: str) -> payment_service_pb2.RefundPaymentResponse | None:
        """The answer stored for a refund somebody else recorded (for a RefundPayment request)."""
        async with self.runtime.db.read() as conn:
            refund = await self.store.refund_by_id(conn, refund_id)
            if refund is None or not refund.request.request_id:
                return None
            table = self.runtime.requests.table
            stored = (
                await conn.execute(select(table.c.response).where(table.c.request_id == refund.request.request_id))
            ).scalar_one_or_none()
        return None if stored is None else payment_service_pb2.RefundPaymentResponse.FromString(stored)

