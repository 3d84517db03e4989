"""API keys on a real nats-server: two replicas' registries follow one bucket; the interceptor on a real gRPC server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from nats.aio.client import Client as NATS

from paymesh.chassis import jetstream
from paymesh.chassis.auth import (
    MERCHANT_SCOPES,
    ApiKeyExpired,
    ApiKeyInvalid,
    ApiKeyRevoked,
    AuthInterceptor,
    KeyNotFound,
    KeyRegistry,
    KeyStore,
    Pepper,
    Principal,
    RateLimiter,
    Scope,
    UndeclaredScopes,
    current_principal,
    requires,
    scopes_of,
)
from paymesh.chassis.auth.bucket import ensure_bucket, entry_name
from paymesh.chassis.auth.keys import new_key
from paymesh.chassis.errors import FailedPrecondition, ServiceError
from paymesh.chassis.metrics import Metrics
from paymesh.chassis.observability import CallInterceptor
from paymesh.chassis.tracing import Tracing
from paymesh.ops.natsserver import NatsServer, free_port
from paymesh.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(60)

PEPPER = Pepper(b"integration-pepper-" + b"x" * 32)
ORDER_SERVICE = "paymesh.order.v1.OrderService"


@dataclass
class Mesh:
    """What a test needs: an operator's store, and one registry per service replica."""

    nats: NatsServer
    store: KeyStore
    replicas: list[KeyRegistry]
    connections: list[NATS]

    async def replica(self) -> KeyRegistry:
        nc = await jetstream.connect([self.nats.url], f"replica-{len(self.connections)}")
        self.connections.append(nc)
        registry = KeyRegistry(nc, PEPPER)
        await registry.start()
        self.replicas.append(registry)
        return registry


@pytest.fixture
async def mesh(nats_server: NatsServer) -> AsyncIterator[Mesh]:
    operator = await jetstream.connect([nats_server.url], "operator")
    mesh = Mesh(nats_server, await KeyStore.open(operator.jetstream(), PEPPER), [], [operator])
    await mesh.replica()
    await mesh.replica()
    try:
        yield mesh
    finally:
        for registry in mesh.replicas:
            await registry.stop()
        for nc in mesh.connections:
            await nc.close()


def refusal(registry: KeyRegistry, secret: str) -> type[ServiceError] | None:
    """The refusal a replica answers for this key now, None if it admits it."""
    try:
        registry.lookup(secret)
    except ServiceError as exc:
        return type(exc)
    return None


async def all_answer(mesh: Mesh, secret: str, expected: type[ServiceError] | None, timeout: float = 5.0) -> float:
    """Seconds until every replica answers `expected` for the key."""
    start = time.monotonic()
    await wait_for(lambda: all(refusal(r, secret) is expected for r in mesh.replicas), timeout=timeout,
                   message=f"every replica answering {expected.__name__ if expected else 'admitted'}")
    return time.monotonic() - start


async def test_a_created_key_works_on_both_replicas_and_a_revoked_one_is_refused_within_2s(mesh: Mesh) -> None:
    record, secret = await mesh.store.create("m_acme", frozenset({Scope.ORDERS_READ, Scope.ORDERS_WRITE}))
    await all_answer(mesh, secret.reveal(), None)
    principal = mesh.replicas[0].lookup(secret.reveal())
    assert principal == Principal("m_acme", record.key_id, record.scopes, is_operator=False)
    tampered = secret.reveal()[:-1] + ("1" if secret.reveal().endswith("0") else "0")
    assert refusal(mesh.replicas[1], tampered) is ApiKeyInvalid
    assert refusal(mesh.replicas[1], "sk_mesh_" + "A" * 43) is ApiKeyInvalid

    revoked = await mesh.store.revoke(record.key_id)
    assert revoked.revoked_at is not None
    elapsed = await all_answer(mesh, secret.reveal(), ApiKeyRevoked, timeout=2.0)
    assert elapsed < 2.0
    again = await mesh.store.revoke(record.key_id)
    assert again.revoked_at == revoked.revoked_at, "revoking twice keeps the first time"
    with pytest.raises(FailedPrecondition, match="is revoked"):
        await mesh.store.roll(record.key_id, timedelta(hours=1))
    with pytest.raises(KeyNotFound):
        await mesh.store.revoke("key_nope")


async def test_a_roll_keeps_the_old_key_for_the_grace_only(mesh: Mesh) -> None:
    old, old_secret = await mesh.store.create("m_acme", MERCHANT_SCOPES)
    await all_answer(mesh, old_secret.reveal(), None)
    rolled_at = datetime.now(UTC)
    grace = timedelta(seconds=1)
    new, new_secret = await mesh.store.roll(old.key_id, grace, now=rolled_at)
    assert new.key_id != old.key_id and new.scopes == old.scopes and new.merchant_id == "m_acme"
    await all_answer(mesh, new_secret.reveal(), None)
    await wait_for(lambda: all((r.record(old.key_id) or old).replaced_by == new.key_id for r in mesh.replicas),
                   message="the roll seen by every replica")
    for registry in mesh.replicas:
        # Within the grace both keys work, after it only the new one.
        during = rolled_at + grace / 2
        assert registry.lookup(old_secret.reveal(), now=during).key_id == old.key_id
        assert registry.lookup(new_secret.reveal(), now=during).key_id == new.key_id
        with pytest.raises(ApiKeyExpired):
            registry.lookup(old_secret.reveal(), now=rolled_at + grace)
    # And on the real clock: the old key is refused once the grace is over.
    await all_answer(mesh, old_secret.reveal(), ApiKeyExpired, timeout=grace.total_seconds() + 3)
    assert refusal(mesh.replicas[0], new_secret.reveal()) is None
    listed = await mesh.store.list("m_acme")
    assert [r.key_id for r in listed] == [old.key_id, new.key_id]
    assert await mesh.store.list("m_other") == []


async def test_an_expired_key_is_refused(mesh: Mesh) -> None:
    now = datetime.now(UTC)
    expired, secret = new_key(PEPPER, "m_acme", frozenset({Scope.ORDERS_READ}), now - timedelta(hours=2),
                              expires_in=timedelta(hours=1))
    await mesh.store.put(expired)
    await all_answer(mesh, secret.reveal(), ApiKeyExpired)
    with pytest.raises(ApiKeyExpired) as err:
        mesh.replicas[0].lookup(secret.reveal())
    assert expired.key_id in err.value.message and secret.reveal() not in err.value.message


async def test_a_deleted_or_purged_entry_is_forgotten(mesh: Mesh) -> None:
    kv = await ensure_bucket(mesh.connections[0].jetstream())
    first, first_secret = await mesh.store.create("m_acme", frozenset({Scope.ORDERS_READ}))
    second, second_secret = await mesh.store.create("m_acme", frozenset({Scope.ORDERS_READ}))
    await all_answer(mesh, second_secret.reveal(), None)
    await kv.delete(entry_name(first.key_id))
    await kv.purge(entry_name(second.key_id))
    await all_answer(mesh, first_secret.reveal(), ApiKeyInvalid)
    await all_answer(mesh, second_secret.reveal(), ApiKeyInvalid)
    assert all(len(r) == 0 for r in mesh.replicas)
    assert await mesh.store.list() == []


async def test_a_registry_started_after_the_writes_knows_every_key(mesh: Mesh) -> None:
    live, live_secret = await mesh.store.create("m_acme", frozenset({Scope.ORDERS_READ}))
    gone, gone_secret = await mesh.store.create("m_beta", frozenset({Scope.CATALOG_READ}))
    op, op_secret = await mesh.store.create("platform", frozenset(), operator=True)
    rolled, rolled_secret = await mesh.store.roll(live.key_id, timedelta(hours=1))
    await mesh.store.revoke(gone.key_id)
    restarted = await mesh.replica()  # start() returns only once the bucket's keys are in
    assert len(restarted) == 4
    assert restarted.lookup(live_secret.reveal()).key_id == live.key_id
    assert restarted.lookup(rolled_secret.reveal()).key_id == rolled.key_id
    assert restarted.lookup(op_secret.reveal()).is_operator
    with pytest.raises(ApiKeyRevoked):
        restarted.lookup(gone_secret.reveal())
    assert {r.key_id for r in await mesh.store.list()} == {live.key_id, gone.key_id, op.key_id, rolled.key_id}


async def test_the_registry_follows_the_bucket_across_a_nats_restart(mesh: Mesh) -> None:
    record, secret = await mesh.store.create("m_acme", frozenset({Scope.ORDERS_READ}))
    await all_answer(mesh, secret.reveal(), None)
    await asyncio.to_thread(mesh.nats.restart)
    # Each registry makes its watcher again once its connection is back, and reloads.
    await wait_for(lambda: all(r.loads == 2 for r in mesh.replicas), timeout=15, message="reload after reconnect")
    assert refusal(mesh.replicas[0], secret.reveal()) is None, "keys served throughout"
    await mesh.store.revoke(record.key_id)
    assert await all_answer(mesh, secret.reveal(), ApiKeyRevoked, timeout=2.0) < 2.0


# --- the interceptor, on a real gRPC server with OrderService's generated stubs ---------------------------


class GuardedOrders(order_service_pb2_grpc.OrderServiceServicer):
    """Three RPCs implemented, the others declared: the shape every servicer takes."""

    def __init__(self) -> None:
        self.seen: list[Principal] = []

    @requires(Scope.ORDERS_READ)
    async def GetOrder(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        principal = current_principal()
        self.seen.append(principal)
        return order_service_pb2.GetOrderResponse(
            order=order_pb2.Order(order_id=request.order_id, customer_id=principal.merchant_id))

    @requires(Scope.ORDERS_WRITE)
    async def CreateOrder(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.seen.append(current_principal())
        return order_service_pb2.CreateOrderResponse()

    @requires(Scope.ORDERS_READ)
    async def WatchOrder(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        for n in range(2):
            yield order_service_pb2.WatchOrderResponse(
                order=order_pb2.Order(order_id=f"{request.order_id}-{n}", customer_id=current_principal().merchant_id))

    @requires(Scope.ORDERS_READ)
    async def ListOrders(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise NotImplementedError

    @requires(Scope.ORDERS_WRITE)
    async def CancelOrder(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise NotImplementedError


class ForgetfulOrders(order_service_pb2_grpc.OrderServiceServicer):
    @requires(Scope.ORDERS_READ)
    async def GetOrder(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise NotImplementedError


async def serve(registry: KeyRegistry, limiter: RateLimiter | None = None,
                clock: Callable[[], float] = time.monotonic) -> tuple[grpc.aio.Server, str, GuardedOrders]:
    servicer = GuardedOrders()
    auth = AuthInterceptor(registry, scopes_of(servicer, ORDER_SERVICE), limiter=limiter, clock=clock)
    telemetry = SimpleNamespace(metrics=Metrics("test"), tracing=Tracing())
    server = grpc.aio.server(interceptors=[CallInterceptor(telemetry), auth])
    order_service_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    addr = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(addr)
    await server.start()
    return server, addr, servicer


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def test_the_interceptor_answers_as_design_md_says(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reader, reader_secret = await mesh.store.create("m_acme", frozenset({Scope.ORDERS_READ}))
    await all_answer(mesh, reader_secret.reveal(), None)
    server, addr, servicer = await serve(mesh.replicas[0])
    try:
        async with grpc.aio.insecure_channel(addr) as channel:
            orders = order_service_pb2_grpc.OrderServiceStub(channel)
            get = order_service_pb2.GetOrderRequest(order_id="ord_1")

            err = await refused(orders.GetOrder(get))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and error_info(err).reason == "API_KEY_MISSING"

            unknown = "sk_mesh_" + "Z" * 43
            err = await refused(orders.GetOrder(get, metadata=bearer(unknown)))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and error_info(err).reason == "API_KEY_INVALID"
            assert unknown not in (err.details() or "")

            err = await refused(orders.CreateOrder(order_service_pb2.CreateOrderRequest(),
                                                   metadata=bearer(reader_secret.reveal())))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            info = error_info(err)
            assert (info.reason, info.metadata["scope"]) == ("SCOPE_MISSING", "orders:write")
            assert reader_secret.reveal() not in (err.details() or "") + str(dict(info.metadata))

            reply = await orders.GetOrder(get, metadata=bearer(reader_secret.reveal()))
            assert reply.order.customer_id == "m_acme"
            assert servicer.seen == [Principal("m_acme", reader.key_id, reader.scopes, is_operator=False)]
            watched = [r.order async for r in orders.WatchOrder(order_service_pb2.WatchOrderRequest(order_id="ord_1"),
                                                                  metadata=bearer(reader_secret.reveal()))]
            assert [(o.order_id, o.customer_id) for o in watched] == [("ord_1-0", "m_acme"), ("ord_1-1", "m_acme")]
            err = await refused(orders.WatchOrder(order_service_pb2.WatchOrderRequest(order_id="ord_1")).read())
            assert error_info(err).reason == "API_KEY_MISSING"
            # Declared but not implemented yet: past the check, the chassis answers UNIMPLEMENTED.
            err = await refused(orders.ListOrders(order_service_pb2.ListOrdersRequest(),
                                                  metadata=bearer(reader_secret.reveal())))
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED

            await mesh.store.revoke(reader.key_id)
            await all_answer(mesh, reader_secret.reveal(), ApiKeyRevoked, timeout=2.0)
            err = await refused(orders.GetOrder(get, metadata=bearer(reader_secret.reveal())))
            info = error_info(err)
            assert (err.code(), info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")
            assert info.metadata["key_id"] == reader.key_id

            probe = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert probe.status == health_pb2.HealthCheckResponse.SERVING, "health needs no key"
    finally:
        await server.stop(None)
    assert caplog.text and reader_secret.reveal() not in caplog.text and unknown not in caplog.text


async def test_the_merchants_rate_is_refused_with_retry_info(mesh: Mesh) -> None:
    _, secret = await mesh.store.create("m_acme", frozenset({Scope.ORDERS_READ}))
    _, other_secret = await mesh.store.create("m_beta", frozenset({Scope.ORDERS_READ}))
    await all_answer(mesh, other_secret.reveal(), None)
    await all_answer(mesh, secret.reveal(), None)
    server, addr, _ = await serve(mesh.replicas[1], RateLimiter(rate_per_s=2, burst=2), clock=lambda: 1000.0)
    try:
        async with grpc.aio.insecure_channel(addr) as channel:
            orders = order_service_pb2_grpc.OrderServiceStub(channel)
            get = order_service_pb2.GetOrderRequest(order_id="ord_1")
            for _ in range(2):
                await orders.GetOrder(get, metadata=bearer(secret.reveal()))
            err = await refused(orders.GetOrder(get, metadata=bearer(secret.reveal())))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            status = rpc_status.from_call(err)  # type: ignore[arg-type]
            assert status is not None
            info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
            assert status.details[0].Unpack(info) and status.details[1].Unpack(retry)
            assert (info.reason, info.metadata["merchant_id"]) == ("RATE_LIMITED", "m_acme")
            assert retry.retry_delay.ToMilliseconds() == 500
            await orders.GetOrder(get, metadata=bearer(other_secret.reveal()))  # another merchant is not slowed
    finally:
        await server.stop(None)


def test_a_servicer_with_an_undeclared_rpc_is_refused_at_start() -> None:
    with pytest.raises(UndeclaredScopes) as err:
        scopes_of(ForgetfulOrders(), ORDER_SERVICE)
    for name in ("CreateOrder", "ListOrders", "CancelOrder", "WatchOrder"):
        assert name in str(err.value)
    assert "GetOrder," not in str(err.value)
    assert scopes_of(GuardedOrders(), ORDER_SERVICE) == {
        "/paymesh.order.v1.OrderService/CreateOrder": Scope.ORDERS_WRITE,
        "/paymesh.order.v1.OrderService/GetOrder": Scope.ORDERS_READ,
        "/paymesh.order.v1.OrderService/ListOrders": Scope.ORDERS_READ,
        "/paymesh.order.v1.OrderService/CancelOrder": Scope.ORDERS_WRITE,
        "/paymesh.order.v1.OrderService/WatchOrder": Scope.ORDERS_READ,
    }
    with pytest.raises(ValueError, match="no service paymesh.nope.v1.X"):
        scopes_of(GuardedOrders(), "paymesh.nope.v1.X")


def test_current_principal_outside_a_call_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no authenticated caller"):
        current_principal()



async def test_last_use_is_kept_coarse_and_never_per_call(mesh: Mesh) -> None:
    """Each admitted call is a dict store; the flush writes a key's last use at most once per grain per replica,
    and a key never used has none."""
    used, used_secret = await mesh.store.create("m_acme", MERCHANT_SCOPES)
    idle, _ = await mesh.store.create("m_acme", MERCHANT_SCOPES)
    await all_answer(mesh, used_secret.reveal(), None)
    replica = mesh.replicas[0]
    start = datetime.now(UTC)
    for _ in range(100):
        replica.lookup(used_secret.reveal())
    await replica.flush_last_use()
    first = await mesh.store.last_used(used.key_id)
    assert first is not None and abs(first - start) < timedelta(seconds=5)
    assert await mesh.store.last_used(idle.key_id) is None
    kv = await ensure_bucket(mesh.connections[0].jetstream())
    revision = (await kv.get(f"used.{used.key_id}")).revision
    replica.lookup(used_secret.reveal())  # within the grain: nothing new written
    await replica.flush_last_use()
    assert (await kv.get(f"used.{used.key_id}")).revision == revision
    later = start + timedelta(minutes=6)
    replica.lookup(used_secret.reveal(), now=later)
    await replica.flush_last_use()
    assert await mesh.store.last_used(used.key_id) == later.replace(microsecond=0)
    assert replica.lookup(used_secret.reveal()).key_id == used.key_id, "the used. entry is no key to the registry"
