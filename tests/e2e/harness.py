"""What an e2e test drives the mesh with: its environment, the mesh client and its stubs, waits with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from paymesh.chassis import jetstream
from paymesh.chassis.auth import MERCHANT_SCOPES, ApiKey, Scope, load_pepper
from paymesh.chassis.auth.bearer import bearer
from paymesh.chassis.tls import channel
from paymesh.client import MeshClient
from paymesh.gateway.v1 import gateway_pb2
from paymesh.inventory.v1 import inventory_pb2
from paymesh.ops.credentials import new_merchant_key
from paymesh.ops.launcher import Mesh
from paymesh.ops.ports import mesh_env as mesh_env  # the tests' mesh_env is the one paymesh chaos uses
from paymesh.ops.services import NAMES, spec
from paymesh.order.v1 import order_pb2, order_service_pb2
from paymesh.payment.v1 import payment_pb2
from tests.served import SERVICE_OF

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


# Every secret a test made or was given, and every refusal a test received: at the end of the session none of
# the secrets may be in any service's log or any of those messages (tests/e2e/conftest.py checks).
SECRETS: set[str] = set()
ERRORS_SEEN: list[str] = []


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
        ERRORS_SEEN.append(f"{out.message} {err.trailing_metadata()}")
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


async def merchant_key(
    mesh: Mesh, name: str = "second merchant", scopes: frozenset[Scope] = MERCHANT_SCOPES
) -> tuple[str, ApiKey]:
    """A new merchant of the mesh and a key of it, made as `paymesh merchants create` makes them; returned
    once every replica of every service admits it (the registries follow the bucket within milliseconds)."""
    nc = await jetstream.connect(mesh.nats_url.split(","), "tests-merchants", credentials=mesh.nats_creds)
    try:
        made = await new_merchant_key(nc, load_pepper(mesh.env, mesh.data_dir), name, scopes=scopes)
    finally:
        await nc.close()
    SECRETS.add(made.api_key.reveal())
    await known_everywhere(mesh, made.api_key)
    return made.merchant_id, made.api_key


async def call_empty(addr: str, tls: Any, path: str, key: Any, timeout: float = 5.0) -> RpcError | None:
    """The method at `path` called with an empty request of its input type, with `key` (the key check comes
    before the request is read); its refusal, or None when it answered."""
    full_name, method_name = path.strip("/").split("/")
    method = descriptor_pool.Default().FindServiceByName(full_name).methods_by_name[method_name]
    request = message_factory.GetMessageClass(method.input_type)()
    async with channel(addr, tls, interceptors=bearer(key)) as probe:
        try:
            if method.server_streaming:
                stream = probe.unary_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                            response_deserializer=lambda raw: raw)
                async for _ in stream(request, timeout=timeout):
                    break
            else:
                unary = probe.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                          response_deserializer=lambda raw: raw)
                await unary(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            return RpcError.of(err)
    return None


async def known_everywhere(mesh: Mesh, secret: ApiKey, timeout: float = 5.0) -> None:
    """Until no replica of any service answers API_KEY_INVALID for the key: the key check comes before a
    method reads its request, so an empty request to each service's first method is the probe."""
    for full_name, service in SERVICE_OF.items():
        path = f"/{full_name}/{descriptor_pool.Default().FindServiceByName(full_name).methods[0].name}"
        for addr in mesh.addrs(service):

            async def knows(addr: str = addr, path: str = path) -> bool:
                err = await call_empty(addr, mesh.client_tls, path, secret, timeout=2)
                return err is None or err.reason != "API_KEY_INVALID"

            await eventually(knows, bool, timeout, f"the new key known by {service} at {addr}")


class Clients:
    """A `paymesh.client.MeshClient` of one mesh, and the saga-level helpers a test needs built on it.

    `order`, `inventory`, `payment` and `gateway` are the client's generated stubs, for tests that send a
    request of their own and assert on the raw answer or error. `replica` picks which replica of each
    service the client dials (a service with fewer wraps around)."""

    def __init__(
        self, mesh: Mesh, replica: int = 1, api_key: ApiKey | str | None = None, merchant_id: str | None = None
    ) -> None:
        self.mesh = mesh
        self.replica = replica
        # Whose key this is: the development merchant's unless another's key (and id) is given.
        self.merchant_id = merchant_id or (mesh.dev_key.merchant_id if api_key is None and mesh.dev_key else "")
        # The development merchant's key unless another merchant's is given (`merchant_key`).
        keys = mesh.credentials.client_options() | ({"api_key": api_key} if api_key is not None else {})
        self.client = MeshClient.from_addrs({s: mesh.addr(s, self._replica_of(s)) for s in NAMES}, **keys)
        self.order = self.client.order
        self.inventory = self.client.inventory
        self.payment = self.client.payment
        self.gateway = self.client.gateway
        self.webhook = self.client.webhook

    def _replica_of(self, service: str) -> int:
        return (self.replica - 1) % self.mesh.replicas.get(service, 1) + 1

    async def close(self) -> None:
        await self.client.close()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Clients]:
        try:
            yield self
        finally:
            await self.close()

    # inventory

    async def put_product(self, available: int, sku: str | None = None, name: str = "") -> str:
        sku = sku or f"sku-{uuid.uuid4().hex[:10]}"
        await self.client.put_product(sku, name=name or sku, available=available)
        return sku

    async def product(self, sku: str) -> inventory_pb2.Product:
        return await self.client.get_product(sku)

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
        self,
        items: Iterable[tuple[str, int, int]],
        token: str = "tok_visa",
        customer_id: str | None = None,
        request_id: str | None = None,
        currency: str = "USD",
    ) -> order_pb2.Order:
        return await self.client.create_order(
            customer_id=customer_id or f"cus_{uuid.uuid4().hex[:10]}",
            items=items,
            currency=currency,
            payment_method_token=token,
            request_id=request_id,
        )

    async def get_order(self, order_id: str) -> order_pb2.Order:
        return await self.client.get_order(order_id)

    async def cancel(
        self, order_id: str, reason: str = "customer asked", request_id: str | None = None
    ) -> order_pb2.Order:
        return await self.client.cancel_order(order_id, reason=reason, request_id=request_id)

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
            async with self.client.watch_order(order_id) as changes:
                async for order in changes:
                    self._note(seen, order)
                    if order.status in wanted:
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
        return (await self.client.list_orders(customer_id=customer_id, page_size=500)).items

    # payments and the gateway

    async def payments_of(self, order_id: str) -> list[payment_pb2.Payment]:
        return (await self.client.list_payments(order_id=order_id)).items

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
        return (await self.client.list_charges(order_id=order_id, page_size=500)).items

    async def one_charge(self, order_id: str) -> gateway_pb2.Charge:
        charges = await self.charges(order_id)
        assert len(charges) == 1, f"order {order_id} has {len(charges)} charges at the gateway: {charges}"
        return charges[0]

    async def configure_gateway(self, **settings: Any) -> gateway_pb2.FaultConfig:
        return await self.client.configure_gateway(**settings)


def by_status(orders: Iterable[order_pb2.Order]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for order in orders:
        counts[status_name(order.status)] += 1
    return dict(counts)


def stores_env(mesh: Mesh) -> dict[str, str]:
    """Each service's store as the service was given it (`<SVC>_DB_URL`): what an operator's tool reads; the test
    Mesh writes no mesh.json to find them by."""
    return {f"{spec(name).env_prefix}_DB_URL": mesh.child(name).db_url for name in NAMES}


async def paymesh_command(env: dict[str, str], *argv: str, timeout: float = 60.0) -> tuple[int, str, str]:
    """`paymesh ARGV...` as an operator runs it, in a process of its own: (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "paymesh.ops.cli", *argv, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
