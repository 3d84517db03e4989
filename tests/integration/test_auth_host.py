"""The key check as every service runs it: ServiceHost installs it, two replicas follow one bucket, a
restarted host knows every key, an RPC without a scope cannot start; real NATS and stores."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from paymesh.chassis.auth import KeyStore, Pepper, Scope, requires
from paymesh.chassis.auth.bearer import bearer
from paymesh.chassis.auth.keys import TrustedKey, new_platform_key
from paymesh.chassis.config import Settings
from paymesh.chassis.service import GrpcService, Runtime, ServiceHost, StartupError, Wiring
from paymesh.ops.natsserver import NatsServer
from paymesh.order.v1 import order_service_pb2, order_service_pb2_grpc
from tests.conftest import wait_for
from tests.integration.chassis_harness import REFUSING_SPEC, RefusingOrders, make_host, settings_for
from tests.keys import MERCHANT_A, MERCHANT_B, TEST_PEPPER, issue

pytestmark = pytest.mark.timeout(60)
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the store is not what is tested


def reason(err: grpc.aio.AioRpcError) -> str:
    info = error_details_pb2.ErrorInfo()
    status = rpc_status.from_call(err)
    assert status is not None and status.details[0].Unpack(info)
    return info.reason


async def get_order_refused(addr: str, key: str | None) -> grpc.aio.AioRpcError:
    """The refusal of GetOrder of an unknown id: NOT_FOUND once admitted, else the key check's."""
    async with grpc.aio.insecure_channel(addr, interceptors=bearer(key)) as channel:
        try:
            await order_service_pb2_grpc.OrderServiceStub(channel).GetOrder(
                order_service_pb2.GetOrderRequest(order_id="o-none"), timeout=5)
        except grpc.aio.AioRpcError as err:
            return err
    raise AssertionError("GetOrder of an unknown order answered")


async def get_order(addr: str, key: str | None) -> grpc.StatusCode:
    return (await get_order_refused(addr, key)).code()


@sqlite_only
async def test_the_host_admits_a_key_and_hands_its_merchant_to_the_handler(
    nats_server: NatsServer, db_url: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    record, key = await issue(nats_server.url, MERCHANT_A, frozenset({Scope.ORDERS_WRITE}))
    host = make_host(settings_for(nats_server, db_url, tmp_path))
    await host.start()
    caplog.set_level(logging.DEBUG)
    try:
        addr = host.runtime.settings.grpc_addr
        async with grpc.aio.insecure_channel(addr, interceptors=bearer(key)) as channel:
            orders = order_service_pb2_grpc.OrderServiceStub(channel)
            await orders.CreateOrder(order_service_pb2.CreateOrderRequest(items=[{"sku": "x"}]))
            servicer = host.wiring.services[0].servicer
            assert [(p.merchant_id, p.key_id) for p in servicer.callers] == [(MERCHANT_A, record.key_id)]
            with pytest.raises(grpc.aio.AioRpcError) as err:  # the key holds orders:write only
                await orders.GetOrder(order_service_pb2.GetOrderRequest(order_id="o-1"))
            assert (err.value.code(), reason(err.value)) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
        assert await get_order(addr, None) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await host.stop()
    assert key not in caplog.text and key[12:] not in caplog.text, "a key's secret is in no log line"


@sqlite_only
async def test_concurrent_calls_of_two_merchants_each_see_their_own_caller(
    nats_server: NatsServer, db_url: str, tmp_path: Any
) -> None:
    keys = {m: (await issue(nats_server.url, m))[1] for m in (MERCHANT_A, MERCHANT_B)}
    host = make_host(settings_for(nats_server, db_url, tmp_path))
    await host.start()
    try:
        addr = host.runtime.settings.grpc_addr
        async with grpc.aio.insecure_channel(addr) as channel:
            orders = order_service_pb2_grpc.OrderServiceStub(channel)

            async def create(i: int) -> tuple[str, str]:
                merchant = (MERCHANT_A, MERCHANT_B)[i % 2]
                reply = await orders.CreateOrder(
                    order_service_pb2.CreateOrderRequest(request_id=f"o-{i}", items=[{"sku": "x"}]),
                    metadata=(("authorization", f"Bearer {keys[merchant]}"),))
                return merchant, reply.order.customer_id

            seen = await asyncio.gather(*(create(i) for i in range(40)))
        assert all(merchant == told for merchant, told in seen), seen
    finally:
        await host.stop()


@sqlite_only
async def test_a_revoked_key_is_refused_by_both_replicas_within_2s(
    nats_server: NatsServer, db_url: str, tmp_path: Any
) -> None:
    record, key = await issue(nats_server.url, MERCHANT_A)
    hosts = [make_host(settings_for(nats_server, f"sqlite+aiosqlite:///{tmp_path / f'r{i}.db'}", tmp_path / f"r{i}"))
             for i in (1, 2)]
    for host in hosts:
        await host.start()
    try:
        addrs = [h.runtime.settings.grpc_addr for h in hosts]
        assert [await get_order(a, key) for a in addrs] == [grpc.StatusCode.NOT_FOUND] * 2
        nc = hosts[0].runtime.nc
        assert nc is not None
        store = await KeyStore.open(nc.jetstream(), Pepper(TEST_PEPPER.encode()))
        revoked_at = time.monotonic()
        await store.revoke(record.key_id)

        async def refused_by_both() -> bool:
            return [await get_order(a, key) for a in addrs] == [grpc.StatusCode.UNAUTHENTICATED] * 2

        await wait_for(refused_by_both, timeout=2.0, message="the revoked key refused by both replicas")
        assert time.monotonic() - revoked_at < 2.0
    finally:
        for host in hosts:
            await host.stop()


@sqlite_only
async def test_a_restarted_host_knows_every_key_and_an_expired_one_is_refused(
    nats_server: NatsServer, db_url: str, tmp_path: Any
) -> None:
    _, lasting = await issue(nats_server.url, MERCHANT_A)
    _, brief = await issue(nats_server.url, MERCHANT_A, expires_in=timedelta(seconds=1))
    settings = settings_for(nats_server, db_url, tmp_path)
    first = make_host(settings)
    await first.start()
    await first.stop()
    again = make_host(settings)
    await again.start()
    try:
        assert await get_order(settings.grpc_addr, lasting) == grpc.StatusCode.NOT_FOUND
        await wait_for(lambda: _refused(settings.grpc_addr, brief, "API_KEY_EXPIRED"), timeout=5,
                       message="the expired key refused as API_KEY_EXPIRED")
    finally:
        await again.stop()


async def _refused(addr: str, key: str, expected: str) -> bool:
    err = await get_order_refused(addr, key)
    return err.code() == grpc.StatusCode.UNAUTHENTICATED and reason(err) == expected


@sqlite_only
async def test_a_trusted_key_from_settings_is_admitted_beside_the_bucket(
    nats_server: NatsServer, db_url: str, tmp_path: Any
) -> None:
    platform = new_platform_key()
    settings = settings_for(nats_server, db_url, tmp_path)
    runtime = Runtime(REFUSING_SPEC, settings)
    wiring = Wiring(services=[GrpcService("paymesh.order.v1.OrderService", RefusingOrders(runtime),
                                          order_service_pb2_grpc.add_OrderServiceServicer_to_server)],
                    trusted_keys=[TrustedKey("TEST_PLATFORM_KEY", platform, frozenset({Scope.ORDERS_READ}))])
    host = ServiceHost(runtime, wiring)
    await host.start()
    try:
        assert await get_order(settings.grpc_addr, platform.reveal()) == grpc.StatusCode.NOT_FOUND
        assert await get_order(settings.grpc_addr, new_platform_key().reveal()) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await host.stop()


@sqlite_only
async def test_the_rate_of_a_merchant_is_limited_per_replica(
    nats_server: NatsServer, db_url: str, tmp_path: Any
) -> None:
    _, key = await issue(nats_server.url, MERCHANT_A)
    settings = settings_for(nats_server, db_url, tmp_path, PAYMESH_RATE_LIMIT_RPS="1", PAYMESH_RATE_LIMIT_BURST="2")
    host = make_host(settings)
    await host.start()
    try:
        codes = [await get_order(settings.grpc_addr, key) for _ in range(3)]
        assert codes == [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED]
    finally:
        await host.stop()


class Unguarded(RefusingOrders):
    """A new RPC shipped without its scope: CancelOrder is overridden without @requires."""

    async def CancelOrder(self, request: Any, context: Any) -> Any:  # noqa: N802
        return order_service_pb2.CancelOrderResponse()


class Guarded(RefusingOrders):
    @requires(Scope.ORDERS_WRITE)
    async def CancelOrder(self, request: Any, context: Any) -> Any:  # noqa: N802
        return order_service_pb2.CancelOrderResponse()


async def test_an_rpc_that_declares_no_scope_stops_the_service_at_start(tmp_path: Any) -> None:
    settings = Settings.from_env(REFUSING_SPEC, {"ORDER_SVC_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 's.db'}",
                                                 "PAYMESH_DATA_DIR": str(tmp_path)})
    runtime = Runtime(REFUSING_SPEC, settings)

    def wiring(servicer: Any) -> Wiring:
        return Wiring(services=[GrpcService("paymesh.order.v1.OrderService", servicer,
                                            order_service_pb2_grpc.add_OrderServiceServicer_to_server)])

    with pytest.raises(StartupError, match="declares no scope for CancelOrder"):
        ServiceHost(runtime, wiring(Unguarded(runtime)))
    ServiceHost(runtime, wiring(Guarded(runtime)))  # the same, declared: it builds
