"""Least privilege on the bus: a nats-server with the mesh's own authorization (paymesh.ops.nats_auth) lets
inventory_svc do its own work and refuses the rest: forging payment_svc's event, using another's stream or
durable, deleting a stream, writing an API key. The operator's user replays the DLQ."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from paymesh.chassis import jetstream
from paymesh.chassis.auth import MERCHANT_SCOPES, KeyRegistry, KeyStore, Pepper
from paymesh.chassis.consumer import dlq_subject
from paymesh.chassis.events import OutboundEvent, new_event_id
from paymesh.ops import cli
from paymesh.ops.dlq import list_dead_letters, replay
from paymesh.ops.nats_auth import CREDS_DIR, OPERATOR, MeshUsers, mesh_users
from paymesh.ops.nats_setup import ensure_shared
from paymesh.ops.natsserver import NatsServer
from paymesh.ops.services import SPECS, spec
from paymesh.order.v1 import events_pb2 as order_events
from paymesh.payment.v1 import events_pb2 as payment_events

pytestmark = pytest.mark.timeout(60)

PEPPER = Pepper(b"permissions-pepper-" + b"x" * 32)


class Violations:
    """The permission errors the server sent one connection (nats-py hands them to the error callback)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.arrived = asyncio.Condition()

    async def record(self, exc: Exception) -> None:
        async with self.arrived:
            self.seen.append(str(exc).lower())
            self.arrived.notify_all()

    async def refused(self, action: str, subject: str, call: Awaitable[Any], *, local: bool = False,
                      timeout: float = 10.0) -> None:
        """`call` is refused: the server reports `action` (publish, subscription) on `subject`, and a request
        gets no answer (it is cancelled once the refusal is in). `local`: the call completes on the client
        alone (a publish without reply, a subscribe), so only the server's report tells."""
        wanted = f'permissions violation for {action} to "{subject.lower()}"'
        task = asyncio.ensure_future(call)
        try:
            async with asyncio.timeout(timeout), self.arrived:
                await self.arrived.wait_for(lambda: any(wanted in line for line in self.seen))
            answered = task.done() and not task.cancelled() and task.exception() is None
            assert local or not answered, f"{subject}: answered although refused: {task.result()!r}"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@dataclass
class Bus:
    server: NatsServer
    users: MeshUsers
    operator: NATS
    connections: list[NATS]

    async def connect(self, user: str, violations: Violations | None = None) -> NATS:
        options = self.users.credentials[user].connect_options()
        nc = await nats.connect(self.server.url, name=user, error_cb=(violations or Violations()).record,
                                 **options)
        self.connections.append(nc)
        return nc

    async def own_stream(self, service: str) -> None:
        """The service's stream, created by the service's own user, as the chassis does at start."""
        stream = spec(service).stream
        assert stream is not None
        js = (await self.connect(service)).jetstream()
        await jetstream.ensure_stream(js, stream, jetstream.stream_subjects(stream))

    async def subjects(self, stream: str, subject: str) -> int:
        info = await self.operator.jetstream().stream_info(stream, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[NatsServer, MeshUsers]]:
    users = mesh_users(tmp_path, SPECS)
    server = NatsServer(tmp_path / "nats", authorization=users.authorization).start()
    try:
        yield server, users
    finally:
        server.stop()


@pytest.fixture
async def bus(secured: tuple[NatsServer, MeshUsers]) -> AsyncIterator[Bus]:
    server, users = secured
    operator = await jetstream.connect([server.url], "operator", credentials=users.operator)
    await ensure_shared(operator.jetstream())
    bus = Bus(server, users, operator, [operator])
    try:
        yield bus
    finally:
        for nc in bus.connections:
            await nc.close()


def succeeded(order_id: str) -> OutboundEvent:
    return OutboundEvent.of(f"payment.succeeded.{order_id}", payment_events.PaymentSucceeded(
        event_id=new_event_id(), order_id=order_id, merchant_id="mer_aaaaaaaaaaaaaaaa"))


async def test_nobody_connects_without_the_credentials_of_a_user(bus: Bus) -> None:
    with pytest.raises(nats.errors.Error):
        await nats.connect(bus.server.url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
    with pytest.raises(ConnectionError, match="authorization violation"):
        await jetstream.connect([bus.server.url], "stranger", timeout=2)


async def test_inventory_svc_cannot_forge_payment_succeeded(bus: Bus) -> None:
    await bus.own_stream("payment_svc")
    violations = Violations()
    inventory = await bus.connect("inventory_svc", violations)
    forged = succeeded(f"ord_{uuid.uuid4().hex}")

    await violations.refused("publish", forged.subject, inventory.jetstream().publish(
        forged.subject, forged.payload, headers=forged.nats_headers(), timeout=5))
    # Fire and forget is refused the same: the server drops it before any stream sees it.
    violations.seen.clear()
    await violations.refused("publish", forged.subject, inventory.publish(forged.subject, forged.payload), local=True)
    # Nor through an atomic batch, the outbox relay's other way to publish.
    violations.seen.clear()
    await violations.refused("publish", forged.subject, jetstream.publish_atomic(inventory, [forged] * 7, timeout=5))

    await inventory.flush()
    assert await bus.subjects("PAYMENT", forged.subject) == 0, "a forged event reached the PAYMENT stream"
    # payment_svc itself publishes it.
    payment = await bus.connect("payment_svc")
    await jetstream.publish_each(payment.jetstream(), [forged])
    assert await bus.subjects("PAYMENT", forged.subject) == 1


async def test_inventory_svc_cannot_use_another_services_stream_or_durable(bus: Bus) -> None:
    for service in ("order_svc", "payment_svc"):
        await bus.own_stream(service)
    violations = Violations()
    nc = await bus.connect("inventory_svc", violations)
    js = nc.jetstream()
    api = "$JS.API"

    # order_svc's durable on PAYMENT, a durable of its own name it does not declare, and an ephemeral consumer.
    for durable in ("order_svc-payment", "inventory_svc-refunds"):
        await violations.refused("publish", f"{api}.CONSUMER.DURABLE.CREATE.PAYMENT.{durable}",
                                 js.add_consumer("PAYMENT", ConsumerConfig(durable_name=durable), timeout=5))
    await violations.refused("publish", f"{api}.CONSUMER.CREATE.PAYMENT",
                             js.add_consumer("PAYMENT", ConsumerConfig(ack_policy=AckPolicy.EXPLICIT), timeout=5))
    # Reading another's durable, and pulling from it.
    await violations.refused("publish", f"{api}.CONSUMER.MSG.NEXT.PAYMENT.order_svc-payment",
                             nc.request(f"{api}.CONSUMER.MSG.NEXT.PAYMENT.order_svc-payment", b"", timeout=5))
    # A peer's stream is bound, never changed (it waits for the owner instead), and no other stream is made.
    await violations.refused("publish", f"{api}.STREAM.UPDATE.ORDER",
                             js.update_stream(jetstream.stream_config("ORDER", ["order.>", "refunds.>"], 1)))
    await violations.refused("publish", f"{api}.STREAM.CREATE.REFUNDS",
                             js.add_stream(jetstream.stream_config("REFUNDS", ["refunds.>"], 1)))
    # Nor may it read another user's replies or the saga's subjects directly.
    await violations.refused("subscription", "payment.>", nc.subscribe("payment.>"), local=True)
    await violations.refused("subscription", "_INBOX.payment_svc.>", nc.subscribe("_INBOX.payment_svc.>"), local=True)

    consumers = {c.name for c in await bus.operator.jetstream().consumers_info("PAYMENT")}
    assert consumers == set()


async def test_inventory_svc_cannot_delete_a_stream_or_write_an_api_key(bus: Bus) -> None:
    await bus.own_stream("inventory_svc")
    await bus.own_stream("payment_svc")
    violations = Violations()
    nc = await bus.connect("inventory_svc", violations)
    for stream in ("PAYMENT", "INVENTORY", "DLQ", "KV_PAYMESH_KEYS"):
        await violations.refused("publish", f"$JS.API.STREAM.DELETE.{stream}", nc.jetstream().delete_stream(stream))
    await violations.refused("publish", "$JS.API.STREAM.PURGE.PAYMENT", nc.jetstream().purge_stream("PAYMENT"))
    # A key record is written by the operator alone: a service that could would admit any caller.
    await violations.refused("publish", "$KV.PAYMESH_KEYS.key.key_forged",
                             nc.jetstream().publish("$KV.PAYMESH_KEYS.key.key_forged", b"{}", timeout=5))
    for stream in ("PAYMENT", "INVENTORY", "DLQ", "KV_PAYMESH_KEYS"):
        await bus.operator.jetstream().stream_info(stream)  # still there


async def test_inventory_svc_does_its_own_work(bus: Bus) -> None:
    """Its stream, its events (one by one and in an atomic batch), its durable on a peer's stream (created
    by the peer), pull, ack, nak, term, its dead letters, and reading the API keys with their last use."""
    violations = Violations()
    nc = await bus.connect("inventory_svc", violations)
    js = nc.jetstream()
    await jetstream.ensure_stream(js, "INVENTORY", jetstream.stream_subjects("INVENTORY"))
    order_id = f"ord_{uuid.uuid4().hex}"
    own = [OutboundEvent("evt_" + uuid.uuid4().hex, f"inventory.reserved.{order_id}", "t", b"x", {})
           for _ in range(8)]
    await jetstream.publish_each(js, own[:1])
    await jetstream.publish_atomic(nc, own[1:])
    assert await bus.subjects("INVENTORY", f"inventory.reserved.{order_id}") == 8

    # The peer's stream does not exist yet: inventory_svc waits for it rather than creating it, and says who
    # makes it when it never comes.
    with pytest.raises(jetstream.StreamMissing, match="stream ORDER does not exist after 1s: order_svc creates it"):
        await jetstream.bind_stream(js, "ORDER", "order_svc", timeout=1)
    binding = asyncio.create_task(jetstream.bind_stream(js, "ORDER", "order_svc", timeout=30))
    await bus.own_stream("order_svc")
    await binding
    await jetstream.bind_stream(js, jetstream.DLQ_STREAM, "the operator", timeout=5)
    durable = "inventory_svc-order"
    await js.add_consumer("ORDER", ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
                                                  filter_subjects=["order.placed.*", "order.cancelled.*"]))
    sub = await js.pull_subscribe_bind(durable=durable, stream="ORDER")
    placed = order_events.OrderPlaced(event_id=new_event_id(), order_id=order_id)
    order = await bus.connect("order_svc")
    for _ in range(3):
        await order.jetstream().publish(f"order.placed.{order_id}", placed.SerializeToString())
    first, second, third = [(await sub.fetch(1, timeout=5))[0] for _ in range(3)]
    await first.ack()
    await second.nak(delay=0.1)
    await third.term()
    await js.publish(dlq_subject("inventory_svc", durable), third.data, headers={"Paymesh-Consumer": durable})
    assert await bus.subjects(jetstream.DLQ_STREAM, dlq_subject("inventory_svc", durable)) == 1
    assert (await js.consumer_info("ORDER", durable)).name == durable

    # The keys: the operator makes one, the service's registry loads it and writes its last use.
    store = await KeyStore.open(bus.operator.jetstream(), PEPPER)
    record, secret = await store.create("mer_aaaaaaaaaaaaaaaa", MERCHANT_SCOPES)
    registry = KeyRegistry(nc, PEPPER)
    await registry.start()
    try:
        assert registry.lookup(secret.reveal()).key_id == record.key_id
        await registry.flush_last_use()
    finally:
        await registry.stop()
    await nc.flush()
    assert violations.seen == []


async def test_the_operator_lists_and_replays_a_dead_letter(bus: Bus) -> None:
    await bus.own_stream("order_svc")
    inventory = await bus.connect("inventory_svc")
    order_id = f"ord_{uuid.uuid4().hex}"
    placed = order_events.OrderPlaced(event_id=new_event_id(), order_id=order_id)
    await inventory.jetstream().publish(dlq_subject("inventory_svc", "inventory_svc-order"),
                                        placed.SerializeToString(),
                                        headers={"Paymesh-Original-Subject": f"order.placed.{order_id}",
                                                 "Paymesh-Consumer": "inventory_svc-order"})
    (letter,) = await list_dead_letters(bus.operator)
    await replay(bus.operator, letter)
    assert await bus.subjects("ORDER", f"order.placed.{order_id}") == 1
    assert await list_dead_letters(bus.operator) == []
    with pytest.raises(NotFoundError):
        await bus.operator.jetstream().get_msg(jetstream.DLQ_STREAM, letter.seq)


def test_operator_commands_sign_in_with_the_seed_up_keeps(secured: tuple[NatsServer, MeshUsers], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture lays the data dir out as `paymesh up` does (nats/nats-server.conf, nats-creds/operator.nk):
    `paymesh merchants` and `paymesh dlq` find the NATS and sign in as the operator from it alone."""
    for name in ("PAYMESH_NATS_URL", "PAYMESH_NATS_CREDS", "PAYMESH_KEY_PEPPER", "PAYMESH_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    where = ["--data-dir", str(tmp_path)]
    assert cli.main(["merchants", "create", "Acme", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "Acme"
    assert cli.main(["dlq", "list", *where]) == 0
    assert "DLQ is empty" in capsys.readouterr().out

    (tmp_path / CREDS_DIR / f"{OPERATOR}.nk").unlink()
    assert cli.main(["merchants", "list", *where]) == 2
    assert "refused a connection without credentials" in capsys.readouterr().err
    monkeypatch.setenv("PAYMESH_NATS_CREDS", str(tmp_path / CREDS_DIR / "inventory_svc.nk"))
    assert cli.main(["dlq", "list", *where]) != 0, "a service's user reads no DLQ"
