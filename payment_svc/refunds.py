"""Refunds at the gateway: one attempt on demand, background retries until answered, and the resume of
payments a crash left REFUNDING. The gateway is only ever called outside a transaction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from payment_svc.domain import GATEWAY_UNAVAILABLE, InvalidTransition, Refund, Status
from payment_svc.gateway_client import GatewayClient, Kind, Outcome
from payment_svc.ledger import Ledger, utcnow
from payment_svc.messages import outbound, refund_response
from payment_svc.store import PaymentRepository
from paymesh.chassis.backoff import Backoff
from paymesh.chassis.periodic import every, pause
from paymesh.chassis.service import Runtime
from paymesh.payment.v1 import payment_service_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """`idle`: no refund was pending; `answered`: the gateway's answer is recorded (`response` when this
    attempt recorded it, else a concurrent one did); neither: unanswered, to be asked again."""

    idle: bool = False
    answered: bool = False
    response: payment_service_pb2.RefundPaymentResponse | None = None


class Refunder:
    def __init__(
        self,
        runtime: Runtime,
        repository: PaymentRepository,
        gateway: GatewayClient,
        ledger: Ledger,
        *,
        backoff: Backoff,
        scan_interval_s: float = 5.0,
        refund_timeout_s: float = 600.0,
    ) -> None:
        self.runtime = runtime
        self.repository = repository
        self.gateway = gateway
        self.ledger = ledger
        self.backoff = backoff
        self.scan_interval_s = scan_interval_s
        self.refund_timeout = timedelta(seconds=refund_timeout_s)
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}  # by (merchant_id, payment_id)
        self._stop = asyncio.Event()

    async def scan(self) -> None:
        """Resumes every REFUNDING payment now (a crash may have left some), then rescans periodically."""
        await every(self.scan_interval_s, self._resume_refunding, stop=self._stop, name="refund scan")

    async def stop(self) -> None:
        self._stop.set()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()  # the same key is asked again after a restart
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def kick(self, merchant_id: str, payment_id: str) -> None:
        """Work on this payment's pending refund in the background, unless already doing so."""
        key = (merchant_id, payment_id)
        if self._stop.is_set() or key in self._tasks:
            return
        task = asyncio.create_task(self._until_done(merchant_id, payment_id), name=f"refund-{payment_id}")
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def _resume_refunding(self) -> None:
        """Every merchant's REFUNDING payments: the scan is the platform's, not a caller's."""
        async with self.runtime.db.read() as conn:
            for merchant_id, payment_id in await self.repository.refunding(conn):
                self.kick(merchant_id, payment_id)

    async def _until_done(self, merchant_id: str, payment_id: str) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                result = await self.attempt(merchant_id, payment_id)
                if result.idle:
                    return
                if result.answered:
                    continue  # a cancel may have asked for the rest: look again at once
            except Exception:
                log.exception("refund of %s (merchant %s) failed; retrying", payment_id, merchant_id)
            failures += 1
            await pause(self.backoff.delay(failures), self._stop)

    async def attempt(self, merchant_id: str, payment_id: str) -> Attempt:
        """Ask the gateway once (with its in-process retries) for the merchant's payment's pending refund."""
        async with self.runtime.db.read() as conn:
            payment = await self.repository.get(conn, merchant_id, payment_id)
            refund = await self.repository.pending_refund(conn, merchant_id, payment_id)
        if payment is None or payment.status is not Status.REFUNDING or refund is None:
            return Attempt(idle=True)
        r = refund.request
        outcome = await self.gateway.refund(r.idempotency_key, payment.charge_id, r.amount_minor, r.reason)
        if outcome.resolved:
            return Attempt(answered=True, response=await self.record(refund, outcome))
        now = utcnow()
        if now >= refund.create_time + self.refund_timeout and not (refund.outcome_unknown or outcome.may_have_reached):
            gave_up = Outcome(Kind.DECLINED, code=GATEWAY_UNAVAILABLE, detail=f"gateway unreachable: {outcome.detail}")
            return Attempt(answered=True, response=await self.record(refund, gave_up))
        if outcome.may_have_reached and not refund.outcome_unknown:
            async with self.runtime.db.unit_of_work() as uow:
                await self.repository.mark_refund_unknown(uow.conn, r.merchant_id, r.refund_id, now)
                await uow.commit()
        log.warning("refund %s of %s (merchant %s) unanswered (%s); retrying later", r.refund_id, payment_id,
                    merchant_id, outcome.detail)
        return Attempt()

    async def record(self, refund: Refund, outcome: Outcome) -> payment_service_pb2.RefundPaymentResponse | None:
        """The gateway's answer, in one transaction with the payment, its events and the request log;
        None when a concurrent attempt recorded it first."""
        r = refund.request
        now = utcnow()
        async with self.runtime.db.unit_of_work() as uow:
            payment = await self.repository.get(uow.conn, r.merchant_id, r.payment_id, lock=True)
            current = await self.repository.pending_refund(uow.conn, r.merchant_id, r.payment_id, lock=True)
            if payment is None or current is None or current.request.refund_id != r.refund_id:
                return None
            try:
                if outcome.kind is Kind.APPROVED:
                    payment.refund_succeeded(r, outcome.id)
                else:
                    payment.refund_refused(r, outcome.code, outcome.detail)
            except InvalidTransition:
                return None
            events = [outbound(payment, e, None) for e in payment.pull_events()]
            await self.ledger.record(uow, [payment], events, now)
            approved = outcome.kind is Kind.APPROVED
            await self.repository.finish_refund(
                uow.conn, r.merchant_id, r.refund_id, "SUCCEEDED" if approved else "FAILED", outcome.id, outcome.code,
                now,
            )
            response = refund_response(payment, outcome.id if approved else "", r.amount_minor if approved else 0)
            if r.request_id:
                await self.runtime.requests.complete(uow, r.merchant_id, r.request_id, response)
            await uow.commit()
        return response
