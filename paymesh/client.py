"""The typed client of the whole mesh: one channel per service, request ids, retries and deadlines in one place.

    async with MeshClient.from_env() as mesh:
        await mesh.put_product("sku-mug", name="Mug", available=10)
        order = await mesh.create_order(
            customer_id="cus_1", items=[("sku-mug", 2, 1250)], currency="USD", payment_method_token="tok_visa"
        )
        async with mesh.watch_order(order.order_id) as changes:
            async for order in changes:
                print(order.status)

Every state-changing command takes an optional `request_id` (AIP-155; the gateway's calls an
`idempotency_key`) and makes a UUID when none is given. A call refused UNAVAILABLE is sent again
after a backoff with the same request, so the same request id (AIP-194): a command the service had
done answers as it did the first time. Every call has a deadline (`timeout_s`, or `timeout=` on the
call). Answers are the proto messages (`Order`, `Product`, `Payment`, `Charge`, ...); a refusal is the
`grpc.aio.AioRpcError` itself, code, details and trailing metadata as the service sent them. The raw
stubs stay at hand as `order`, `inventory`, `payment` and `gateway`.

Every call carries a key (`authorization: Bearer`): the merchant's `api_key` to the order, inventory
and payment services; to the gateway (the bank) the platform's key, and an operator key for its
`Configure`. `from_env` takes them from PAYMESH_API_KEY, PAYMESH_PLATFORM_KEY and PAYMESH_OPERATOR_KEY,
else from the files `paymesh up` keeps in the data dir (paymesh.ops.credentials). With `tls` (`from_env`: when
PAYMESH_TLS_CA is set, paymesh.chassis.tls.ClientTls) every channel is TLS, verified against that CA, showing
PAYMESH_TLS_CLIENT_CERT under mTLS.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import grpc

from paymesh.chassis.auth.bearer import key_metadata, keyed
from paymesh.chassis.auth.keys import ApiKey
from paymesh.chassis.backoff import Backoff
from paymesh.chassis.tls import ClientTls
from paymesh.chassis.tls import channel as tls_channel
from paymesh.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from paymesh.inventory.v1 import inventory_pb2, inventory_service_pb2, inventory_service_pb2_grpc
from paymesh.ops.addresses import dial_addr
from paymesh.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc
from paymesh.payment.v1 import payment_pb2, payment_service_pb2, payment_service_pb2_grpc
from paymesh.webhook.v1 import webhook_service_pb2_grpc

T = TypeVar("T")
Req = TypeVar("Req", contravariant=True)
Rep = TypeVar("Rep", covariant=True)

DEFAULT_TIMEOUT_S = 10.0
# A watch lasts as long as its order's saga (30 s by default) and a cancel after it.
DEFAULT_WATCH_TIMEOUT_S = 120.0
# A killed and restarted service is dialled again at once, not after gRPC's backoff (1 s, growing to 120 s).
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)
# The services the client speaks to (paymesh.ops.services names them all), as its `order`, `inventory`, ... .
SERVICES = ("order_svc", "inventory_svc", "payment_svc", "gateway_mock", "webhook_svc")
Line = order_pb2.LineItem | tuple[str, int, int]  # (sku, quantity, unit price in minor units)


class Unary(Protocol[Req, Rep]):
    """A unary method of a generated stub, as the client calls it."""

    def __call__(
        self, request: Req, *, timeout: float | None = None, metadata: tuple[tuple[str, str], ...] | None = None
    ) -> Awaitable[Rep]: ...


@dataclass(frozen=True)
class Retry:
    """When a refused call is sent again: on `codes`, at most `attempts` sends in all, and no new send
    once `within_s` have passed since the first refusal (None: no such bound). The default retries
    UNAVAILABLE only (AIP-194); a caller riding out crashes (`paymesh chaos`) adds the codes of
    an answer that may still come (DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED) and a longer bound."""

    attempts: int = 4
    codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.05, cap_s=0.5))
    within_s: float | None = None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a List call (AIP-158); `next_page_token` is empty on the last."""

    items: list[T]
    next_page_token: str


async def every(list_page: Callable[[str], Awaitable[Page[T]]], max_pages: int = 1000) -> list[T]:
    """The items of every page: `await every(lambda token: mesh.list_orders(customer_id=c, page_token=token))`."""
    items: list[T] = []
    token = ""
    for _ in range(max_pages):
        page = await list_page(token)
        items += page.items
        if not (token := page.next_page_token):
            break
    return items


def new_request_id() -> str:
    return str(uuid.uuid4())


def line_item(item: Line) -> order_pb2.LineItem:
    if isinstance(item, order_pb2.LineItem):
        return item
    sku, quantity, unit_price_minor = item
    return order_pb2.LineItem(sku=sku, quantity=quantity, unit_price_minor=unit_price_minor)


class OrderWatch:
    """The states of one order as WatchOrder streams them, the first as it is now; the stream ends at a
    final status, at its deadline, or on `cancel()`. `async with` cancels it on leaving, so a caller
    that stops reading early (`break`) does not leave the stream open."""

    def __init__(self, call: Any) -> None:  # grpc.aio.UnaryStreamCall; untyped generated stub
        self.call = call
        self.replies = aiter(call)

    def __aiter__(self) -> OrderWatch:
        return self

    async def __anext__(self) -> order_pb2.Order:
        reply = await anext(self.replies)  # StopAsyncIteration once the stream ends
        order: order_pb2.Order = reply.order
        return order

    def cancel(self) -> None:
        self.call.cancel()

    async def __aenter__(self) -> OrderWatch:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class MeshClient:
    """The services of one mesh over gRPC, one channel each (`async with`, or `close()`).

    Each address is where the service listens (`<SVC>_GRPC_ADDR`); a wildcard host is dialled on loopback."""

    def __init__(
        self,
        *,
        order: str,
        inventory: str,
        payment: str,
        gateway: str,
        webhook: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        watch_timeout_s: float = DEFAULT_WATCH_TIMEOUT_S,
        retry: Retry | None = None,
        api_key: str | ApiKey | None = None,
        platform_key: str | ApiKey | None = None,
        operator_key: str | ApiKey | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.addrs = {"order": order, "inventory": inventory, "payment": payment, "gateway": gateway}
        if webhook is not None:  # a mesh before webhook_svc, or a client of the saga alone, may leave it out
            self.addrs["webhook"] = webhook
        self.timeout_s = timeout_s
        self.watch_timeout_s = watch_timeout_s
        self.retry = retry or Retry()
        # The merchant's key on its three services; the bank knows paymesh by the platform key.
        keys = {"order": api_key, "inventory": api_key, "payment": api_key, "webhook": api_key, "gateway": platform_key}
        self.channels = {
            role: tls_channel(dial_addr(addr), tls, options=CHANNEL_OPTIONS)
            for role, addr in self.addrs.items()
        }
        self._operator_metadata = key_metadata(operator_key)
        # The raw stubs, typed by the generated *_pb2_grpc.pyi; each call sends its party's key as metadata.
        self.order = keyed(order_service_pb2_grpc.OrderServiceStub(self.channels["order"]), keys["order"])
        self.inventory = keyed(
            inventory_service_pb2_grpc.InventoryServiceStub(self.channels["inventory"]), keys["inventory"]
        )
        self.payment = keyed(payment_service_pb2_grpc.PaymentServiceStub(self.channels["payment"]), keys["payment"])
        self.gateway = keyed(gateway_service_pb2_grpc.GatewayServiceStub(self.channels["gateway"]), keys["gateway"])
        self._webhook = (keyed(webhook_service_pb2_grpc.WebhookServiceStub(self.channels["webhook"]), keys["webhook"])
                         if "webhook" in self.channels else None)

    @classmethod
    def from_addrs(cls, addrs: Mapping[str, str], **options: Any) -> MeshClient:
        """A client of the services at `addrs`, keyed by service name (`order_svc`, ...; others are left
        out); `options` as `__init__`."""
        return cls(
            order=addrs["order_svc"],
            inventory=addrs["inventory_svc"],
            payment=addrs["payment_svc"],
            gateway=addrs["gateway_mock"],
            webhook=addrs.get("webhook_svc"),
            **options,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> MeshClient:
        """A client of the mesh `env` names (`ORDER_SVC_GRPC_ADDR`, ..., default 127.0.0.1:50051 ... 50054),
        as the services read them; a wildcard address (`0.0.0.0:50051`, `[::]:50051`) is dialled on loopback.
        Its keys: `options`' own, else the environment's, else the data dir's (paymesh.ops.credentials); TLS
        when PAYMESH_TLS_CA is set."""
        # The service list imports every service's wiring: read only when asked for.
        from paymesh.chassis.config import data_dir, grpc_addr
        from paymesh.ops.credentials import MeshCredentials
        from paymesh.ops.services import spec

        env = os.environ if env is None else env
        keys = MeshCredentials.load(env, data_dir(env)).client_options()
        return cls.from_addrs({name: grpc_addr(spec(name), env) for name in SERVICES}, **(keys | options))

    @property
    def webhook(self) -> webhook_service_pb2_grpc.WebhookServiceStub:
        """The WebhookService stub; a client made without webhook_svc's address has none."""
        if self._webhook is None:
            raise RuntimeError("this client was made without webhook_svc's address (MeshClient(webhook=...))")
        return self._webhook

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close(grace=None)

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def call(
        self, rpc: Unary[Any, T], request: Any, timeout: float | None = None, *, operator: bool = False
    ) -> T:
        """`rpc(request)` under the deadline, sent again (the same request) while `retry` allows;
        `operator`: with the operator key instead of the channel's."""
        # The stub sends its party's key; the operator's call names its own, which wins.
        extra = {"metadata": self._operator_metadata} if operator else {}
        timeout = timeout or self.timeout_s
        attempt = 1
        started = 0.0
        while True:
            try:
                return await rpc(request, timeout=timeout, **extra)
            except grpc.aio.AioRpcError as err:
                retry = self.retry
                if attempt == 1:
                    started = time.monotonic()
                if (
                    err.code() not in retry.codes
                    or attempt >= retry.attempts
                    or (retry.within_s is not None and time.monotonic() - started >= retry.within_s)
                ):
                    raise
            await asyncio.sleep(self.retry.backoff.delay(attempt))  # before sending the same request again
            attempt += 1

    # orders

    async def create_order(
        self,
        *,
        customer_id: str,
        items: Iterable[Line],
        currency: str,
        payment_method_token: str,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> order_pb2.Order:
        request = order_service_pb2.CreateOrderRequest(
            request_id=request_id or new_request_id(),
            customer_id=customer_id,
            items=[line_item(i) for i in items],
            currency=currency,
            payment_method_token=payment_method_token,
        )
        reply: order_service_pb2.CreateOrderResponse = await self.call(self.order.CreateOrder, request, timeout)
        return reply.order

    async def get_order(self, order_id: str, *, timeout: float | None = None) -> order_pb2.Order:
        request = order_service_pb2.GetOrderRequest(order_id=order_id)
        reply: order_service_pb2.GetOrderResponse = await self.call(self.order.GetOrder, request, timeout)
        return reply.order

    async def list_orders(
        self,
        *,
        customer_id: str = "",
        status: order_pb2.OrderStatus = order_pb2.ORDER_STATUS_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[order_pb2.Order]:
        request = order_service_pb2.ListOrdersRequest(
            customer_id=customer_id, status=status, page_size=page_size, page_token=page_token
        )
        reply: order_service_pb2.ListOrdersResponse = await self.call(self.order.ListOrders, request, timeout)
        return Page(list(reply.orders), reply.next_page_token)

    async def cancel_order(
        self, order_id: str, *, reason: str = "", request_id: str | None = None, timeout: float | None = None
    ) -> order_pb2.Order:
        request = order_service_pb2.CancelOrderRequest(
            order_id=order_id, request_id=request_id or new_request_id(), reason=reason
        )
        reply: order_service_pb2.CancelOrderResponse = await self.call(self.order.CancelOrder, request, timeout)
        return reply.order

    def watch_order(self, order_id: str, *, timeout: float | None = None) -> OrderWatch:
        """The order's states as they change (not retried: a broken stream is for the caller to open again)."""
        request = order_service_pb2.WatchOrderRequest(order_id=order_id)
        return OrderWatch(self.order.WatchOrder(request, timeout=timeout or self.watch_timeout_s))

    # inventory

    async def put_product(
        self, sku: str, *, name: str, available: int, request_id: str | None = None, timeout: float | None = None
    ) -> inventory_pb2.Product:
        request = inventory_service_pb2.PutProductRequest(
            sku=sku, name=name, available=available, request_id=request_id or new_request_id()
        )
        reply: inventory_service_pb2.PutProductResponse = await self.call(self.inventory.PutProduct, request, timeout)
        return reply.product

    async def adjust_stock(
        self, sku: str, delta: int, *, request_id: str | None = None, timeout: float | None = None
    ) -> inventory_pb2.Product:
        request = inventory_service_pb2.AdjustStockRequest(
            sku=sku, delta=delta, request_id=request_id or new_request_id()
        )
        reply: inventory_service_pb2.AdjustStockResponse = await self.call(
            self.inventory.AdjustStock, request, timeout
        )
        return reply.product

    async def get_product(self, sku: str, *, timeout: float | None = None) -> inventory_pb2.Product:
        request = inventory_service_pb2.GetProductRequest(sku=sku)
        reply: inventory_service_pb2.GetProductResponse = await self.call(self.inventory.GetProduct, request, timeout)
        return reply.product

    async def list_products(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> Page[inventory_pb2.Product]:
        request = inventory_service_pb2.ListProductsRequest(page_size=page_size, page_token=page_token)
        reply: inventory_service_pb2.ListProductsResponse = await self.call(
            self.inventory.ListProducts, request, timeout
        )
        return Page(list(reply.products), reply.next_page_token)

    async def get_reservation(self, order_id: str, *, timeout: float | None = None) -> inventory_pb2.Reservation:
        """The order's reservation; NOT_FOUND while inventory has not seen the order."""
        request = inventory_service_pb2.GetReservationRequest(order_id=order_id)
        reply: inventory_service_pb2.GetReservationResponse = await self.call(
            self.inventory.GetReservation, request, timeout
        )
        return reply.reservation

    # payments

    async def get_payment(self, payment_id: str, *, timeout: float | None = None) -> payment_pb2.Payment:
        request = payment_service_pb2.GetPaymentRequest(payment_id=payment_id)
        reply: payment_service_pb2.GetPaymentResponse = await self.call(self.payment.GetPayment, request, timeout)
        return reply.payment

    async def list_payments(
        self,
        *,
        order_id: str = "",
        status: payment_pb2.PaymentStatus = payment_pb2.PAYMENT_STATUS_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[payment_pb2.Payment]:
        request = payment_service_pb2.ListPaymentsRequest(
            order_id=order_id, status=status, page_size=page_size, page_token=page_token
        )
        reply: payment_service_pb2.ListPaymentsResponse = await self.call(self.payment.ListPayments, request, timeout)
        return Page(list(reply.payments), reply.next_page_token)

    async def refund_payment(
        self,
        payment_id: str,
        *,
        amount_minor: int = 0,
        reason: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> payment_service_pb2.RefundPaymentResponse:
        """Refund `amount_minor` (0: all that is left); the answer holds the payment and the refund's id."""
        request = payment_service_pb2.RefundPaymentRequest(
            payment_id=payment_id, amount_minor=amount_minor, reason=reason, request_id=request_id or new_request_id()
        )
        reply: payment_service_pb2.RefundPaymentResponse = await self.call(
            self.payment.RefundPayment, request, timeout
        )
        return reply

    async def list_payment_events(
        self, payment_id: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> Page[payment_pb2.PaymentEvent]:
        """One page of the payment's audit trail, by ascending sequence."""
        request = payment_service_pb2.ListPaymentEventsRequest(
            payment_id=payment_id, page_size=page_size, page_token=page_token
        )
        reply: payment_service_pb2.ListPaymentEventsResponse = await self.call(
            self.payment.ListPaymentEvents, request, timeout
        )
        return Page(list(reply.events), reply.next_page_token)

    # the gateway (the bank simulator)

    async def charge(
        self,
        *,
        merchant_id: str,
        amount_minor: int,
        currency: str,
        payment_method_token: str,
        order_id: str = "",
        description: str = "",
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> gateway_pb2.Charge:
        """A charge at the bank on behalf of `merchant_id`, with the platform key (what payment_svc does)."""
        request = gateway_service_pb2.ChargeRequest(
            merchant_id=merchant_id,
            idempotency_key=idempotency_key or new_request_id(),
            amount_minor=amount_minor,
            currency=currency,
            payment_method_token=payment_method_token,
            order_id=order_id,
            description=description,
        )
        reply: gateway_service_pb2.ChargeResponse = await self.call(self.gateway.Charge, request, timeout)
        return reply.charge

    async def refund_charge(
        self,
        charge_id: str,
        *,
        amount_minor: int = 0,
        reason: str = "",
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> gateway_service_pb2.RefundResponse:
        """Refund `amount_minor` of a charge (0: all that is left); the answer holds the refund and the charge."""
        request = gateway_service_pb2.RefundRequest(
            idempotency_key=idempotency_key or new_request_id(),
            charge_id=charge_id,
            amount_minor=amount_minor,
            reason=reason,
        )
        reply: gateway_service_pb2.RefundResponse = await self.call(self.gateway.Refund, request, timeout)
        return reply

    async def get_charge(
        self, charge_id: str = "", *, idempotency_key: str = "", timeout: float | None = None
    ) -> gateway_pb2.Charge:
        """A charge by its id, or by the idempotency key it was made with (how a caller that lost the answer
        learns whether its charge happened)."""
        if charge_id:
            request = gateway_service_pb2.GetChargeRequest(charge_id=charge_id)
        else:
            request = gateway_service_pb2.GetChargeRequest(idempotency_key=idempotency_key)
        reply: gateway_service_pb2.GetChargeResponse = await self.call(self.gateway.GetCharge, request, timeout)
        return reply.charge

    async def list_charges(
        self,
        *,
        order_id: str = "",
        status: gateway_pb2.ChargeStatus = gateway_pb2.CHARGE_STATUS_UNSPECIFIED,
        merchant_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> Page[gateway_pb2.Charge]:
        request = gateway_service_pb2.ListChargesRequest(
            order_id=order_id, status=status, merchant_id=merchant_id, page_size=page_size, page_token=page_token
        )
        reply: gateway_service_pb2.ListChargesResponse = await self.call(self.gateway.ListCharges, request, timeout)
        return Page(list(reply.charges), reply.next_page_token)

    async def configure_gateway(
        self,
        *,
        reset: bool = False,
        latency_ms: int | None = None,
        decline_rate: float | None = None,
        transient_error_rate: float | None = None,
        lost_response_rate: float | None = None,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> gateway_pb2.FaultConfig:
        """The gateway's fault injection (an operator's call): `reset` first, then each setting given; the
        rest keep their value. Setting values twice leaves what once does, so a retry is safe without a key."""
        request = gateway_service_pb2.ConfigureRequest(reset=reset)
        # Optional fields: one left unset keeps the gateway's value, one set to 0 changes it.
        if latency_ms is not None:
            request.latency_ms = latency_ms
        if decline_rate is not None:
            request.decline_rate = decline_rate
        if transient_error_rate is not None:
            request.transient_error_rate = transient_error_rate
        if lost_response_rate is not None:
            request.lost_response_rate = lost_response_rate
        if seed is not None:
            request.seed = seed
        reply: gateway_service_pb2.ConfigureResponse = await self.call(
            self.gateway.Configure, request, timeout, operator=True
        )
        return reply.config
