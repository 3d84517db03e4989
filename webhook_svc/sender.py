"""The sender: claims due deliveries by lease, POSTs each signed, records the answer and schedules what is next.

Everything a retry needs is in the database (the delivery's attempts and next_attempt_time), so a crash loses
nothing: a lease the dead process held ends, and any replica sends the delivery again (at least once; the
receiver dedupes by webhook-id). Each endpoint has its own limit of requests in flight, so a slow or dead
receiver holds only its own deliveries back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from paymesh.chassis.db import Database
from paymesh.chassis.metrics import Metrics
from paymesh.chassis.periodic import every
from webhook_svc import signing
from webhook_svc.domain import (
    DEFAULT_DISABLE_AFTER,
    DEFAULT_RETENTION,
    DEFAULT_SCHEDULE_S,
    Attempt,
    DeliveryStatus,
    FailureReason,
)
from webhook_svc.store import Claimed, WebhookRepository
from webhook_svc.transport import WebhookTransport

log = logging.getLogger(__name__)

# The shortest wait between two looks at the database when the last found nothing to claim.
MIN_WAIT_S = 0.05
# Events removed per transaction when pruning, so a large backlog never holds the writer lock for long.
PRUNE_BITE = 500


@dataclass(frozen=True)
class SenderPolicy:
    """How the sender retries and shares the work; the defaults are DESIGN.md's, tests compress them."""

    schedule: tuple[float, ...] = DEFAULT_SCHEDULE_S
    timeout_s: float = 10.0
    disable_after: timedelta = DEFAULT_DISABLE_AFTER
    # Requests in flight to one endpoint from one replica, and in all.
    per_endpoint: int = 4
    in_flight: int = 200
    # How often the database is asked for due deliveries when nothing woke the sender (retries, other replicas').
    poll_s: float = 1.0
    # How long the event feed keeps an event no delivery of which is pending, and how often it is pruned.
    retention: timedelta = DEFAULT_RETENTION
    prune_every_s: float = 600.0

    @property
    def lease(self) -> timedelta:
        """How long a claimed delivery is this replica's: past one request's timeout, so a live sender never
        loses a delivery it is still sending; a dead one's is taken over after it."""
        return timedelta(seconds=self.timeout_s * 2 + 5)


class Sender:
    """One replica's sender; `run` is its background loop, `wake` is called when new deliveries commit."""

    def __init__(self, db: Database, repo: WebhookRepository, transport: WebhookTransport, policy: SenderPolicy,
                 *, service: str, addr: str, metrics: Metrics | None = None) -> None:
        self.db = db
        self.metrics = metrics if metrics is not None else Metrics(service)
        self.repo = repo
        self.transport = transport
        self.policy = policy
        # Unique per process start: a restarted replica never mistakes a dead one's lease for its own.
        self.owner = f"{service}@{socket.gethostname()}/{addr}/{uuid.uuid4().hex[:8]}"
        self.wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: dict[str, int] = defaultdict(int)
        self._limits: dict[str, asyncio.Semaphore] = {}

    def wake(self) -> None:
        self.wakeup.set()

    async def run(self) -> None:
        await every(self.policy.poll_s, self.send_due, wake=self.wakeup, name="webhook sender", adaptive=True)

    async def prune(self) -> None:
        """The background loop that keeps the event feed to its retention period, a bounded bite at a time."""
        await every(self.policy.prune_every_s, self.prune_once, name="webhook event retention")

    async def prune_once(self) -> int:
        gone = 0
        while True:
            async with self.db.unit_of_work() as uow:
                bite = await self.repo.prune(uow.conn, datetime.now(UTC) - self.policy.retention, PRUNE_BITE)
                await uow.commit()
            gone += bite
            if bite < PRUNE_BITE:
                if gone:
                    log.info("webhook events past %s removed: %d", self.policy.retention, gone)
                return gone

    async def send_due(self) -> float:
        """Claim what is due and start sending it; the seconds until the loop should look again."""
        room = self.policy.in_flight - len(self._tasks)
        if room <= 0:
            return self.policy.poll_s
        now = datetime.now(UTC)
        async with self.db.unit_of_work() as uow:
            claimed = await self.repo.claim(uow.conn, now=now, owner=self.owner, lease_until=now + self.policy.lease,
                                            limit=room, per_endpoint=self.policy.per_endpoint, busy=self._busy())
            await uow.commit()
        for item in claimed:
            endpoint_id = item.delivery.endpoint_id
            self._in_flight[endpoint_id] += 1
            task = asyncio.create_task(self._deliver(item), name=f"deliver {item.delivery.delivery_id}")
            self._tasks.add(task)
            task.add_done_callback(self._done(endpoint_id))
        if len(claimed) == room:
            return 0.0  # a full claim: more may be due now
        async with self.db.read() as conn:
            due = await self.repo.next_due(conn, now, self._busy())  # after this claim's requests began
        # Never 0 here: what is due but was not claimed is held by a lease or waits for room (a wake-up comes).
        return self.policy.poll_s if due is None else max(MIN_WAIT_S, (due - datetime.now(UTC)).total_seconds())

    def _busy(self) -> list[str]:
        """The endpoints at their limit of requests in flight from this replica: left out of claims until one ends."""
        return [endpoint for endpoint, n in self._in_flight.items() if n >= self.policy.per_endpoint]

    def _done(self, endpoint_id: str) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self._in_flight[endpoint_id] -= 1
            if self._in_flight[endpoint_id] <= 0:
                del self._in_flight[endpoint_id]
                self._limits.pop(endpoint_id, None)  # none in flight: no one holds or waits on it
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("webhook delivery task failed: %r; its lease ends and it is sent again", exc)
            self.wakeup.set()  # room for the next claim
        return done

    async def _deliver(self, item: Claimed) -> None:
        delivery, endpoint = item.delivery, item.endpoint
        limit = self._limits.setdefault(endpoint.endpoint_id, asyncio.Semaphore(self.policy.per_endpoint))
        async with limit:
            started = datetime.now(UTC)
            raw = item.body.encode()
            headers = signing.headers(endpoint.signing_secrets(started), delivery.event_id, int(time.time()), raw)
            result = await self.transport.post(endpoint.url, headers, raw)
        self.metrics.webhook_seconds.observe(result.latency_ms / 1000)
        outcome = await self._record(delivery.delivery_id, started, result.http_status, result.error,
                                     result.latency_ms)
        self.metrics.webhook_deliveries.labels(outcome).inc()
        log.info("webhook %s %s to %s: %s (%s)", delivery.event_id, delivery.delivery_id, endpoint.endpoint_id,
                 result.http_status or result.error, outcome,
                 extra={"merchant_id": delivery.merchant_id, "event_id": delivery.event_id})

    async def _record(self, delivery_id: str, started: datetime, http_status: int, error: str,
                      latency_ms: int) -> str:
        """The attempt and what follows from it, in one transaction under the delivery's and endpoint's locks;
        the attempt's outcome: delivered, retrying (tried again later) or failed (given up)."""
        async with self.db.unit_of_work() as uow:
            conn = uow.conn
            delivery, endpoint = await self.repo.lock_delivery(conn, delivery_id)
            attempt = Attempt(delivery.attempts + 1, started, http_status, error, latency_ms)
            if delivery.status is DeliveryStatus.PENDING:
                delivery.answered(attempt, self.policy.schedule, random.random())
            else:
                delivery.attempts = attempt.attempt  # settled meanwhile (endpoint deleted): the attempt still counts
            await self.repo.record(conn, delivery, attempt)
            if endpoint is not None:
                before = (endpoint.failing_since, endpoint.disabled_reason)
                disabled = endpoint.answered(attempt.delivered, attempt.gone, datetime.now(UTC),
                                             self.policy.disable_after)
                if (endpoint.failing_since, endpoint.disabled_reason) != before:
                    await self.repo.save_endpoint(conn, endpoint)
                if disabled:
                    reason = FailureReason.ENDPOINT_GONE if attempt.gone else FailureReason.ENDPOINT_DISABLED
                    stopped = await self.repo.stop_deliveries(conn, endpoint, reason)
                    log.warning("webhook endpoint %s of merchant %s disabled (%s); %d pending deliveries failed",
                                endpoint.endpoint_id, endpoint.merchant_id, endpoint.disabled_reason, stopped)
            await uow.commit()
        if attempt.delivered:
            return "delivered"
        return "retrying" if delivery.status is DeliveryStatus.PENDING else "failed"

    async def stop(self) -> None:
        """Cancel the requests in flight; their leases end by themselves and another replica (or this one,
        restarted) sends them again."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
