"""End to end, what an operator sees of the mesh: every service's /metrics scraped over HTTP and parsed with
prometheus_client's own parser, counters moved by exactly what a few orders of each outcome did, lag gauges
at 0 when caught up and rising while a consumer is down, every metric the Grafana dashboard asks for present,
JSON log lines that parse and tie one order's lines across the services by order_id and trace_id; and spans
exported over OTLP to a gRPC receiver when OTEL_EXPORTER_OTLP_ENDPOINT names one."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from paymesh.ops.launcher import Mesh
from paymesh.ops.services import NAMES
from tests.deploy.dashboard import dashboard_metric_names
from tests.e2e.harness import Clients, eventually, statuses

TERMINAL = statuses("CONFIRMED", "REJECTED", "PAYMENT_FAILED", "CANCELLED", "REQUIRES_REVIEW")
Labels = Mapping[str, str]


@dataclass
class Scrape:
    """One service's /metrics, parsed: sample values by (name, labels), and the families it declares."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)
    families: set[str] = field(default_factory=set)

    def value(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` whose labels include `labels` (0 when none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def names(self) -> set[str]:
        return {n for n, _ in self.samples} | self.families

    def where(self, name: str, keep: Callable[[Labels], bool]) -> dict[frozenset[tuple[str, str]], float]:
        return {ls: v for (n, ls), v in self.samples.items() if n == name and keep(dict(ls))}


async def scrape(addr: str) -> Scrape:
    async with aiohttp.ClientSession() as http, http.get(f"http://{addr}/metrics") as response:
        assert response.status == 200, f"{addr}: {response.status}"
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    out = Scrape()
    for family in text_string_to_metric_families(text):
        out.families.add(family.name)
        for sample in family.samples:
            out.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


async def scrape_all(mesh: Mesh) -> dict[str, Scrape]:
    return {service: await scrape(mesh.metrics_addrs(service)[0]) for service in NAMES}


def delta(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


async def caught_up(mesh: Mesh) -> dict[str, Scrape]:
    """Scrapes once every outbox is relayed and every durable of every stream reads 0 pending and 0
    unacknowledged."""

    def lagging(scrapes: dict[str, Scrape]) -> dict[str, float]:
        lag = {f"{service} outbox": v for service, s in scrapes.items() if (v := s.value("paymesh_outbox_unsent_rows"))}
        for s in scrapes.values():
            for name in ("paymesh_consumer_num_pending", "paymesh_consumer_num_ack_pending"):
                lag |= {f"{name}{dict(ls)}": v for ls, v in s.where(name, lambda _: True).items() if v}
        return lag

    return await eventually(lambda: scrape_all(mesh), lambda s: not lagging(s) and _durables(s) >= 7, 20,
                            "every durable caught up")


def _durables(scrapes: dict[str, Scrape]) -> int:
    return sum(len(s.where("paymesh_consumer_num_pending", lambda _: True)) for s in scrapes.values())


@pytest.mark.timeout(180)
async def test_metrics_count_each_outcome_and_lag_rises_while_a_consumer_is_down(new_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh: Mesh = await new_mesh(PAYMESH_LOG_FORMAT="json", PAYMESH_METRICS_PERIOD_S="0.2")
    async with Clients(mesh).session() as clients:
        plenty, scarce = await clients.put_product(10), await clients.put_product(1)
        before = await caught_up(mesh)

        confirmed = [await clients.create_order([(plenty, 1, 500)]) for _ in range(2)]
        declined = await clients.create_order([(plenty, 1, 700)], token="tok_chargeDeclined")
        rejected = await clients.create_order([(scarce, 2, 100)])
        for order, status in [(confirmed[0], "CONFIRMED"), (confirmed[1], "CONFIRMED"),
                              (declined, "PAYMENT_FAILED"), (rejected, "REJECTED")]:
            final = await clients.wait_order(order.order_id, statuses(status))
            assert final.status in statuses(status)
        after = await caught_up(mesh)

        order_svc, payment_svc, gateway = after["order_svc"], after["payment_svc"], after["gateway_mock"]
        created = {"grpc_service": "paymesh.order.v1.OrderService", "grpc_method": "CreateOrder"}
        assert delta(order_svc, before["order_svc"], "grpc_server_handled_total", **created, grpc_code="OK") == 4
        assert delta(order_svc, before["order_svc"], "grpc_server_handling_seconds_count", **created) == 4
        for status, n in [("CONFIRMED", 2), ("PAYMENT_FAILED", 1), ("REJECTED", 1)]:
            assert delta(order_svc, before["order_svc"], "paymesh_orders_finished_total", status=status) == n, status
            assert delta(order_svc, before["order_svc"], "paymesh_saga_duration_seconds_count", status=status) == n
        assert delta(order_svc, before["order_svc"], "paymesh_events_published_total", event="order.placed") == 4
        inventory = after["inventory_svc"]
        for event, n in [("inventory.reserved", 3), ("inventory.rejected", 1), ("inventory.committed", 2),
                         ("inventory.released", 1)]:
            assert delta(inventory, before["inventory_svc"], "paymesh_events_published_total", event=event) == n, event
        # Three charges asked, two approved and one declined; the gateway answered each once.
        for outcome, n in [("approved", 2), ("declined", 1), ("unknown", 0), ("unavailable", 0)]:
            assert delta(payment_svc, before["payment_svc"], "paymesh_gateway_call_seconds_count",
                         operation="Charge", outcome=outcome) == n, outcome
        assert delta(gateway, before["gateway_mock"], "grpc_server_handled_total", grpc_method="Charge",
                     grpc_code="OK") == 3
        # A payment for each order placed; the rejected order's is never charged (no inventory.reserved).
        for status, n in [("PENDING", 4), ("PROCESSING", 3), ("SUCCEEDED", 2), ("FAILED", 1), ("VOIDED", 0)]:
            assert delta(payment_svc, before["payment_svc"], "paymesh_payments_total", status=status) == n, status
        assert payment_svc.value("paymesh_breaker_state", breaker="gateway", paymesh_breaker_state="closed") == 1
        assert delta(payment_svc, before["payment_svc"], "paymesh_consumer_events_total",
                     durable="payment_svc-inventory", outcome="applied") == 3
        for scrape_ in after.values():
            assert scrape_.value("paymesh_outbox_oldest_unsent_seconds") == 0
            assert scrape_.value("paymesh_consumer_dead_lettered_total") == 0

        # Every metric the dashboard's queries name is served by some service.
        served = set().union(*(s.names() for s in after.values()))
        missing = {n for n in dashboard_metric_names() if n not in served and n.removesuffix("_total") not in served}
        assert not missing, f"the dashboard asks for metrics no service serves: {sorted(missing)}"

        # payment_svc down: its durables fall behind, and the streams' owners (order_svc, inventory_svc) say so.
        await mesh.kill("payment_svc")
        waiting = await clients.create_order([(plenty, 1, 500)])

        def behind(s: dict[str, Scrape]) -> bool:
            return (s["order_svc"].value("paymesh_consumer_num_pending", durable="payment_svc-order") >= 1
                    and s["inventory_svc"].value("paymesh_consumer_num_pending", durable="payment_svc-inventory") >= 1)

        async def owners() -> dict[str, Scrape]:
            return {s: await scrape(mesh.metrics_addrs(s)[0]) for s in ("order_svc", "inventory_svc")}

        await eventually(owners, behind, 20, "payment_svc's durables behind on the ORDER and INVENTORY streams")
        await mesh.restart("payment_svc")
        await clients.wait_order(waiting.order_id, statuses("CONFIRMED"))
        await caught_up(mesh)

    check_json_logs(mesh.logs, confirmed[0].order_id)


TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \w+ [A-Z]+ ")


def check_json_logs(logs: Path, order_id: str) -> None:
    """Every record a service logged is one JSON object; one order's lines, in every service that acted on
    it, carry its order_id and one trace_id, and name the steps the saga took."""
    lines: dict[str, list[dict[str, object]]] = {}
    for service in NAMES:
        records = []
        for line in (logs / f"{service}.log").read_text().splitlines():
            if not line.strip():
                continue
            assert not TEXT_LINE.match(line), f"{service}: a text line under PAYMESH_LOG_FORMAT=json: {line}"
            if line.startswith("{"):
                records.append(json.loads(line))
        assert records, f"{service} logged no JSON line"
        for record in records:
            assert {"time", "level", "service", "message"} <= record.keys(), record
            assert record["service"] == service
        lines[service] = [r for r in records if r.get("order_id") == order_id]
    traces = {str(r["trace_id"]) for rs in lines.values() for r in rs}
    assert len(traces) == 1 and re.fullmatch(r"[0-9a-f]{32}", traces.pop()), traces
    steps = {(service, str(r["message"])) for service, rs in lines.items() for r in rs}
    for step in [("order_svc", "order.placed"), ("inventory_svc", "inventory.reserved"),
                 ("payment_svc", "payment.succeeded"), ("order_svc", "order.confirmed"),
                 ("inventory_svc", "inventory.committed")]:
        assert step in steps, (step, sorted(steps))
    assert any(s == "gateway_mock" and m.startswith("charge ") for s, m in steps), sorted(steps)
    for service in ("order_svc", "inventory_svc", "payment_svc"):
        assert all(r["merchant_id"] and r["event_id"] for r in lines[service] if "." in str(r["message"])), service


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver on loopback: what a collector would be handed, by service.name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []  # (service.name, span name, trace id)

    async def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        for resource_spans in request.resource_spans:
            service = next(a.value.string_value for a in resource_spans.resource.attributes
                           if a.key == "service.name")
            for scope in resource_spans.scope_spans:
                self.spans += [(service, s.name, s.trace_id.hex()) for s in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.mark.timeout(120)
async def test_spans_go_over_otlp_when_an_endpoint_is_set(new_mesh) -> None:  # type: ignore[no-untyped-def]
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        mesh: Mesh = await new_mesh(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                                    OTEL_BSP_SCHEDULE_DELAY="100")
        async with Clients(mesh).session() as clients:
            sku = await clients.put_product(5)
            order = await clients.create_order([(sku, 1, 900)])
            await clients.wait_order(order.order_id, statuses("CONFIRMED"))

        def one_trace(spans: list[tuple[str, str, str]]) -> bool:
            created = [t for _, name, t in spans if name == "paymesh.order.v1.OrderService/CreateOrder"]
            return bool(created) and {"order_svc", "inventory_svc", "payment_svc", "gateway_mock", "webhook_svc"} <= {
                service for service, _, t in spans if t == created[-1]}

        async def exported() -> list[tuple[str, str, str]]:
            return list(collector.spans)

        await eventually(exported, one_trace, 20, "every service's spans of the order exported in one trace")
    finally:
        await server.stop(None)
