"""A tiny service on the chassis for its tests: a ledger table credited by `order.placed` events."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from sqlalchemy import Column, Integer, MetaData, String, Table, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from paymesh.chassis import jetstream
from paymesh.chassis.auth import Principal, Scope, current_principal, requires
from paymesh.chassis.backoff import Backoff
from paymesh.chassis.config import Settings
from paymesh.chassis.consumer import Consumer, ConsumerSpec
from paymesh.chassis.db import Database, UnitOfWork
from paymesh.chassis.errors import NotFound, invalid_argument
from paymesh.chassis.events import InboundEvent, OutboundEvent, new_event_id
from paymesh.chassis.inbox import inbox_table
from paymesh.chassis.outbox import outbox_table
from paymesh.chassis.service import GrpcService, Runtime, ServiceHost, Wiring
from paymesh.chassis.spec import ServiceSpec, no_settings
from paymesh.chassis.tls import current_peer
from paymesh.ops.natsserver import NatsServer, free_port
from paymesh.order.v1 import events_pb2, order_service_pb2, order_service_pb2_grpc
from tests.keys import AUTH_ENV

EVENTS = (events_pb2.OrderPlaced,)


class Store:
    """A database with the chassis tables and one `ledger` row per order, credited per event."""

    def __init__(self, url: str) -> None:
        self.metadata = MetaData()
        self.ledger = Table(
            "ledger",
            self.metadata,
            Column("order_id", String(64), primary_key=True),
            Column("credits", Integer, nullable=False),
        )
        self.outbox = outbox_table(self.metadata)
        self.inbox = inbox_table(self.metadata)
        self.db = Database(url, self.metadata)

    async def __aenter__(self) -> Store:
        await self.db.create_schema()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.db.dispose()

    async def credits(self) -> dict[str, int]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(self.ledger))
            return {r.order_id: r.credits for r in rows}

    async def credit(self, uow: UnitOfWork, events: list[InboundEvent]) -> None:
        """A set-based handler: one read for the batch, then executemany writes."""
        ids = [e.order_id for e in events]
        conn: AsyncConnection = uow.conn
        rows = await conn.execute(select(self.ledger.c.order_id).where(self.ledger.c.order_id.in_(ids)))
        known = {r[0] for r in rows}
        new = [{"order_id": i, "credits": 0} for i in dict.fromkeys(ids) if i not in known]
        if new:
            await conn.execute(self.ledger.insert(), new)
        for order_id in ids:
            await conn.execute(
                update(self.ledger).where(self.ledger.c.order_id == order_id).values(credits=self.ledger.c.credits + 1)
            )


def placed(order_id: str | None = None, event_id: str | None = None) -> OutboundEvent:
    order_id = order_id or uuid.uuid4().hex
    message = events_pb2.OrderPlaced(
        event_id=event_id or new_event_id(), order_id=order_id, amount_minor=100, merchant_id="mer_chassis_tests"
    )
    return OutboundEvent.of(f"order.placed.{order_id}", message)


async def stream_messages(nc: NATS, stream: str, subject: str = ">") -> list[tuple[str, dict[str, str], bytes]]:
    """Every message on `stream`, in stream order, read through an ephemeral ordered consumer."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out: list[tuple[str, dict[str, str], bytes]] = []
    if info.state.messages == 0:
        return out
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    try:
        while len(out) < info.state.messages:
            msg = await sub.next_msg(timeout=5)
            out.append((msg.subject, dict(msg.headers or {}), msg.data))
    finally:
        await sub.unsubscribe()
    return out


async def ensure_order_stream(nc: NATS) -> None:
    js = nc.jetstream()
    await jetstream.ensure_stream(js, "ORDER", ["order.>"])
    await jetstream.ensure_stream(js, jetstream.DLQ_STREAM, jetstream.DLQ_SUBJECTS)


def ids_of(messages: Sequence[tuple[str, dict[str, str], bytes]]) -> list[str]:
    return [h["Nats-Msg-Id"] for _, h, _ in messages]


FAST = Backoff(base_s=0.05, cap_s=0.2)


@dataclass
class Rig:
    """A connection to the test's nats-server with the ORDER and DLQ streams, and a Store."""

    nc: NATS
    store: Store


def consumer_for(rig: Rig, handler, durable: str = "ledger", **spec_kw) -> Consumer:  # type: ignore[no-untyped-def]
    spec = ConsumerSpec(
        durable=durable,
        stream="ORDER",
        filter_subjects=["order.placed.*"],
        handler=handler,
        events=EVENTS,
        backoff=FAST,
        **spec_kw,
    )
    return Consumer(spec, rig.nc.jetstream(), rig.store.db, rig.store.inbox, "test_svc")


async def publish(nc: NATS, event: OutboundEvent, msg_id: str | None = None) -> None:
    headers = event.nats_headers()
    if msg_id:
        headers["Nats-Msg-Id"] = msg_id
    await nc.jetstream().publish(event.subject, event.payload, headers=headers)


async def all_acked(nc: NATS, durable: str = "ledger") -> bool:
    return await jetstream.consumer_backlog(nc.jetstream(), "ORDER", durable) == 0


class RefusingOrders(order_service_pb2_grpc.OrderServiceServicer):
    """Raises the chassis' errors so the test can see what a client receives."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.callers: list[Principal] = []  # who called CreateOrder, as the handler was told
        self.peers: list[str | None] = []  # and which certificate it showed (mTLS), as current_peer() said

    @requires(Scope.ORDERS_WRITE)
    async def CancelOrder(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await super().CancelOrder(request, context)  # type: ignore[safe-super]  # the base's UNIMPLEMENTED

    @requires(Scope.ORDERS_READ)
    async def WatchOrder(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise NotImplementedError

    @requires(Scope.ORDERS_READ)
    async def GetOrder(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        raise NotFound(f"order {request.order_id} not found", reason="ORDER_NOT_FOUND",
                       metadata={"order_id": request.order_id})

    @requires(Scope.ORDERS_WRITE)
    async def CreateOrder(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.callers.append(current_principal())
        self.peers.append(current_peer())
        if not request.items:
            raise invalid_argument([("items", "at least one line item is required"),
                                    ("currency", "must be an ISO 4217 code")])
        # A state change with its event, through the chassis' outbox.
        async with self.runtime.db.unit_of_work() as uow:
            await self.runtime.publish(uow, [placed(order_id=request.request_id or "o-from-rpc")])
            await uow.commit()
        # Who the handler was told called, read again after awaiting: concurrent calls must not see each other's.
        return order_service_pb2.CreateOrderResponse(order={"customer_id": current_principal().merchant_id})

    @requires(Scope.ORDERS_READ)
    async def ListOrders(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise RuntimeError("a bug")


def _no_wiring(runtime: Runtime, settings: None) -> Wiring:
    raise AssertionError("make_host wires the refusing servicer itself")


# A service that owns no tables and serves OrderService on ORDER_SVC_*'s settings; its database
# carries order_svc's migrations (the chassis tables come with them).
REFUSING_SPEC = ServiceSpec(
    name="order_svc",
    env_prefix="ORDER_SVC",
    grpc_port=50051,
    stream="ORDER",
    metadata=MetaData,
    migrations="order_svc.migrations",
    wire=_no_wiring,
    settings=no_settings,
)


def settings_for(nats: NatsServer, db_url: str, tmp_path: Any, **extra_env: str) -> Settings:
    env = {
        "PAYMESH_NATS_URL": nats.url,
        "ORDER_SVC_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "ORDER_SVC_DB_URL": db_url,
        "PAYMESH_DATA_DIR": str(tmp_path),
        **AUTH_ENV,
        **extra_env,
    }
    return Settings.from_env(REFUSING_SPEC, env)


def make_host(settings: Settings) -> ServiceHost:
    runtime = Runtime(REFUSING_SPEC, settings)
    servicer = RefusingOrders(runtime)
    wiring = Wiring(services=[GrpcService("paymesh.order.v1.OrderService", servicer,
                                          order_service_pb2_grpc.add_OrderServiceServicer_to_server)])
    return ServiceHost(runtime, wiring)
