"""The mesh's services in-process on one NATS and their own SQLite files, called generically: any body as the
request of any RPC the descriptors list, with the key its scope needs; and what a call may have changed. Webhooks
go to one local receiver that accepts every delivery."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import strategies as st
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export import SpanExporter
from sqlalchemy import func, select

from paymesh.chassis import jetstream
from paymesh.chassis.auth import Scope, scopes_of
from paymesh.chassis.auth.keys import PLATFORM_MERCHANT
from paymesh.chassis.config import Settings
from paymesh.chassis.service import Runtime, ServiceHost
from paymesh.chassis.tracing import Tracing
from paymesh.ops.nats_setup import ensure_shared
from paymesh.ops.natsserver import free_port
from paymesh.ops.services import SPECS
from tests.conftest import wait_for
from tests.integration.hostile import message_class
from tests.keys import AUTH_ENV, MERCHANT_A, MERCHANT_B, PLATFORM_ENV, PLATFORM_KEY, issue, key_for
from tests.served import SERVED, SERVICE_OF
from tests.webhooks import Receiver
from webhook_svc.domain import DeliveryStatus
from webhook_svc.service import ALLOW_PRIVATE_ENV

CALL_TIMEOUT_S = 5.0  # a call that has not answered by then hangs


@dataclass(frozen=True)
class Rpc:
    service: str  # the mesh service that serves it (order_svc, ...)
    method: MethodDescriptor
    scope: Scope | None  # None: open to every caller (health)

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def request(self) -> Descriptor:
        return self.method.input_type


def every_rpc() -> list[Rpc]:
    """Every RPC of every served service, and each service's health check."""
    pool = descriptor_pool.Default()
    rpcs = []
    for full_name, servicer in SERVED.items():
        scopes = scopes_of(servicer, full_name)
        for method in pool.FindServiceByName(full_name).methods:
            rpcs.append(Rpc(SERVICE_OF[full_name], method, scopes[f"/{full_name}/{method.name}"]))
    check = health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name["Check"]
    return rpcs + [Rpc(spec.name, check, None) for spec in SPECS]


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    message: str = ""
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)
    rich: bool = False  # it carried google.rpc.Status details
    body: bytes = b""  # the (first) response of an OK answer

    @classmethod
    def of(cls, err: grpc.aio.AioRpcError) -> Answer:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        reason, domain, metadata, fields = "", "", {}, []
        for detail in status.details if status is not None else []:
            info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            if detail.Unpack(info):
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Unpack(bad):
                fields += [v.field for v in bad.field_violations]
        return cls(err.code(), err.details() or "", reason, domain, metadata, fields, status is not None)


class Tracebacks(logging.Handler):
    """Every record logged with a traceback, or at ERROR and above."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)

    def take(self) -> list[str]:
        seen, self.records = self.records, []
        return [f"{r.name}: {r.getMessage()}" for r in seen]


@dataclass
class Mesh:
    """The running services, a channel to each, and what the tests learnt of them."""

    hosts: dict[str, ServiceHost]
    channels: dict[str, grpc.aio.Channel]
    js: JetStreamContext
    keys: dict[str, str]  # merchant (MERCHANT_A), other (MERCHANT_B), operator, platform
    logged: Tracebacks
    # Every page token the lists handed out: by token, the list, the key it was handed to and the filters of
    # the request (the request without its page size).
    issued: dict[str, tuple[str, str | None, bytes]] = field(default_factory=dict)
    # The strings the seed's requests and every list's answers held, by field name: ids of what exists, skus...
    seen: dict[str, list[str]] = field(default_factory=dict)
    bodies: dict[str, st.SearchStrategy[bytes]] = field(default_factory=dict)  # each RPC's, made once
    # Each service's state after the last call checked, so a call costs one read of it, not two.
    known: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    webhook_url: str = ""  # the receiver every webhook endpoint of the seed points at; it answers 200

    def key_for(self, rpc: Rpc, merchant: str = "merchant") -> str | None:
        if rpc.scope is None:
            return None
        if rpc.scope == Scope.PLATFORM:
            return self.keys["platform"]
        if rpc.scope == Scope.OPERATOR:
            return self.keys["operator"]
        return self.keys[merchant]

    async def call(self, rpc: Rpc, body: bytes, key: str | None | bool = True) -> Answer:
        """`body` as the request of `rpc`, with the key its scope needs (`key=True`), a given one, or none."""
        key = self.key_for(rpc) if key is True else key
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        channel = self.channels[rpc.service]
        try:
            if rpc.method.server_streaming:
                stream = channel.unary_stream(rpc.path)(body, metadata=metadata, timeout=CALL_TIMEOUT_S)
                responses = [response async for response in stream]
                return Answer(grpc.StatusCode.OK, body=responses[0] if responses else b"")
            reply = await channel.unary_unary(rpc.path)(body, metadata=metadata, timeout=CALL_TIMEOUT_S)
            return Answer(grpc.StatusCode.OK, body=reply)
        except grpc.aio.AioRpcError as err:
            return Answer.of(err)

    async def state(self, service: str) -> tuple[Any, ...]:
        """The service's rows (its own tables whole, the chassis' counted) and every stream's message count."""
        host = self.hosts[service]
        own = set(host.runtime.spec.metadata().tables)
        rows: list[Any] = []
        async with host.runtime.db.read() as conn:
            for table in host.runtime.metadata.sorted_tables:
                if table.name in own:
                    rows.append(sorted(repr(tuple(row)) for row in (await conn.execute(select(table))).all()))
                else:
                    rows.append((await conn.execute(select(func.count()).select_from(table))).scalar_one())
        return tuple(rows), await self.messages()

    def remember(self, message: Message) -> None:
        """Keeps `message`'s strings by field name, for plausible requests (tests.integration.hostile)."""
        for name, value in strings_in(message):
            self.seen.setdefault(name, []).append(value)

    async def seeded(self, rpc: Rpc, request: Message, merchant: str = "merchant") -> None:
        """A valid request, accepted; its strings and its answer's are remembered for plausible requests."""
        answer = await self.call(rpc, request.SerializeToString(), self.key_for(rpc, merchant))
        assert answer.code == grpc.StatusCode.OK, (rpc.path, answer)
        self.remember(request)
        self.remember(message_class(rpc.method.output_type).FromString(answer.body))

    async def settled(self) -> None:
        """Until no outbox holds an unsent event and every durable has acked all it was sent, twice over with no
        message published meanwhile: one pass reads the services one after another, and an event can be
        written into an outbox the pass has already read."""

        async def idle() -> bool:
            for host in self.hosts.values():
                outbox = host.runtime.outbox
                async with host.runtime.db.read() as conn:
                    unsent = select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
                    if (await conn.execute(unsent)).scalar_one():
                        return False
                    if await webhooks_pending(host, conn):
                        return False
                for consumer in host.consumers:
                    if await jetstream.consumer_backlog(self.js, consumer.spec.stream, consumer.spec.durable):
                        return False
            return True

        async def quiet() -> bool:
            published = await self.messages()
            return await idle() and await idle() and await self.messages() == published

        await wait_for(quiet, timeout=20, message="the mesh to settle")

    async def messages(self) -> tuple[int, ...]:
        """How many messages each stream holds."""
        streams = [spec.stream for spec in SPECS if spec.stream] + [jetstream.DLQ_STREAM]
        return tuple([(await self.js.stream_info(name)).state.messages for name in streams])

    async def serving(self) -> dict[str, int]:
        out = {}
        for name, channel in self.channels.items():
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            out[name] = reply.status
        return out


async def webhooks_pending(host: ServiceHost, conn: Any) -> int:
    """webhook_svc's deliveries not yet answered (0 for the other services): its sender posts them in the
    background, after the consumer has acked, so neither an outbox nor a consumer's backlog shows them."""
    deliveries = host.runtime.metadata.tables.get("deliveries")
    if host.runtime.spec.name != "webhook_svc" or deliveries is None:
        return 0
    pending = select(func.count()).select_from(deliveries).where(deliveries.c.status == DeliveryStatus.PENDING.value)
    return int((await conn.execute(pending)).scalar_one())


def strings_in(message: Message) -> list[tuple[str, str]]:
    """Every string field of `message` and the messages it holds: (field name, value)."""
    found: list[tuple[str, str]] = []
    for described, value in message.ListFields():
        if described.message_type is not None:
            for item in value if described.is_repeated else [value]:
                found += strings_in(item)
        elif isinstance(value, str):
            found.append((described.name, value))
    return found


def mesh_env(nats_url: str, data_dir: Path) -> dict[str, str]:
    env = {
        **AUTH_ENV,
        **PLATFORM_ENV,
        "PAYMESH_NATS_URL": nats_url,
        "PAYMESH_DATA_DIR": str(data_dir),  # each service's SQLite file is <service>.db in it
        "PAYMESH_SHUTDOWN_GRACE_S": "0.5",
        # The webhook receiver is on loopback, as `paymesh up` allows for local development.
        ALLOW_PRIVATE_ENV: "true",
    }
    for spec in SPECS:
        env[f"{spec.env_prefix}_GRPC_ADDR"] = f"127.0.0.1:{free_port()}"  # payment_svc finds the gateway by it
        env[f"{spec.env_prefix}_METRICS_ADDR"] = f"127.0.0.1:{free_port()}"
    return env


@contextlib.asynccontextmanager
async def running_mesh(nats_url: str, data_dir: Path,
                       spans: Mapping[str, SpanExporter] | None = None) -> AsyncIterator[Mesh]:
    """The services started one after the other (SPECS' order), their keys made first, a channel to each, and
    a webhook receiver answering 200 to every delivery. `spans`: each service records its spans into its own
    exporter (by service name)."""
    keys = {
        "merchant": await key_for(nats_url, MERCHANT_A),
        "other": await key_for(nats_url, MERCHANT_B),
        "operator": (await issue(nats_url, PLATFORM_MERCHANT, frozenset(), operator=True))[1],
        "platform": PLATFORM_KEY,
    }
    env = mesh_env(nats_url, data_dir)
    logged = Tracebacks()
    logging.getLogger().addHandler(logged)
    hosts: dict[str, ServiceHost] = {}
    channels: dict[str, grpc.aio.Channel] = {}
    receiver = Receiver()
    await receiver.start()
    nc = await jetstream.connect([nats_url], "hostile-test")
    # What the operator makes before any service starts, and each service's own stream, which its peers
    # bind: so they start one after the other, none waiting for a stream another one creates.
    await ensure_shared(nc.jetstream())
    for spec in SPECS:
        if spec.stream:
            await jetstream.ensure_stream(nc.jetstream(), spec.stream, [f"{spec.stream.lower()}.>"])
    try:
        for spec in SPECS:
            runtime = Runtime(spec, Settings.from_env(spec, env))
            if spans is not None:
                runtime.tracing = Tracing.to(spec.name, spans[spec.name])
            hosts[spec.name] = ServiceHost(runtime, spec.wire(runtime, spec.settings(env)))
            await hosts[spec.name].start()
            channels[spec.name] = grpc.aio.insecure_channel(runtime.settings.grpc_addr)
        yield Mesh(hosts, channels, nc.jetstream(), keys, logged, webhook_url=receiver.url)
    finally:
        for channel in channels.values():
            await channel.close()
        for host in reversed(hosts.values()):
            await host.stop()
        await nc.close()
        await receiver.stop()
        logging.getLogger().removeHandler(logged)
