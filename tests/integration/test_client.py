"""`paymesh.client.MeshClient` against in-process gRPC servers that refuse on cue: the same request id on
every retry, bounded attempts, refusals passed through unchanged, deadlines, the watch stream, from_env."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from paymesh.chassis.auth import ApiKey
from paymesh.chassis.backoff import Backoff
from paymesh.client import MeshClient, Retry, every
from paymesh.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from paymesh.ops.credentials import KeyFile, write_private
from paymesh.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc

FAST = Retry(attempts=3, backoff=Backoff(base_s=0.001, cap_s=0.002))


@dataclass
class Script:
    """What the fake services do: refuse the first `refusals` calls with `code`, and record every request."""

    refusals: int = 0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    requests: list[Any] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    # The `authorization` metadata of each call, by method name.
    keys: list[tuple[str, str | None]] = field(default_factory=list)

    async def answer(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.requests.append(request)
        sent = [str(v) for k, v in context.invocation_metadata() or () if k == "authorization"]
        self.keys.append((type(request).__name__, sent[0] if sent else None))
        if len(self.requests) <= self.refusals:
            await context.abort(self.code, f"refusal {len(self.requests)}")


class Orders(order_service_pb2_grpc.OrderServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def CreateOrder(self, request: Any, context: Any) -> order_service_pb2.CreateOrderResponse:
        await self.script.answer(request, context)
        order = order_pb2.Order(order_id="ord_1", customer_id=request.customer_id, items=request.items)
        return order_service_pb2.CreateOrderResponse(order=order)

    async def GetOrder(self, request: Any, context: Any) -> order_service_pb2.GetOrderResponse:
        await self.script.answer(request, context)
        await self.script.released.wait()  # held until the test lets go: the caller's deadline decides
        return order_service_pb2.GetOrderResponse(order=order_pb2.Order(order_id=request.order_id))

    async def ListOrders(self, request: Any, context: Any) -> order_service_pb2.ListOrdersResponse:
        await self.script.answer(request, context)
        page = int(request.page_token or "0")
        following = str(page + 1) if page < 2 else ""
        orders = [order_pb2.Order(order_id=f"ord_{page}")]
        return order_service_pb2.ListOrdersResponse(orders=orders, next_page_token=following)

    async def WatchOrder(self, request: Any, context: Any) -> AsyncIterator[order_service_pb2.WatchOrderResponse]:
        sent = [str(v) for k, v in context.invocation_metadata() or () if k == "authorization"]
        self.script.keys.append((type(request).__name__, sent[0] if sent else None))
        for status in (order_pb2.ORDER_STATUS_PENDING, order_pb2.ORDER_STATUS_AWAITING_PAYMENT):
            yield order_service_pb2.WatchOrderResponse(order=order_pb2.Order(order_id=request.order_id, status=status))
        await self.script.released.wait()  # open until the client cancels it
        yield order_service_pb2.WatchOrderResponse(
            order=order_pb2.Order(order_id=request.order_id, status=order_pb2.ORDER_STATUS_CONFIRMED)
        )


class Gateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def Charge(self, request: Any, context: Any) -> gateway_service_pb2.ChargeResponse:
        await self.script.answer(request, context)
        return gateway_service_pb2.ChargeResponse(charge=gateway_pb2.Charge(charge_id="ch_1"))

    async def Configure(self, request: Any, context: Any) -> gateway_service_pb2.ConfigureResponse:
        await self.script.answer(request, context)
        return gateway_service_pb2.ConfigureResponse(config=gateway_pb2.FaultConfig(latency_ms=request.latency_ms))


@pytest.fixture
async def script() -> Script:
    return Script()


@pytest.fixture
async def addr(script: Script) -> AsyncIterator[str]:
    server = grpc.aio.server()
    order_service_pb2_grpc.add_OrderServiceServicer_to_server(Orders(script), server)
    gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(Gateway(script), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    script.released.set()
    await server.stop(None)


@pytest.fixture
async def client(addr: str) -> AsyncIterator[MeshClient]:
    async with MeshClient(order=addr, inventory=addr, payment=addr, gateway=addr, retry=FAST) as client:
        yield client


async def create(client: MeshClient, **kw: Any) -> order_pb2.Order:
    return await client.create_order(
        customer_id="cus_1", items=[("sku-mug", 2, 1250)], currency="USD", payment_method_token="tok_visa", **kw
    )


async def test_unavailable_is_sent_again_with_the_same_request_id(client: MeshClient, script: Script) -> None:
    script.refusals = 2
    order = await create(client)
    assert order.order_id == "ord_1" and [(i.sku, i.quantity, i.unit_price_minor) for i in order.items] == [
        ("sku-mug", 2, 1250)
    ]
    ids = [r.request_id for r in script.requests]
    assert len(ids) == 3 and len(set(ids)) == 1 and len(ids[0]) == 36  # one UUID, sent three times


async def test_a_given_request_id_is_the_one_sent(client: MeshClient, script: Script) -> None:
    await create(client, request_id="7d6b4c2e-0000-4000-8000-000000000001")
    await create(client)
    assert script.requests[0].request_id == "7d6b4c2e-0000-4000-8000-000000000001"
    assert script.requests[1].request_id not in ("", script.requests[0].request_id)  # a new one per command


async def test_retries_are_bounded_and_the_last_refusal_is_the_callers(client: MeshClient, script: Script) -> None:
    script.refusals = 10
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create(client)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and refused.value.details() == "refusal 3"
    assert len(script.requests) == FAST.attempts


async def test_a_refusal_other_than_unavailable_is_not_retried(client: MeshClient, script: Script) -> None:
    script.refusals, script.code = 1, grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.charge(merchant_id="mer_a", amount_minor=100, currency="USD", payment_method_token="tok_visa",
                            idempotency_key="k1")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [r.idempotency_key for r in script.requests] == ["k1"]


async def test_a_retry_policy_can_take_more_codes_within_a_time_bound(addr: str, script: Script) -> None:
    patient = Retry(
        attempts=100,
        codes=frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}),
        backoff=Backoff(base_s=0.001, cap_s=0.002),
        within_s=30.0,
    )
    script.refusals, script.code = 5, grpc.StatusCode.ABORTED
    async with MeshClient(order=addr, inventory=addr, payment=addr, gateway=addr, retry=patient) as client:
        assert (await create(client)).order_id == "ord_1"
    assert len(script.requests) == 6


async def test_every_call_has_a_deadline_the_caller_can_shorten(addr: str, script: Script) -> None:
    async with MeshClient(order=addr, inventory=addr, payment=addr, gateway=addr, timeout_s=0.2) as client:
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await client.get_order("ord_1")
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(script.requests) == 1  # DEADLINE_EXCEEDED is not retried by default
        with pytest.raises(grpc.aio.AioRpcError) as later:
            await client.get_order("ord_1", timeout=0.05)
        assert later.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_list_gives_its_page_and_every_walks_them_all(client: MeshClient, script: Script) -> None:
    page = await client.list_orders(customer_id="cus_1", page_size=1)
    assert [o.order_id for o in page.items] == ["ord_0"] and page.next_page_token == "1"
    orders = await every(lambda token: client.list_orders(customer_id="cus_1", page_token=token))
    assert [o.order_id for o in orders] == ["ord_0", "ord_1", "ord_2"]
    assert {r.customer_id for r in script.requests} == {"cus_1"}


async def test_a_watch_yields_each_state_and_is_cancelled_when_left(client: MeshClient) -> None:
    seen = []
    async with client.watch_order("ord_1") as changes:
        async for order in changes:
            seen.append(order.status)
            if order.status == order_pb2.ORDER_STATUS_AWAITING_PAYMENT:
                break
    assert seen == [order_pb2.ORDER_STATUS_PENDING, order_pb2.ORDER_STATUS_AWAITING_PAYMENT]
    assert changes.call.cancelled()


async def test_gateway_settings_left_out_keep_their_value(client: MeshClient, script: Script) -> None:
    config = await client.configure_gateway(latency_ms=0)
    assert config.latency_ms == 0
    await client.configure_gateway(reset=True)
    first, second = script.requests
    assert first.HasField("latency_ms") and not first.HasField("decline_rate") and not first.reset
    assert second.reset and not second.HasField("latency_ms")


async def test_from_env_reads_each_services_address_with_the_documented_defaults() -> None:
    env = {"ORDER_SVC_GRPC_ADDR": "[::]:41051", "GATEWAY_MOCK_GRPC_ADDR": "0.0.0.0:41054"}
    async with MeshClient.from_env(env) as client:
        assert client.addrs == {
            "order": "[::]:41051",
            "inventory": "127.0.0.1:50052",
            "payment": "127.0.0.1:50053",
            "gateway": "0.0.0.0:41054",
            "webhook": "127.0.0.1:50055",
        }
    async with MeshClient.from_env({}) as client:
        assert list(client.addrs.values()) == [f"127.0.0.1:{p}" for p in (50051, 50052, 50053, 50054, 50055)]


MERCHANT_KEY, PLATFORM_KEY, OPERATOR_KEY = "sk_mesh_" + "m" * 43, "pl_mesh_" + "p" * 43, "ok_mesh_" + "o" * 43


async def test_each_call_carries_the_key_of_its_party(addr: str, script: Script) -> None:
    """The merchant's key to its services, the platform's to the bank, the operator's for Configure."""
    async with MeshClient(order=addr, inventory=addr, payment=addr, gateway=addr, retry=FAST, api_key=MERCHANT_KEY,
                          platform_key=PLATFORM_KEY, operator_key=OPERATOR_KEY) as client:
        await create(client)
        async with client.watch_order("ord_1") as watch:
            await anext(watch)
        await client.charge(merchant_id="mer_a", amount_minor=100, currency="USD", payment_method_token="tok_visa")
        await client.configure_gateway(latency_ms=5)
    assert script.keys == [
        ("CreateOrderRequest", f"Bearer {MERCHANT_KEY}"),
        ("WatchOrderRequest", f"Bearer {MERCHANT_KEY}"),
        ("ChargeRequest", f"Bearer {PLATFORM_KEY}"),
        ("ConfigureRequest", f"Bearer {OPERATOR_KEY}"),
    ]


async def test_from_env_takes_keys_from_the_environment_else_the_data_dir(addr: str, script: Script,
                                                                          tmp_path: Any) -> None:
    addrs = {f"{p}_GRPC_ADDR": addr for p in ("ORDER_SVC", "INVENTORY_SVC", "PAYMENT_SVC", "GATEWAY_MOCK")}
    kept = KeyFile("mer_dev", "key_dev", ApiKey(MERCHANT_KEY))
    write_private(tmp_path / "dev_key.json", kept.to_json())
    write_private(tmp_path / "platform_key", PLATFORM_KEY + "\n")
    async with MeshClient.from_env({**addrs, "PAYMESH_DATA_DIR": str(tmp_path)}, retry=FAST) as client:
        await create(client)
        await client.charge(merchant_id="mer_a", amount_minor=1, currency="USD", payment_method_token="tok_visa")
    other = "sk_mesh_" + "x" * 43
    async with MeshClient.from_env({**addrs, "PAYMESH_DATA_DIR": str(tmp_path), "PAYMESH_API_KEY": other},
                                   retry=FAST) as client:
        await create(client)
    assert [key for _, key in script.keys] == [f"Bearer {MERCHANT_KEY}", f"Bearer {PLATFORM_KEY}", f"Bearer {other}"]
