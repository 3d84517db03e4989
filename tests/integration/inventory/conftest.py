"""An inventory_svc host in-process on a free port, with real NATS and a real store, and helpers to drive it.

The rig holds a key for MERCHANT_A and one for MERCHANT_B, both made before the host starts: `rig.stub` calls
as A, `rig.stubs[B]` as B; the helpers act for A unless told `merchant=`."""

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

from inventory_svc.service import SPEC
from paymesh.chassis import jetstream
from paymesh.chassis.auth.bearer import bearer
from paymesh.chassis.config import Settings
from paymesh.chassis.events import OutboundEvent, message_types, new_event_id
from paymesh.chassis.service import Runtime, ServiceHost
from paymesh.inventory.v1 import events_pb2 as inventory_events
from paymesh.inventory.v1 import inventory_pb2, inventory_service_pb2, inventory_service_pb2_grpc
from paymesh.ops.natsserver import NatsServer, free_port
from paymesh.order.v1 import events_pb2 as order_events
from paymesh.order.v1 import order_pb2
from paymesh.payment.v1 import events_pb2 as payment_events
from tests.conftest import wait_for
from tests.integration.chassis_harness import publish, stream_messages
from tests.keys import AUTH_ENV, MERCHANT_A, MERCHANT_B, key_for

INVENTORY_TYPES = message_types(inventory_events)
DURABLES = ("inventory_svc-order", "inventory_svc-payment")
MERCHANTS = (MERCHANT_A, MERCHANT_B)
Stub = inventory_service_pb2_grpc.InventoryServiceStub


@dataclass(frozen=True)
class Output:
    """An event inventory_svc published: its name (`reserved`, ...), message and headers."""

    name: str
    message: Any
    headers: dict[str, str]


def start_host(settings: Settings) -> ServiceHost:
    runtime = Runtime(SPEC, settings)
    return ServiceHost(runtime, SPEC.wire(runtime, None))


@dataclass
class Rig:
    host: ServiceHost
    stubs: dict[str, Stub]  # by merchant, each sending that merchant's key
    nc: NATS

    @property
    def stub(self) -> Stub:
        """MERCHANT_A's."""
        return self.stubs[MERCHANT_A]

    @contextlib.asynccontextmanager
    async def stopped(self) -> AsyncIterator[None]:
        """The service down for the block, then up again on the same store: what is published meanwhile
        waits on the stream and arrives as one batch."""
        settings = self.host.runtime.settings
        await self.host.stop()
        yield
        self.host = start_host(settings)
        await self.host.start()

    async def put(
        self, sku: str, available: int, name: str = "", *, merchant: str = MERCHANT_A
    ) -> inventory_pb2.Product:
        request = inventory_service_pb2.PutProductRequest(
            request_id=str(uuid.uuid4()), sku=sku, name=name or sku.title(), available=available
        )
        return (await self.stubs[merchant].PutProduct(request)).product

    async def product(self, sku: str, *, merchant: str = MERCHANT_A) -> inventory_pb2.Product:
        request = inventory_service_pb2.GetProductRequest(sku=sku)
        return (await self.stubs[merchant].GetProduct(request)).product

    async def reservation(self, order_id: str, *, merchant: str = MERCHANT_A) -> inventory_pb2.Reservation:
        request = inventory_service_pb2.GetReservationRequest(order_id=order_id)
        return (await self.stubs[merchant].GetReservation(request)).reservation

    async def publish(self, subject: str, message: Message, msg_id: str | None = None) -> OutboundEvent:
        """Publish as the owning service's relay would; `msg_id` overrides Nats-Msg-Id (a republished copy)."""
        event = OutboundEvent.of(subject, message)
        await publish(self.nc, event, msg_id)
        return event

    async def placed(
        self, order_id: str, *lines: tuple[str, int], event_id: str | None = None, merchant: str = MERCHANT_A
    ) -> OutboundEvent:
        items = [order_pb2.LineItem(sku=sku, quantity=q, unit_price_minor=100) for sku, q in lines]
        message = order_events.OrderPlaced(event_id=event_id or new_event_id(), order_id=order_id, items=items,
                                           currency="EUR", payment_method_token="tok_visa", merchant_id=merchant)
        return await self.publish(f"order.placed.{order_id}", message)

    async def cancelled(self, order_id: str, *, merchant: str = MERCHANT_A) -> OutboundEvent:
        message = order_events.OrderCancelled(event_id=new_event_id(), order_id=order_id, reason="customer",
                                              merchant_id=merchant)
        return await self.publish(f"order.cancelled.{order_id}", message)

    async def paid(self, order_id: str, *, merchant: str = MERCHANT_A) -> OutboundEvent:
        message = payment_events.PaymentSucceeded(event_id=new_event_id(), order_id=order_id, payment_id="pay_1",
                                                  merchant_id=merchant)
        return await self.publish(f"payment.succeeded.{order_id}", message)

    async def declined(self, order_id: str, *, merchant: str = MERCHANT_A) -> OutboundEvent:
        message = payment_events.PaymentFailed(event_id=new_event_id(), order_id=order_id,
                                               failure_code="card_declined", merchant_id=merchant)
        return await self.publish(f"payment.failed.{order_id}", message)

    async def settle(self) -> None:
        """Wait until every published event is applied and acked, and every answer is relayed."""
        js = self.nc.jetstream()
        relay = self.host.runtime.relay
        assert relay is not None

        async def quiet() -> bool:
            for stream, durable in zip(("ORDER", "PAYMENT"), DURABLES, strict=True):
                if await jetstream.consumer_backlog(js, stream, durable):
                    return False
            return await relay.unsent_count() == 0

        await wait_for(quiet, timeout=15, message="inventory_svc applied and relayed everything")

    async def outputs(self, order_id: str | None = None) -> list[Output]:
        """inventory_svc's events in stream order, for one order or all."""
        out = []
        for subject, headers, data in await stream_messages(self.nc, "INVENTORY"):
            _, name, subject_order = subject.split(".", 2)
            if order_id is None or subject_order == order_id:
                out.append(Output(name, INVENTORY_TYPES[headers["Paymesh-Type"]].FromString(data), headers))
        return out


def rig_env(nats_url: str, db_url: str, data_dir: Path) -> dict[str, str]:
    return {
        "PAYMESH_NATS_URL": nats_url,
        "INVENTORY_SVC_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "INVENTORY_SVC_DB_URL": db_url,
        "PAYMESH_DATA_DIR": str(data_dir),
        "PAYMESH_SHUTDOWN_GRACE_S": "1",
        **AUTH_ENV,
    }


@contextlib.asynccontextmanager
async def running(nats_url: str, db_url: str, data_dir: Path, merchants: tuple[str, ...] = MERCHANTS
                  ) -> AsyncIterator[Rig]:
    """inventory_svc up on `db_url` (migrated to head at start), with a stub per merchant in `merchants`."""
    settings = Settings.from_env(SPEC, rig_env(nats_url, db_url, data_dir))
    nc = await jetstream.connect([nats_url], "inventory-test")
    js = nc.jetstream()
    # The streams order_svc and payment_svc would own; inventory_svc's consumers bind to them.
    await jetstream.ensure_stream(js, "ORDER", ["order.>"])
    await jetstream.ensure_stream(js, "PAYMENT", ["payment.>"])
    # Before start, so the registry has them loaded when the first call comes.
    keys = {merchant: await key_for(nats_url, merchant) for merchant in merchants}
    host = start_host(settings)
    await host.start()
    rig: Rig | None = None
    try:
        async with contextlib.AsyncExitStack() as channels:
            stubs = {}
            for merchant, key in keys.items():
                channel = grpc.aio.insecure_channel(settings.grpc_addr, interceptors=bearer(key))
                await channels.enter_async_context(channel)
                stubs[merchant] = Stub(channel)
            rig = Rig(host, stubs, nc)
            yield rig
    finally:
        await (rig.host if rig else host).stop()
        await nc.close()


@pytest.fixture
async def rig(nats_server: NatsServer, db_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    async with running(nats_server.url, db_url, tmp_path) as rig:
        yield rig
