"""What an e2e test drives the mesh with: its environment, gRPC stubs of the four services, waits with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from paymesh.chassis.config import SERVICES
from paymesh.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from paymesh.inventory.v1 import inventory_pb2, inventory_service_pb2, inventory_service_pb2_grpc
from paymesh.ops.launcher import REPLICA_PORT_STEP, Mesh
from paymesh.ops.natsserver import free_port, port_is_free, reserve_port
from paymesh.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc
from paymesh.payment.v1 import payment_pb2, payment_service_pb2, payment_service_pb2_grpc

T = TypeVar("T")
OS = order_pb2.OrderStatus
PS = payment_pb2.PaymentStatus
CS = gateway_pb2.ChargeStatus
TERMINAL = frozenset(
    {
        OS.ORDER_STATUS_CONFIRMED,
        OS.ORDER_STATUS_REJECTED,
        OS.ORDER_STATUS_PAYMENT_FAILED,
        OS.ORDER_STATUS_CANCELLED,
        OS.ORDER_STATUS_REQUIRES_REVIEW,
    }
)
POLL_S = 0.05


def new_id() -> str:
    return str(uuid.uuid4())


def status_name(status: int) -> str:
    return OS.Name(status).removeprefix("ORDER_STATUS_")


def statuses(*names: str) -> frozenset[int]:
    return frozenset(OS.Value(f"ORDER_STATUS_{n}") for n in names)


async def eventually(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float, what: str) -> T:
    """Call `probe` until `accept` holds for its answer; fail at the deadline with the last answer."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        last = await probe()
        if accept(last):
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last}")
        await asyncio.sleep(POLL_S)  # re-reading a condition under a deadline


@dataclass
class RpcError:
    """A refused call, unpacked: status code, ErrorInfo reason and BadRequest fields (AIP-193)."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, err: grpc.aio.AioRpcError) -> RpcError:
        out = cls(err.code(), err.details() or "")
        status = rpc_status.from_call(err)
        for detail in status.details if status is not None else []:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                out.reason, out.metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(bad):
                out.fields += [v.field for v in bad.field_violations]
        return out


async def refused(call: Awaitable[Any]) -> RpcError:
    """The error of a call that must fail; fails the test if it succeeds."""
    try:
        answer = await call
    except grpc.aio.AioRpcError as err:
        return RpcError.of(err)
    raise AssertionError(f"expected the call to be refused, it answered {answer}")


def unique_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def replica_ports(count: int, replicas: int) -> list[int]:
    """`count` free ports p such that p + 100·(r−1) is free too for every replica r (the Mesh's layout)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        spread = [port + REPLICA_PORT_STEP * r for r in range(replicas)]
        taken = {p + REPLICA_PORT_STEP * r for p in ports for r in range(replicas)}
        others_free = all(port_is_free(p) and reserve_port(p) for p in spread[1:])
        if spread[-1] <= 65535 and not taken & set(spread) and others_free:
            ports.append(port)
    return ports


def mesh_env(
    data_dir: Path, db_urls: Mapping[str, str] | None = None, *, replicas: int = 1, **extra: str
) -> dict[str, str]:
    """The caller's environment without any PAYMESH_ or service setting, then free ports and `data_dir`.

    With `replicas`, every replica's port (the Mesh's: the first's + 100·(r−1)) is free too."""
    prefixes = tuple(f"{prefix}_" for prefix, _, _ in SERVICES.values()) + ("PAYMESH_",)
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    if replicas == 1:
        nats_port, *service_ports = unique_ports(len(SERVICES) + 1)
    else:
        nats_port, service_ports = free_port(), replica_ports(len(SERVICES), replicas)
    env["PAYMESH_DATA_DIR"] = str(data_dir)
    env["PAYMESH_NATS_PORT"] = str(nats_port)
    for (prefix, _, _), port in zip(SERVICES.values(), service_ports, strict=True):
        env[f"{prefix}_GRPC_ADDR"] = f"127.0.0.1:{port}"
    for service, url in (db_urls or {}).items():
        env[f"{SERVICES[service][0]}_DB_URL"] = url
    env.update(extra)
    return env


class Clients:
    """Generated stubs of the four services on one mesh, and the saga-level helpers built on them.

    `replica` picks which replica of each service the stubs dial (a service with fewer wraps around)."""

    def __init__(self, mesh: Mesh, replica: int = 1) -> None:
        self.mesh = mesh
        self.replica = replica
        self.channels: list[grpc.aio.Channel] = []
        self.order = order_service_pb2_grpc.OrderServiceStub(self._channel("order_svc"))
        self.inventory = inventory_service_pb2_grpc.InventoryServiceStub(self._channel("inventory_svc"))
        self.payment = payment_service_pb2_grpc.PaymentServiceStub(self._channel("payment_svc"))
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(self._channel("gateway_mock"))

    def _channel(self, service: str) -> grpc.aio.Channel:
        replica = (self.replica - 1) % self.mesh.replicas.get(service, 1) + 1
        channel = grpc.aio.insecure_channel(
            self.mesh.addr(service, replica),
            # A killed and restarted service is dialled again at once, not after gRPC's backoff.
            options=[("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)],
        )
        self.channels.append(channel)
        return channel

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Clients]:
        try:
            yield self
        finally:
            await self.close()

    # inventory

    async def put_product(self, available: int, sku: str | None = None, name: str = "") -> str:
        sku = sku or f"sku-{uuid.uuid4().hex[:10]}"
        await self.inventory.PutProduct(
            inventory_service_pb2.PutProductRequest(
                sku=sku, name=name or sku, available=available, request_id=new_id()
            ),
            timeout=10,
        )
        return sku

    async def product(self, sku: str) -> inventory_pb2.Product:
        reply = await self.inventory.GetProduct(inventory_service_pb2.GetProductRequest(sku=sku), timeout=10)
        return reply.product

    async def stock(self, sku: str) -> tuple[int, int, int]:
        """(available, reserved, sold)"""
        p = await self.product(sku)
        return p.available, p.reserved, p.sold

    async def wait_stock(self, sku: str, expected: tuple[int, int, int], timeout: float = 15.0) -> None:
        await eventually(lambda: self.stock(sku), lambda s: s == expected, timeout, f"stock of {sku} = {expected}")

    # orders

    def order_request(
        self,
        items: Iterable[tuple[str, int, int]],
        token: str = "tok_visa",
        customer_id: str | None = None,
        request_id: str | None = None,
        currency: str = "USD",
    ) -> order_service_pb2.CreateOrderRequest:
        return order_service_pb2.CreateOrderRequest(
            request_id=request_id or new_id(),
            customer_id=customer_id or f"cus_{uuid.uuid4().hex[:10]}",
            items=[order_pb2.LineItem(sku=s, quantity=q, unit_price_minor=p) for s, q, p in items],
            currency=currency,
            payment_method_token=token,
        )

    async def create_order(
        self, items: Iterable[tuple[str, int, int]], token: str = "tok_visa", **kw: Any
    ) -> order_pb2.Order:
        reply = await self.order.CreateOrder(self.order_request(items, token, **kw), timeout=10)
        return reply.order

    async def get_order(self, order_id: str) -> order_pb2.Order:
        return (await self.order.GetOrder(order_service_pb2.GetOrderRequest(order_id=order_id), timeout=10)).order

    async def cancel(
        self, order_id: str, reason: str = "customer asked", request_id: str | None = None
    ) -> order_pb2.Order:
        request = order_service_pb2.CancelOrderRequest(
            order_id=order_id, request_id=request_id or new_id(), reason=reason
        )
        return (await self.order.CancelOrder(request, timeout=10)).order

    async def wait_order(self, order_id: str, wanted: Iterable[int], timeout: float = 20.0) -> order_pb2.Order:
        """The order once its status is one of `wanted`: followed with WatchOrder, re-read with GetOrder
        when the stream ends or breaks; fails at the deadline, or when the order ends elsewhere."""
        wanted = frozenset(wanted)
        seen: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    order = await self._watch_until(order_id, wanted, seen)
                    if order.status in wanted:
                        return order
                    if order.status in TERMINAL and order.status != OS.ORDER_STATUS_CONFIRMED:
                        break  # ended somewhere else, and only CONFIRMED moves on (by a cancel)
                    await asyncio.sleep(POLL_S)  # the stream ended or failed: ask again, under the deadline
        except TimeoutError:
            pass
        want = ", ".join(status_name(s) for s in wanted)
        raise AssertionError(f"order {order_id} never reached {want}; statuses seen: {' -> '.join(seen) or 'none'}")

    async def _watch_until(self, order_id: str, wanted: frozenset[int], seen: list[str]) -> order_pb2.Order:
        order = await self.get_order(order_id)
        self._note(seen, order)
        if order.status in wanted or order.status in TERMINAL:
            return order
        try:
            stream = self.order.WatchOrder(order_service_pb2.WatchOrderRequest(order_id=order_id))
            async for reply in stream:
                order = reply.order
                self._note(seen, order)
                if order.status in wanted:
                    stream.cancel()
                    return order
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                return order
            if err.code() not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE):
                raise
        return order

    @staticmethod
    def _note(seen: list[str], order: order_pb2.Order) -> None:
        name = status_name(order.status) + (f" ({order.failure_reason})" if order.failure_reason else "")
        if not seen or seen[-1] != name:
            seen.append(name)

    async def orders_of(self, customer_id: str) -> list[order_pb2.Order]:
        request = order_service_pb2.ListOrdersRequest(customer_id=customer_id, page_size=500)
        return list((await self.order.ListOrders(request, timeout=10)).orders)

    # payments and the gateway

    async def payments_of(self, order_id: str) -> list[payment_pb2.Payment]:
        reply = await self.payment.ListPayments(payment_service_pb2.ListPaymentsRequest(order_id=order_id), timeout=10)
        return list(reply.payments)

    async def payment_of(self, order_id: str) -> payment_pb2.Payment:
        payments = await self.payments_of(order_id)
        assert len(payments) == 1, f"order {order_id} has {len(payments)} payments: {payments}"
        return payments[0]

    async def wait_payment(self, order_id: str, wanted: Iterable[int], timeout: float = 15.0) -> payment_pb2.Payment:
        wanted = frozenset(wanted)
        payments = await eventually(
            lambda: self.payments_of(order_id),
            lambda ps: len(ps) == 1 and ps[0].status in wanted,
            timeout,
            f"payment of {order_id} in {[PS.Name(s) for s in wanted]}",
        )
        return payments[0]

    async def charges(self, order_id: str) -> list[gateway_pb2.Charge]:
        request = gateway_service_pb2.ListChargesRequest(order_id=order_id, page_size=500)
        return list((await self.gateway.ListCharges(request, timeout=10)).charges)

    async def one_charge(self, order_id: str) -> gateway_pb2.Charge:
        charges = await self.charges(order_id)
        assert len(charges) == 1, f"order {order_id} has {len(charges)} charges at the gateway: {charges}"
        return charges[0]

    async def configure_gateway(self, **settings: Any) -> gateway_pb2.FaultConfig:
        reply = await self.gateway.Configure(gateway_service_pb2.ConfigureRequest(**settings), timeout=10)
        return reply.config


def by_status(orders: Iterable[order_pb2.Order]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for order in orders:
        counts[status_name(order.status)] += 1
    return dict(counts)
