"""Metrics: every series a service exposes (DESIGN.md, "Observability and operations"), in the service's own
registry, served as Prometheus text on `<SVC>_METRICS_ADDR` (default: the gRPC port + 1000 on 127.0.0.1).

The one list of names: the chassis records the gRPC, outbox and consumer series for every service; a service
records its saga series (orders, payments, the gateway, webhooks) through the same `Metrics`. Labels are kept
to small sets (method, code, status, durable, event type): never an order, payment or merchant id.
The gauges read from a store or the bus (outbox backlog, consumer lag) are refreshed on a short period by
`refresh`, never on a message's path.
"""

from __future__ import annotations

import importlib.metadata
import logging
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

log = logging.getLogger(__name__)

# Seconds: a call or a batch of this mesh takes milliseconds; a saga takes tens of them, or the saga timeout.
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SAGA = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH = (1, 2, 5, 10, 20, 50, 100, 200, 500)

BREAKER_STATES = ("closed", "open", "half-open")  # pybreaker's names


class Metrics:
    """A service's series, registered in its own registry (several services may share a test process)."""

    def __init__(self, service: str) -> None:
        self.service = service
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=r)
        # What runs: a replica's release (`paymesh status` shows it).
        self.build = Gauge("paymesh_build_info", "1, labelled with the service and the paymesh release it runs",
                           ["service", "version"], registry=r)
        self.build.labels(service, _version()).set(1)

        # gRPC, from the chassis interceptor: the names go-grpc-prometheus made conventional.
        self.rpc_handled = Counter(
            "grpc_server_handled_total", "RPCs completed on the server, by method and status code",
            ["grpc_service", "grpc_method", "grpc_code"], registry=r)
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds", "Time from the call's start to its answer (a stream: to its end)",
            ["grpc_service", "grpc_method"], buckets=FAST, registry=r)

        # The saga.
        self.orders_finished = Counter(
            "paymesh_orders_finished_total", "Orders that reached a final status (CONFIRMED then CANCELLED counts "
            "in both)", ["status"], registry=r)
        self.saga_seconds = Histogram(
            "paymesh_saga_duration_seconds", "From CreateOrder to the order's final status", ["status"],
            buckets=SAGA, registry=r)
        self.payments = Counter(
            "paymesh_payments_total", "Payments that entered each status", ["status"], registry=r)
        self.gateway_seconds = Histogram(
            "paymesh_gateway_call_seconds", "Calls to the payment gateway (with their in-process retries), by "
            "operation and outcome (approved, declined, unknown, unavailable)", ["operation", "outcome"],
            buckets=FAST, registry=r)
        self.breaker = Enum(
            "paymesh_breaker_state", "The circuit breaker's state", ["breaker"], states=list(BREAKER_STATES),
            registry=r)
        self.webhook_deliveries = Counter(
            "paymesh_webhook_deliveries_total", "Webhook delivery attempts by outcome (delivered; retrying: "
            "answered otherwise, tried again later; failed: given up)", ["outcome"], registry=r)
        self.webhook_seconds = Histogram(
            "paymesh_webhook_request_seconds", "One webhook POST, from connect to the receiver's answer",
            buckets=FAST, registry=r)

        # The chassis: events written, relayed and consumed.
        self.events_published = Counter(
            "paymesh_events_published_total", "Events committed to the outbox, by event (`payment.succeeded`)",
            ["event"], registry=r)
        self.outbox_relayed = Counter(
            "paymesh_outbox_relayed_total", "Outbox rows published to JetStream and acknowledged", registry=r)
        self.outbox_unsent = Gauge(
            "paymesh_outbox_unsent_rows", "Outbox rows committed and not yet acknowledged by JetStream", registry=r)
        self.outbox_oldest = Gauge(
            "paymesh_outbox_oldest_unsent_seconds", "Age of the oldest unsent outbox row (0 when none)", registry=r)
        self.batch_size = Histogram(
            "paymesh_consumer_batch_size", "Events fetched per batch", ["durable"], buckets=BATCH, registry=r)
        self.handler_seconds = Histogram(
            "paymesh_consumer_handler_seconds", "Time to apply a batch: its prepare step, transaction and acks",
            ["durable"], buckets=FAST, registry=r)
        self.consumed = Counter(
            "paymesh_consumer_events_total", "Events a durable answered, by event and outcome (applied, "
            "duplicate: already in the inbox, retried: nak'd for redelivery, dead_lettered)",
            ["durable", "event", "outcome"], registry=r)
        self.redeliveries = Counter(
            "paymesh_consumer_redeliveries_total", "Events fetched again (a delivery count above 1)", ["durable"],
            registry=r)
        self.dead_lettered = Counter(
            "paymesh_consumer_dead_lettered_total", "Events moved to the DLQ stream, by reason", ["durable",
            "reason"], registry=r)
        # Read from JetStream consumer info by the stream's owner, for every durable on its stream: a durable
        # whose own process is down is still seen falling behind.
        lag = ["stream", "durable"]
        self.num_pending = Gauge(
            "paymesh_consumer_num_pending", "Messages on the stream the durable has not been delivered yet", lag,
            registry=r)
        self.num_ack_pending = Gauge(
            "paymesh_consumer_num_ack_pending", "Messages delivered to the durable and not yet acknowledged", lag,
            registry=r)
        self.num_redelivered = Gauge(
            "paymesh_consumer_num_redelivered", "Messages delivered more than once and not yet acknowledged", lag,
            registry=r)

    def breaker_state(self, name: str, state: str) -> None:
        self.breaker.labels(name).state(state)

    def outbox_backlog(self, unsent: int, oldest: datetime | None) -> None:
        self.outbox_unsent.set(unsent)
        self.outbox_oldest.set(0 if oldest is None else max(0.0, (datetime.now(UTC) - oldest).total_seconds()))

    def consumer_lag(self, stream: str, infos: list[Any]) -> None:
        """The durables of `stream` as JetStream reports them; a durable no longer there leaves the series."""
        seen = set()
        for info in infos:
            durable = info.name
            seen.add(durable)
            self.num_pending.labels(stream, durable).set(info.num_pending or 0)
            self.num_ack_pending.labels(stream, durable).set(info.num_ack_pending or 0)
            self.num_redelivered.labels(stream, durable).set(info.num_redelivered or 0)
        for gauge in (self.num_pending, self.num_ack_pending, self.num_redelivered):
            for labels in list(_label_sets(gauge)):
                if labels[0] == stream and labels[1] not in seen:
                    gauge.remove(*labels)

    def text(self) -> bytes:
        return generate_latest(self.registry)


def _version() -> str:
    try:
        return importlib.metadata.version("paymesh")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _label_sets(metric: Any) -> list[tuple[str, ...]]:
    # prometheus_client keeps a labelled metric's children by label values; it has no public listing.
    with metric._lock:
        return list(metric._metrics)


class MetricsServer:
    """`GET /metrics` on the event loop (aiohttp): a scrape renders the registry, nothing else runs on it."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._runner: web.AppRunner | None = None

    async def start(self, addr: str) -> None:
        """Listen on `addr`; OSError when it cannot."""
        host, _, port = addr.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port)).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def _scrape(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
