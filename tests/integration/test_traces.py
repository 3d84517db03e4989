"""Traces: each service records its spans into an in-memory exporter of its own (the test setting); one order
is one trace across order, inventory, payment and the gateway, each span the child of what caused it; a
redelivered event's span says its delivery count."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from paymesh.chassis.consumer import Consumer, ConsumerSpec
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.events import InboundEvent
from paymesh.chassis.metrics import Metrics
from paymesh.chassis.tracing import Tracing
from paymesh.client import MeshClient
from paymesh.ops.natsserver import NatsServer
from paymesh.ops.services import SPECS
from paymesh.order.v1 import order_pb2
from tests.conftest import wait_for
from tests.integration.chassis_harness import EVENTS, FAST, Rig, all_acked, placed, publish
from tests.integration.mesh_rig import running_mesh

pytestmark = pytest.mark.timeout(90)


@dataclass
class Telemetry:
    metrics: Metrics
    tracing: Tracing


async def test_a_redelivered_events_span_says_its_delivery_count(rig: Rig) -> None:
    exporter = InMemorySpanExporter()
    tries: list[int] = []

    async def handler(uow: UnitOfWork, events: list[InboundEvent]) -> None:
        tries.append(events[0].num_delivered)
        if len(tries) == 1:
            raise RuntimeError("the first try fails")
        await rig.store.credit(uow, events)

    spec = ConsumerSpec(durable="ledger", stream="ORDER", filter_subjects=["order.placed.*"], handler=handler,
                        events=EVENTS, backoff=FAST)
    telemetry = Telemetry(Metrics("test_svc"), Tracing.to("test_svc", exporter))
    consumer = Consumer(spec, rig.nc.jetstream(), rig.store.db, rig.store.inbox, "test_svc", telemetry=telemetry)
    event = placed()
    await publish(rig.nc, event)
    await consumer.start()
    try:
        await wait_for(lambda: consumer.applied == 1, message="applied on its second delivery")
        await wait_for(lambda: all_acked(rig.nc), message="acked")
    finally:
        await consumer.stop()
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert [s.attributes["messaging.nats.delivery_count"] for s in spans] == [1, 2]
    first, second = spans
    assert first.status.status_code is StatusCode.ERROR and first.attributes["paymesh.outcome"] == "retried"
    assert second.attributes["paymesh.outcome"] == "applied"
    for span in spans:
        assert span.attributes["messaging.system"] == "nats"
        assert span.attributes["messaging.destination.name"] == event.subject
        assert span.attributes["messaging.consumer.group.name"] == "ledger"
        # Both deliveries continue the publisher's trace.
        assert f"{span.context.trace_id:032x}" == event.headers["traceparent"].split("-")[1]
    assert telemetry.metrics.redeliveries.labels("ledger")._value.get() == 1


def _named(spans: list[tuple[str, ReadableSpan]], service: str, name: str) -> ReadableSpan:
    found = [s for svc, s in spans if svc == service and s.name == name]
    has = sorted(s.name for v, s in spans if v == service)
    assert len(found) == 1, f"{service} {name}: {len(found)} spans; it has {has}"
    return found[0]


async def test_one_order_is_one_trace_across_the_services_parented_as_the_calls_happened(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    exporters = {spec.name: InMemorySpanExporter() for spec in SPECS}
    async with running_mesh(nats_server.url, tmp_path, spans=exporters) as mesh:
        addrs = {role: mesh.hosts[name].runtime.settings.grpc_addr for role, name in
                 [("order", "order_svc"), ("inventory", "inventory_svc"), ("payment", "payment_svc"),
                  ("gateway", "gateway_mock")]}
        async with MeshClient(**addrs, api_key=mesh.keys["merchant"]) as client:
            await client.put_product("sku-trace", name="mug", available=5)
            order = await client.create_order(customer_id="cus_trace", items=[("sku-trace", 1, 1200)],
                                              currency="USD", payment_method_token="tok_visa")

            async def confirmed() -> bool:
                return (await client.get_order(order.order_id)).status == order_pb2.ORDER_STATUS_CONFIRMED

            await wait_for(confirmed, timeout=20, message="the order confirmed")

        def trace_of_order() -> list[tuple[str, ReadableSpan]]:
            every = [(svc, s) for svc, e in exporters.items() for s in e.get_finished_spans()]
            create = _named(every, "order_svc", "paymesh.order.v1.OrderService/CreateOrder")
            return [(svc, s) for svc, s in every if s.context.trace_id == create.context.trace_id]

        def complete() -> bool:
            names = {(svc, s.name) for svc, s in trace_of_order()}
            last = {("webhook_svc", "process order.confirmed"), ("inventory_svc", "publish inventory.committed")}
            return last <= names

        await wait_for(complete, timeout=10, message="the order's last spans ended")
        spans = trace_of_order()

    def parent_of(span: ReadableSpan) -> int | None:
        return span.parent.span_id if span.parent is not None else None

    create = _named(spans, "order_svc", "paymesh.order.v1.OrderService/CreateOrder")
    chain = [
        ("order_svc", "publish order.placed", SpanKind.PRODUCER, create),
        ("inventory_svc", "process order.placed", SpanKind.CONSUMER, "order_svc:publish order.placed"),
        ("payment_svc", "process order.placed", SpanKind.CONSUMER, "order_svc:publish order.placed"),
        ("inventory_svc", "publish inventory.reserved", SpanKind.PRODUCER, "inventory_svc:process order.placed"),
        ("payment_svc", "process inventory.reserved", SpanKind.CONSUMER, "inventory_svc:publish inventory.reserved"),
        ("payment_svc", "paymesh.gateway.v1.GatewayService/Charge", SpanKind.CLIENT,
         "payment_svc:process inventory.reserved"),
        ("gateway_mock", "paymesh.gateway.v1.GatewayService/Charge", SpanKind.SERVER,
         "payment_svc:paymesh.gateway.v1.GatewayService/Charge"),
        ("payment_svc", "publish payment.succeeded", SpanKind.PRODUCER, "payment_svc:process inventory.reserved"),
        ("order_svc", "process inventory.reserved", SpanKind.CONSUMER, "inventory_svc:publish inventory.reserved"),
        ("order_svc", "process payment.succeeded", SpanKind.CONSUMER, "payment_svc:publish payment.succeeded"),
        ("order_svc", "publish order.confirmed", SpanKind.PRODUCER, "order_svc:process payment.succeeded"),
        ("inventory_svc", "process payment.succeeded", SpanKind.CONSUMER, "payment_svc:publish payment.succeeded"),
        ("inventory_svc", "publish inventory.committed", SpanKind.PRODUCER, "inventory_svc:process payment.succeeded"),
        ("webhook_svc", "process order.confirmed", SpanKind.CONSUMER, "order_svc:publish order.confirmed"),
    ]
    assert create.kind is SpanKind.SERVER and create.resource.attributes["service.name"] == "order_svc"
    for service, name, kind, parent in chain:
        span = _named(spans, service, name)
        expected = parent if not isinstance(parent, str) else _named(spans, *parent.split(":", 1))
        assert span.kind is kind, (service, name, span.kind)
        assert parent_of(span) == expected.context.span_id, f"{service} {name} is not a child of {parent}"
        assert span.resource.attributes["service.name"] == service
        if kind is SpanKind.CONSUMER:
            assert span.attributes["messaging.system"] == "nats"
            assert span.attributes["messaging.destination.name"].endswith(order.order_id)
            assert span.attributes["messaging.nats.delivery_count"] == 1
    charge = _named(spans, "payment_svc", "paymesh.gateway.v1.GatewayService/Charge")
    assert charge.attributes["paymesh.outcome"] == "approved"
    services = {svc for svc, _ in spans}
    assert {"order_svc", "inventory_svc", "payment_svc", "gateway_mock"} <= services
