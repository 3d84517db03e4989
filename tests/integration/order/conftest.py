"""An order_svc host in-process on a free port, real NATS and a real store, and helpers that answer as the
other services would.

The rig holds a key for MERCHANT_A and one for MERCHANT_B, both made before the host starts: `rig.orders`
calls as A, `rig.stubs[MERCHANT_B]` as B; the helpers act for A unless told `merchant=`, and the answers
(`reserved(...)`, ...) speak for A unless given `merchant_id=`."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from order_svc.api import OrderApi
from order_svc.service import SPEC
from order_svc.sweeper import DeadlineSweeper
from order_svc.watch import OrderWatch
from paymesh.chassis import jetstream
from paymesh.chassis.auth.bearer import bearer
from paymesh.chassis.config import Settings
from paymesh.chassis.consumer import BatchHandler
from paymesh.chassis.events import OutboundEvent, message_types, new_event_id
from paymesh.chassis.service import Runtime, ServiceHost
from paymesh.inventory.v1 import events_pb2 as inventory_events
from paymesh.ops.natsserver import NatsServer, free_port
from paymesh.order.v1 import events_pb2 as order_events
from paymesh.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc
from paymesh.payment.v1 import events_pb2 as payment_events
from tests.conftest import wait_for
from tests.integration.chassis_harness import publish
from tests.keys import AUTH_ENV, MERCHANT_A, MERCHANT_B, key_for

ORDER_TYPES = message_types(order_events)
S = order_pb2.OrderStatus
MERCHANTS = (MERCHANT_A, MERCHANT_B)
Stub = order_service_pb2_grpc.OrderServiceStub


@dataclass(frozen=True)
class Published:
    """An event order_svc put on the ORDER stream."""

    subject: str
    headers: dict[str, str]
    message: Any


@dataclass
class Rig:
    host: ServiceHost
    stubs: dict[str, Stub]  # by merchant, each sending that merchant's key
    nc: NATS

    @property
    def orders(self) -> Stub:
        """MERCHANT_A's."""
        return self.stubs[MERCHANT_A]

    @property
    def api(self) -> OrderApi:
        """The servicer `wire()` registered."""
        return self.host.wiring.services[0].servicer

    @property
    def watch(self) -> OrderWatch:
        """The watch hub the servicer's streams follow and every writer delivers to."""
        return self.api.watch

    @property
    def handler(self) -> BatchHandler:
        """The batch handler both consumers call (`SagaAnswers.apply`)."""
        return self.host.wiring.consumers[0].handler

    @property
    def sweeper(self) -> DeadlineSweeper:
        """The deadline sweeper whose `run` the host started as its one background loop."""
        return self.host.wiring.background[0].__self__  # the bound DeadlineSweeper.run

    @property
    def applied(self) -> int:
        """Events the two consumers have applied (duplicates skipped by the inbox not counted)."""
        return sum(c.applied for c in self.host.consumers)

    async def create(
        self, customer_id: str = "cus_1", token: str = "tok_visa", *, merchant: str = MERCHANT_A, **fields: Any
    ) -> order_pb2.Order:
        reply = await self.stubs[merchant].CreateOrder(
            create_request(customer_id=customer_id, payment_method_token=token, **fields)
        )
        return reply.order

    async def get(self, order_id: str, *, merchant: str = MERCHANT_A) -> order_pb2.Order:
        return (await self.stubs[merchant].GetOrder(order_service_pb2.GetOrderRequest(order_id=order_id))).order

    async def cancel(
        self, order_id: str, reason: str = "customer asked", *, merchant: str = MERCHANT_A
    ) -> order_pb2.Order:
        request = order_service_pb2.CancelOrderRequest(order_id=order_id, request_id=str(uuid.uuid4()), reason=reason)
        return (await self.stubs[merchant].CancelOrder(request)).order

    async def wait_status(
        self, order_id: str, status: int, timeout: float = 10.0, *, merchant: str = MERCHANT_A
    ) -> order_pb2.Order:
        async def reached() -> order_pb2.Order | None:
            order = await self.get(order_id, merchant=merchant)
            return order if order.status == status else None

        return await wait_for(reached, timeout=timeout, message=f"{order_id} in {S.Name(status)}")

    async def answer(self, message: Message, msg_id: str | None = None) -> None:
        """Publish an answer on its stream as inventory_svc or payment_svc would."""
        domain, event = EVENT_SUBJECTS[type(message)]
        outbound = OutboundEvent.of(f"{domain}.{event}.{message.order_id}", message)  # type: ignore[attr-defined]
        await publish(self.nc, outbound, msg_id)

    async def answer_and_wait(self, message: Message) -> None:
        """Publish an answer and wait until order_svc's consumer has taken it (applied or ignored)."""
        await self.answer(message)
        await wait_for(lambda: self.all_acked(), message=f"{type(message).__name__} acked")

    async def all_acked(self) -> bool:
        js = self.nc.jetstream()
        for stream, durable in (("INVENTORY", "order_svc-inventory"), ("PAYMENT", "order_svc-payment")):
            if await jetstream.consumer_backlog(js, stream, durable):
                return False
        return True

    async def published(self, order_id: str, *, merchant_told: bool = False) -> list[Published]:
        """Every saga event of this order on the ORDER stream, in stream order; `merchant_told`: with the
        `status_changed` events (webhook_svc's) among them."""
        js = self.nc.jetstream()
        out: list[Published] = []
        seq = 1
        while True:
            try:
                raw = await js.get_msg("ORDER", seq=seq, subject=f"order.*.{order_id}", next=True)
            except NotFoundError:
                return out
            headers = dict(raw.headers or {})
            message = ORDER_TYPES[headers["Paymesh-Type"]].FromString(raw.data)
            if merchant_told or not (raw.subject or "").startswith("order.status_changed."):
                out.append(Published(raw.subject or "", headers, message))
            seq = raw.seq + 1

    async def published_names(self, order_id: str, count: int, *, merchant_told: bool = False) -> list[str]:
        """The saga's event names (`placed`, ...) once `count` are on the stream: the relay publishes after
        commit. `status_changed` (the merchant's news, for webhook_svc) is left out unless `merchant_told`."""

        async def relayed() -> list[str] | None:
            names = [p.subject.split(".")[1] for p in await self.published(order_id, merchant_told=merchant_told)]
            return names if len(names) >= count else None

        return await wait_for(relayed, message=f"{count} events of {order_id} relayed")


EVENT_SUBJECTS: dict[type[Message], tuple[str, str]] = {
    inventory_events.InventoryReserved: ("inventory", "reserved"),
    inventory_events.InventoryRejected: ("inventory", "rejected"),
    inventory_events.InventoryReleased: ("inventory", "released"),
    payment_events.PaymentSucceeded: ("payment", "succeeded"),
    payment_events.PaymentFailed: ("payment", "failed"),
    payment_events.PaymentRefunded: ("payment", "refunded"),
    payment_events.PaymentVoided: ("payment", "voided"),
    payment_events.PaymentRefundFailed: ("payment", "refund_failed"),
}


def create_request(**fields: Any) -> order_service_pb2.CreateOrderRequest:
    values: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "customer_id": "cus_1",
        "items": [
            order_pb2.LineItem(sku="sku-1", quantity=2, unit_price_minor=1250),
            order_pb2.LineItem(sku="sku-2", quantity=1, unit_price_minor=99),
        ],
        "currency": "USD",
        "payment_method_token": "tok_visa",
    }
    values.update(fields)
    return order_service_pb2.CreateOrderRequest(**values)


def reserved(order_id: str, merchant_id: str = MERCHANT_A) -> inventory_events.InventoryReserved:
    return inventory_events.InventoryReserved(event_id=new_event_id(), order_id=order_id, merchant_id=merchant_id)


def rejected(
    order_id: str, reason: str = "OUT_OF_STOCK", merchant_id: str = MERCHANT_A
) -> inventory_events.InventoryRejected:
    return inventory_events.InventoryRejected(
        event_id=new_event_id(), order_id=order_id, reason=reason, sku="sku-1", merchant_id=merchant_id
    )


def released(
    order_id: str, cause: str = "ORDER_CANCELLED", merchant_id: str = MERCHANT_A
) -> inventory_events.InventoryReleased:
    return inventory_events.InventoryReleased(
        event_id=new_event_id(), order_id=order_id, held=True, cause=cause, merchant_id=merchant_id
    )


def succeeded(
    order_id: str, payment_id: str = "pay_1", merchant_id: str = MERCHANT_A
) -> payment_events.PaymentSucceeded:
    return payment_events.PaymentSucceeded(
        event_id=new_event_id(),
        order_id=order_id,
        merchant_id=merchant_id,
        payment_id=payment_id,
        charge_id="ch_1",
        amount_minor=2599,
        currency="USD",
    )


def failed(order_id: str, code: str = "card_declined", merchant_id: str = MERCHANT_A) -> payment_events.PaymentFailed:
    return payment_events.PaymentFailed(
        event_id=new_event_id(), order_id=order_id, payment_id="pay_1", failure_code=code, merchant_id=merchant_id
    )


def voided(order_id: str, merchant_id: str = MERCHANT_A) -> payment_events.PaymentVoided:
    return payment_events.PaymentVoided(
        event_id=new_event_id(), order_id=order_id, payment_id="pay_1", cause="ORDER_CANCELLED", merchant_id=merchant_id
    )


def refunded(order_id: str, merchant_id: str = MERCHANT_A) -> payment_events.PaymentRefunded:
    return payment_events.PaymentRefunded(
        event_id=new_event_id(),
        order_id=order_id,
        merchant_id=merchant_id,
        payment_id="pay_1",
        amount_minor=2599,
        refunded_minor=2599,
        currency="USD",
        cause="ORDER_CANCELLED",
    )


def refund_failed(order_id: str, merchant_id: str = MERCHANT_A) -> payment_events.PaymentRefundFailed:
    return payment_events.PaymentRefundFailed(
        event_id=new_event_id(),
        order_id=order_id,
        merchant_id=merchant_id,
        payment_id="pay_1",
        failure_code="refund_declined",
        cause="ORDER_CANCELLED",
    )


@pytest.fixture
def saga_timeout_s() -> float:
    """Overridden with `@pytest.mark.parametrize("saga_timeout_s", [...])` by the deadline tests."""
    return 30.0


def rig_env(nats_url: str, db_url: str, data_dir: Path, saga_timeout_s: float = 30.0) -> dict[str, str]:
    return {
        "PAYMESH_NATS_URL": nats_url,
        "ORDER_SVC_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "ORDER_SVC_DB_URL": db_url,
        "PAYMESH_DATA_DIR": str(data_dir),
        "PAYMESH_SAGA_TIMEOUT_S": str(saga_timeout_s),
        "PAYMESH_SHUTDOWN_GRACE_S": "1",
        **AUTH_ENV,
    }


@contextlib.asynccontextmanager
async def running(
    nats_url: str,
    db_url: str,
    data_dir: Path,
    *,
    saga_timeout_s: float = 30.0,
    merchants: tuple[str, ...] = MERCHANTS,
) -> AsyncIterator[Rig]:
    """order_svc up on `db_url` (migrated to head at start), with a stub per merchant in `merchants`."""
    settings = Settings.from_env(SPEC, rig_env(nats_url, db_url, data_dir, saga_timeout_s))
    nc = await jetstream.connect([nats_url], "order-test")
    js = nc.jetstream()
    # The streams inventory_svc and payment_svc own, as they create them on start.
    await jetstream.ensure_stream(js, "INVENTORY", ["inventory.>"])
    await jetstream.ensure_stream(js, "PAYMENT", ["payment.>"])
    # Before start, so the registry has them loaded when the first call comes.
    keys = {merchant: await key_for(nats_url, merchant) for merchant in merchants}
    runtime = Runtime(SPEC, settings)
    host = ServiceHost(runtime, SPEC.wire(runtime, None))
    await host.start()
    try:
        async with contextlib.AsyncExitStack() as channels:
            stubs: dict[str, Stub] = {}
            for merchant, key in keys.items():
                channel = grpc.aio.insecure_channel(settings.grpc_addr, interceptors=bearer(key))
                await channels.enter_async_context(channel)
                stubs[merchant] = Stub(channel)
            yield Rig(host, stubs, nc)
    finally:
        await host.stop()
        await nc.close()


@pytest.fixture
async def rig(nats_server: NatsServer, db_url: str, tmp_path: Path, saga_timeout_s: float) -> AsyncIterator[Rig]:
    async with running(nats_server.url, db_url, tmp_path, saga_timeout_s=saga_timeout_s) as rig:
        yield rig
