"""The gRPC host of a service: health, reflection, rich errors, graceful stop; real NATS and stores."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from paymesh.chassis.auth.bearer import bearer
from paymesh.chassis.service import StartupError
from paymesh.ops.natsserver import NatsServer
from paymesh.order.v1 import order_service_pb2, order_service_pb2_grpc
from tests.conftest import wait_for
from tests.integration.chassis_harness import make_host, settings_for, stream_messages
from tests.keys import key_for

pytestmark = pytest.mark.timeout(60)


async def test_health_reflection_errors_and_outbox(nats_server: NatsServer, db_url: str, tmp_path: Any) -> None:
    settings = settings_for(nats_server, db_url, tmp_path)
    key = await key_for(nats_server.url)
    host = make_host(settings)
    await host.start()
    try:
        async with grpc.aio.insecure_channel(settings.grpc_addr, interceptors=bearer(key)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ["", "paymesh.order.v1.OrderService"]:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

            refl = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {s.name async for r in responses for s in r.list_services_response.service}
            assert {"paymesh.order.v1.OrderService", "grpc.health.v1.Health"} <= names

            orders = order_service_pb2_grpc.OrderServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await orders.GetOrder(order_service_pb2.GetOrderRequest(order_id="o-404"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            status = rpc_status.from_call(err.value)
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            assert (info.reason, info.domain, dict(info.metadata)) == ("ORDER_NOT_FOUND", "paymesh.dev",
                                                                       {"order_id": "o-404"})

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await orders.CreateOrder(order_service_pb2.CreateOrderRequest())
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "items: at least one line item is required" in err.value.details()
            bad = error_details_pb2.BadRequest()
            assert rpc_status.from_call(err.value).details[1].Unpack(bad)
            assert [v.field for v in bad.field_violations] == ["items", "currency"]

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await orders.ListOrders(order_service_pb2.ListOrdersRequest())
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert "a bug" not in err.value.details(), "internals do not leak to clients"

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await orders.CancelOrder(order_service_pb2.CancelOrderRequest())
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

            await orders.CreateOrder(order_service_pb2.CreateOrderRequest(items=[{"sku": "x"}]))
            assert host.runtime.nc is not None
            nc = host.runtime.nc
            await wait_for(lambda: _stream_count(nc, "ORDER", 1), message="event relayed after commit")
            messages = await stream_messages(nc, "ORDER")
            assert [s for s, _, _ in messages] == ["order.placed.o-from-rpc"]
    finally:
        await host.stop()
    # Stopped: the port no longer answers.
    async with grpc.aio.insecure_channel(settings.grpc_addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)


async def _stream_count(nc: Any, stream: str, count: int) -> bool:
    info = await nc.jetstream().stream_info(stream)
    return bool(info.state.messages == count)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_taken_port_is_a_clear_startup_error(nats_server: NatsServer, db_url: str, tmp_path: Any) -> None:
    first = make_host(settings_for(nats_server, db_url, tmp_path))
    await first.start()
    try:
        second = make_host(first.runtime.settings)
        with pytest.raises(StartupError, match="is it in use\\? set ORDER_SVC_GRPC_ADDR"):
            await second.start()
        await second.stop()
    finally:
        await first.stop()
