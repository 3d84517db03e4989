"""A payment_svc in-process on a free port, with real NATS, a real store and a scripted gateway peer;
helpers that publish as order_svc and inventory_svc would. Its clients call with merchant keys (MERCHANT_A's
by default, MERCHANT_B's through `as_merchant`); payment_svc calls the gateway with the platform key."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS

from payment_svc.api import PaymentApi
from payment_svc.gateway_client import GatewayClient, GatewayPolicy, RetryPolicy
from payment_svc.service import SPEC, PaymentSettings
from paymesh.chassis import jetstream
from paymesh.chassis.auth.bearer import bearer
from paymesh.chassis.backoff import Backoff
from paymesh.chassis.config import Settings
from paymesh.chassis.events import OutboundEvent, message_types, new_event_id
from paymesh.chassis.service import Runtime, ServiceHost
from paymesh.inventory.v1 import events_pb2 as inventory_events
from paymesh.ops.natsserver import NatsServer, free_port
from paymesh.order.v1 import events_pb2 as order_events
from paymesh.payment.v1 import events_pb2 as payment_events
from paymesh.payment.v1 import payment_pb2, payment_service_pb2, payment_service_pb2_grpc
from tests.conftest import wait_for
from tests.integration.chassis_harness import publish, stream_messages
from tests.integration.payment.scripted_gateway import GatewayServer, ScriptedGateway
from tests.keys import AUTH_ENV, MERCHANT_A, MERCHANT_B, PLATFORM_ENV, key_for

PS = payment_pb2.PaymentStatus
PAYMENT_TYPES = message_types(payment_events)


def fast(settings: PaymentSettings) -> PaymentSettings:
    """Production shapes, shorter clocks: the same code paths in a test's time."""
    return dataclasses.replace(
        settings,
        gateway=GatewayPolicy(
            call_deadline_s=1.0,
            retry=RetryPolicy(attempts=3, backoff=Backoff(base_s=0.02, cap_s=0.05)),
            breaker_fail_max=5,
            breaker_reset_s=0.5,
        ),
        redelivery=Backoff(base_s=0.05, cap_s=0.3),
        refund_backoff=Backoff(base_s=0.05, cap_s=0.3),
        refund_scan_s=0.5,
    )


@dataclass(frozen=True)
class Published:
    subject: str
    headers: dict[str, str]
    message: Any

    @property
    def event(self) -> str:
        return self.subject.split(".")[1]


@dataclass(frozen=True)
class RigSettings:
    """The chassis' settings of the payment_svc under test and its own."""

    chassis: Settings
    payment: PaymentSettings

    @property
    def grpc_addr(self) -> str:
        return self.chassis.grpc_addr


@dataclass
class Rig:
    settings: RigSettings
    host: ServiceHost
    gateway: GatewayServer | None
    nc: NATS
    # One channel per merchant, each sending that merchant's key; `payments` is MERCHANT_A's stub.
    channels: dict[str, grpc.aio.Channel]
    payments: payment_service_pb2_grpc.PaymentServiceStub

    def as_merchant(self, merchant_id: str) -> payment_service_pb2_grpc.PaymentServiceStub:
        """A stub calling with `merchant_id`'s key (MERCHANT_A or MERCHANT_B)."""
        return payment_service_pb2_grpc.PaymentServiceStub(self.channels[merchant_id])

    @property
    def gateway_client(self) -> GatewayClient:
        """payment_svc's client of the gateway, reached through its wiring."""
        api = self.host.wiring.services[0].servicer
        assert isinstance(api, PaymentApi)
        return api.refunder.gateway

    async def publish(self, subject: str, message: Message, msg_id: str | None = None) -> OutboundEvent:
        event = OutboundEvent.of(subject, message)
        await publish(self.nc, event, msg_id)
        return event

    async def place(
        self,
        order_id: str,
        token: str = "tok_visa",
        amount: int = 1999,
        deadline_s: float | None = 30.0,
        merchant: str = MERCHANT_A,
    ) -> OutboundEvent:
        message = order_events.OrderPlaced(
            event_id=new_event_id(),
            merchant_id=merchant,
            order_id=order_id,
            customer_id="cus_1",
            currency="USD",
            amount_minor=amount,
            payment_method_token=token,
        )
        if deadline_s is not None:
            ts = Timestamp()
            ts.FromDatetime(datetime.now(UTC) + timedelta(seconds=deadline_s))
            message.deadline.CopyFrom(ts)
        return await self.publish(f"order.placed.{order_id}", message)

    async def reserve(
        self, order_id: str, event_id: str | None = None, msg_id: str | None = None, merchant: str = MERCHANT_A
    ) -> OutboundEvent:
        message = inventory_events.InventoryReserved(
            event_id=event_id or new_event_id(), order_id=order_id, merchant_id=merchant
        )
        return await self.publish(f"inventory.reserved.{order_id}", message, msg_id)

    async def cancel(self, order_id: str, merchant: str = MERCHANT_A) -> OutboundEvent:
        message = order_events.OrderCancelled(
            event_id=new_event_id(), order_id=order_id, reason="customer asked", merchant_id=merchant
        )
        return await self.publish(f"order.cancelled.{order_id}", message)

    async def payment_of(self, order_id: str, merchant: str = MERCHANT_A) -> payment_pb2.Payment | None:
        request = payment_service_pb2.ListPaymentsRequest(order_id=order_id)
        reply = await self.as_merchant(merchant).ListPayments(request)
        assert len(reply.payments) <= 1
        return reply.payments[0] if reply.payments else None

    async def wait_payment(
        self, order_id: str, status: int, timeout: float = 10.0, merchant: str = MERCHANT_A
    ) -> payment_pb2.Payment:
        async def reached() -> payment_pb2.Payment | None:
            payment = await self.payment_of(order_id, merchant)
            return payment if payment is not None and payment.status == status else None

        return await wait_for(reached, timeout=timeout, message=f"payment of {order_id} in {PS.Name(status)}")

    async def published(self, order_id: str | None = None) -> list[Published]:
        if not await _has_stream(self.nc, "PAYMENT"):
            return []
        out = []
        for subject, headers, data in await stream_messages(self.nc, "PAYMENT"):
            if order_id is None or subject.endswith(f".{order_id}"):
                out.append(Published(subject, headers, PAYMENT_TYPES[headers["Paymesh-Type"]].FromString(data)))
        return out

    async def wait_events(self, order_id: str, wanted: list[str], timeout: float = 10.0) -> list[Published]:
        async def seen() -> list[Published] | None:
            events = await self.published(order_id)
            return events if [e.event for e in events] == wanted else None

        async def describe() -> str:
            return str([e.event for e in await self.published(order_id)])

        try:
            return await wait_for(seen, timeout=timeout, message=f"events {wanted} for {order_id}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; saw {await describe()}") from None

    async def trail(self, payment_id: str) -> list[str]:
        request = payment_service_pb2.ListPaymentEventsRequest(payment_id=payment_id)
        reply = await self.payments.ListPaymentEvents(request)
        return [e.type for e in reply.events]

    async def restart(self) -> None:
        """Stop this payment_svc and start a fresh one on the same store and NATS, as after a crash."""
        await self.host.stop()
        self.host = await start_host(self.settings)


async def _has_stream(nc: NATS, name: str) -> bool:
    try:
        await nc.jetstream().stream_info(name)
    except Exception:
        return False
    return True


def gw(rig: Rig) -> ScriptedGateway:
    """The scripted gateway's state: its charges, refunds and call counts."""
    assert rig.gateway is not None
    return rig.gateway.servicer


def new_order_id() -> str:
    return f"ord_{uuid.uuid4().hex}"


def settings_for(nats: NatsServer, db_url: str, tmp_path: Path, gateway_addr: str, **env: str) -> RigSettings:
    values = {
        "PAYMESH_NATS_URL": nats.url,
        "PAYMENT_SVC_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "PAYMENT_SVC_DB_URL": db_url,
        "PAYMENT_SVC_GATEWAY_ADDR": gateway_addr,
        "PAYMESH_DATA_DIR": str(tmp_path),
        **AUTH_ENV,
        **PLATFORM_ENV,
        **env,
    }
    return RigSettings(Settings.from_env(SPEC, values), fast(PaymentSettings.from_env(values)))


async def start_host(settings: RigSettings) -> ServiceHost:
    """A payment_svc started as `python -m payment_svc` would, on these settings."""
    runtime = Runtime(SPEC, settings.chassis)
    host = ServiceHost(runtime, SPEC.wire(runtime, settings.payment))
    await host.start()
    return host


@contextlib.asynccontextmanager
async def running(nats: NatsServer, settings: RigSettings, gateway: GatewayServer | None) -> AsyncIterator[Rig]:
    """A started payment_svc and the clients a test drives it with; stopped at the end. The merchants' keys
    are made before the start, so the service loads them with the rest of the bucket."""
    keys = {merchant: await key_for(nats.url, merchant) for merchant in (MERCHANT_A, MERCHANT_B)}
    nc = await jetstream.connect([nats.url], "payment-test")
    # The streams order_svc and inventory_svc would own; payment_svc's consumers bind to them.
    await jetstream.ensure_stream(nc.jetstream(), "ORDER", ["order.>"])
    await jetstream.ensure_stream(nc.jetstream(), "INVENTORY", ["inventory.>"])
    host = await start_host(settings)
    channels = {m: grpc.aio.insecure_channel(settings.grpc_addr, interceptors=bearer(k)) for m, k in keys.items()}
    stub = payment_service_pb2_grpc.PaymentServiceStub(channels[MERCHANT_A])
    rig = Rig(settings, host, gateway, nc, channels, stub)
    try:
        yield rig
    finally:
        for channel in channels.values():
            await channel.close()
        await nc.close()
        await rig.host.stop()


@pytest.fixture
async def rig(nats_server: NatsServer, db_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    gateway = GatewayServer()
    await gateway.start()
    try:
        async with running(nats_server, settings_for(nats_server, db_url, tmp_path, gateway.addr), gateway) as rig:
            yield rig
    finally:
        await gateway.stop()
