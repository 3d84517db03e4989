"""End to end past one machine, on loopback: two replicas of every service on PostgreSQL, one payment replica
SIGKILLed and restarted while 200 orders flow; a 3-node JetStream cluster (R3 streams) whose ORDER stream
leader is SIGKILLed while 200 orders flow, and restarted.

Each test places 200 orders at once, of two merchants interleaved that sell the same skus from their own
stock (declines, a flaky gateway, lost responses, an sku that runs out, cancels racing the saga and after
it) and then checks, for each merchant on its own: every order terminal; never two successful charges
for one order; stock conserved per sku; money at the gateway equal to what confirmed orders owe; nothing
left unsent in an outbox or unacknowledged on a consumer; every event on the streams exactly once; and each
durable consumer's inbox holding exactly the event ids its filter selects on the stream: every event
applied, none by two replicas (the inbox primary key (consumer, event_id) commits with the effect).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import nats
import nats.errors
import nats.js.errors
import pytest

from paymesh.chassis.jetstream import consumer_backlog
from paymesh.ops.databases import admin_dsn
from paymesh.ops.launcher import Mesh
from paymesh.ops.services import SPECS
from paymesh.order.v1 import order_pb2, order_service_pb2
from paymesh.tools.chaos import collect
from paymesh.tools.chaos.facts import stray_charges
from paymesh.tools.invariants import Observed, format_report, run_checks
from tests.e2e.events import Bus
from tests.e2e.harness import TERMINAL, Clients, by_status, eventually, merchant_key, status_name, statuses

ORDERS = 200
# Per merchant (each of the two places half the orders): the last runs out, so some orders are REJECTED
# whatever the timing (each order wants it with p=1/2, 1.5 units on average: ~75 units asked of 15).
STOCK = (150, 120, 15)
TOKENS = ["tok_visa"] * 5 + [
    "tok_chargeDeclined",
    "tok_chargeDeclinedInsufficientFunds",
    "tok_flaky",
    "tok_lostResponse",
]
STREAMS = ("ORDER", "INVENTORY", "PAYMENT")
# Every durable consumer of the mesh (the saga's and webhook_svc's), by the service whose inbox records what it
# applied.
DURABLES = {durable.name: spec.name for spec in SPECS for durable in spec.consumes}
# The services that publish or consume events: each outbox relayed, each inbox checked.
EVENTFUL = tuple(spec.name for spec in SPECS if spec.stream or spec.consumes)
SETTLE_S = 60.0


@dataclass
class Workload:
    """What a test placed for one merchant: one customer's orders, the skus with their initial stock."""

    customer: str
    stock: dict[str, int]
    order_ids: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def merchant_clients(mesh: Mesh) -> AsyncIterator[list[list[Clients]]]:
    """For the development merchant and a second one, stubs on each replica: `[m][0]` dials every service's
    first replica with merchant m's key, `[m][1]` every second one, …"""
    assert mesh.dev_key is not None
    keys = [(mesh.dev_key.merchant_id, mesh.dev_key.api_key), await merchant_key(mesh, "scale merchant")]
    clients = [
        [Clients(mesh, replica, api_key=key, merchant_id=merchant_id)
         for replica in range(1, max(mesh.replicas.values()) + 1)]
        for merchant_id, key in keys
    ]
    try:
        yield clients
    finally:
        for c in (c for per_merchant in clients for c in per_merchant):
            await c.close()


@contextlib.asynccontextmanager
async def cluster_bus(mesh: Mesh) -> AsyncIterator[Bus]:
    """A NATS connection that knows every node (PAYMESH_NATS_URL is comma-separated) and reconnects."""
    nc = await nats.connect(servers=mesh.nats_url.split(","), name="e2e-scale", max_reconnect_attempts=-1,
                            **mesh.nats_options())
    try:
        yield Bus(nc)
    finally:
        await nc.close()


async def patiently(call: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """A JetStream API call, asked again while a cluster elects leaders (it times out or has no responders)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await call()
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)  # back off before asking the cluster again


async def place_orders(
    merchants: list[list[Clients]], seed: int, placed: Callable[[int], None] = lambda _: None
) -> list[Workload]:
    """ORDERS orders at once, the merchants' interleaved, spread over the order_svc replicas; every tenth of a
    merchant's cancelled at once through another replica. The merchants stock the same skus, each its own."""
    rng = random.Random(seed)
    works = [Workload(customer=f"cus_scale_{uuid.uuid4().hex[:10]}", stock={}) for _ in merchants]
    for stock in STOCK:
        sku = await merchants[0][0].put_product(stock)
        for work, clients in zip(works, merchants, strict=True):
            if clients is not merchants[0]:
                await clients[0].put_product(stock, sku=sku)
            work.stock[sku] = stock
    skus = sorted(works[0].stock)
    plans = [
        (
            [(sku, rng.randint(1, 2), rng.randint(100, 5000)) for sku in rng.sample(skus, rng.randint(1, 2))],
            rng.choice(TOKENS),
        )
        for _ in range(ORDERS)
    ]

    async def place(i: int) -> tuple[int, str]:
        lines, token = plans[i]
        who, nth = i % len(merchants), i // len(merchants)
        clients, work = merchants[who], works[who]
        order = await clients[nth % len(clients)].create_order(lines, token=token, customer_id=work.customer)
        placed(i)
        if nth % 10 == 0:  # racing the saga, through the other replica
            try:
                await clients[(nth + 1) % len(clients)].cancel(order.order_id)
            except grpc.aio.AioRpcError as err:  # the saga may have ended first (REJECTED, PAYMENT_FAILED)
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
        return who, order.order_id

    for who, order_id in await asyncio.gather(*(place(i) for i in range(ORDERS))):
        works[who].order_ids.append(order_id)
    return works


async def customer_orders(clients: Clients, customer: str) -> list[order_pb2.Order]:
    orders: list[order_pb2.Order] = []
    token = ""
    while True:
        request = order_service_pb2.ListOrdersRequest(customer_id=customer, page_size=500, page_token=token)
        reply = await clients.order.ListOrders(request, timeout=10)
        orders += reply.orders
        if not (token := reply.next_page_token):
            return orders


async def wait_all_terminal(clients: Clients, work: Workload, timeout: float = SETTLE_S) -> list[order_pb2.Order]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        orders = await customer_orders(clients, work.customer)
        open_ = [o for o in orders if o.status not in TERMINAL]
        if len(orders) == len(work.order_ids) and not open_:
            return orders
        if asyncio.get_running_loop().time() > deadline:
            stuck = [(o.order_id, status_name(o.status)) for o in open_[:5]]
            raise AssertionError(f"not every order terminal after {timeout}s: {by_status(orders)}; e.g. {stuck}")
        await asyncio.sleep(0.2)  # re-reading the orders under a deadline


async def settle(clients: list[Clients], work: Workload) -> list[order_pb2.Order]:
    """Every order terminal; then a few confirmed ones cancelled (through the other replica) and settled again."""
    finals = await wait_all_terminal(clients[0], work)
    late = [o.order_id for o in finals if o.status in statuses("CONFIRMED")][:8]
    for i, order_id in enumerate(late):
        await clients[(i + 1) % len(clients)].cancel(order_id)
    finals = await wait_all_terminal(clients[-1], work)
    assert not [o for o in finals if o.order_id in late and o.status in statuses("CONFIRMED")]
    return finals


async def observe(clients: Clients, work: Workload) -> Observed:
    """The facts `paymesh chaos` checks, read until its checks hold or a deadline passes: an order ends
    before inventory has committed its sale from the same payment.succeeded."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        obs = await collect(clients.client, work.order_ids, work.stock)
        # The mesh is the test's own: a charge for the merchant for an order it did not place is one too many.
        obs.stray_charges = await stray_charges(clients.client, set(work.order_ids), clients.merchant_id)
        if all(r.ok for r in run_checks(obs)) or asyncio.get_running_loop().time() > deadline:
            return obs
        await asyncio.sleep(0.5)  # re-reading the services under a deadline


async def query(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql` on a service's database, read beside the running service (SQLite file or PostgreSQL)."""
    if db_url.startswith("sqlite"):
        path = db_url.split(":///", 1)[1]

        def read() -> list[tuple[Any, ...]]:
            with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
                return conn.execute(sql).fetchall()

        return await asyncio.to_thread(read)
    conn = await asyncpg.connect(admin_dsn(db_url), timeout=10)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def check_invariants(
    mesh: Mesh, merchants: list[list[Clients]], bus: Bus, works: list[Workload], finals: list[list[order_pb2.Order]]
) -> None:
    assert sum(len(f) for f in finals) == ORDERS
    for clients, work, final in zip(merchants, works, finals, strict=True):
        await check_merchant(clients[0], work, final)
    await check_plumbing(mesh, bus)


async def check_merchant(clients: Clients, work: Workload, finals: list[order_pb2.Order]) -> None:
    """The money and stock of one merchant: its orders, its skus, its charges at the bank."""
    assert len(finals) == len(work.order_ids) and all(o.status in TERMINAL for o in finals), by_status(finals)
    outcomes = by_status(finals)
    # The mix did what it was for: each outcome occurred.
    assert {"CONFIRMED", "PAYMENT_FAILED", "REJECTED", "CANCELLED"} <= set(outcomes), outcomes

    # Money and stock, the checks `paymesh chaos` runs (paymesh.tools.invariants): at most one charge taken
    # per order; what the gateway kept equals what the orders owe, order by order (a REQUIRES_REVIEW only
    # with its failed refund); stock conserved per sku, nothing held any more, sold = what the confirmed
    # orders hold (each reservation holds its order's lines); every payment's audit trail in order.
    obs = await observe(clients, work)
    results = run_checks(obs)
    assert all(r.ok for r in results), format_report(results)
    confirmed = [o for o in obs.orders.values() if o.status == "CONFIRMED"]
    assert sum(c.kept_minor for o in confirmed for c in obs.charges[o.order_id]) > 0, "the gateway kept nothing"


async def check_plumbing(mesh: Mesh, bus: Bus) -> None:
    """Of the whole mesh, whoever the merchant: nothing stuck, every event once, every event applied once."""
    # Nothing stuck: every outbox relayed, every consumer caught up, nothing dead-lettered.
    for service in EVENTFUL:
        db_url = mesh.replicas_of(service)[0].db_url
        await eventually(
            lambda url=db_url: query(url, "SELECT count(*) FROM outbox WHERE sent_at IS NULL"),
            lambda rows: rows[0][0] == 0,
            30,
            f"{service}'s outbox relayed",
        )
    infos = {}
    for stream in STREAMS:
        for info in await patiently(lambda s=stream: bus.js.consumers_info(s)):
            infos[info.name] = (stream, info.config.filter_subjects or [info.config.filter_subject])
    assert set(infos) == set(DURABLES), infos

    async def backlog() -> dict[str, int]:
        out = {}
        for durable, (stream, _) in infos.items():
            out[durable] = await patiently(lambda s=stream, d=durable: consumer_backlog(bus.js, s, d))
        return out

    await eventually(backlog, lambda b: not any(b.values()), 45, "every consumer caught up")
    dlq = await patiently(lambda: bus.js.stream_info("DLQ"))
    assert dlq.state.messages == 0, "nothing dead-lettered"

    # Events: each once on its stream; each consumer's inbox = exactly the ids its filter selects there.
    on_stream: dict[str, list[str]] = {}
    for stream in STREAMS:
        events = await patiently(lambda s=stream: bus.stream_events(s, f"{s.lower()}.>"))
        on_stream[stream] = [e.headers["Nats-Msg-Id"] for e in events]
        assert len(on_stream[stream]) == len(set(on_stream[stream])), f"an event twice on {stream}"
    for durable, (stream, filters) in infos.items():
        wanted: set[str] = set()
        for subject in filters:
            wanted |= {
                e.headers["Nats-Msg-Id"] for e in await patiently(lambda st=stream, s=subject: bus.stream_events(st, s))
            }
        service = DURABLES[durable]
        rows = await query(
            mesh.replicas_of(service)[0].db_url, f"SELECT event_id FROM inbox WHERE consumer = '{durable}'"
        )
        applied = Counter(row[0] for row in rows)
        assert not [i for i, n in applied.items() if n > 1], f"{durable}: an event applied twice"
        assert set(applied) == wanted, (
            f"{durable}: {len(wanted - set(applied))} events on {stream} never applied, "
            f"{len(set(applied) - wanted)} applied that are not there"
        )


@pytest.mark.backends("postgres")
@pytest.mark.timeout(150)
async def test_two_replicas_of_every_service_on_postgres_keep_every_invariant(
    new_mesh: Callable[..., Awaitable[Mesh]],
) -> None:
    mesh = await new_mesh(replicas=2)
    assert {s: len(mesh.replicas_of(s)) for s in mesh.services} == dict.fromkeys(mesh.services, 2)
    assert {c.db_url for c in mesh.replicas_of("order_svc")} == {mesh.env["ORDER_SVC_DB_URL"]}
    async with merchant_clients(mesh) as merchants, cluster_bus(mesh) as bus:
        works = await place_orders(merchants, seed=20251122)
        # One payment replica crashes with charges in flight; the other carries on, and the one
        # restarted on the same address asks the gateway again with the same keys.
        await mesh.kill("payment_svc", replica=2)
        await mesh.restart("payment_svc", replica=2)
        finals = [await settle(clients, work) for clients, work in zip(merchants, works, strict=True)]
        await check_invariants(mesh, merchants, bus, works, finals)
    assert not mesh.dead(), [c.describe_exit() for c in mesh.dead()]


@pytest.mark.backends("sqlite")
@pytest.mark.timeout(150)
async def test_order_stream_leader_killed_while_orders_flow_on_a_3_node_cluster(
    new_mesh: Callable[..., Awaitable[Mesh]],
) -> None:
    mesh = await new_mesh(nats_nodes=3)
    assert mesh.cluster is not None and len(mesh.nats_servers) == 3
    async with merchant_clients(mesh) as merchants, cluster_bus(mesh) as bus:
        info = await patiently(lambda: bus.js.stream_info("ORDER"))
        assert info.config.num_replicas == 3 and info.cluster is not None and info.cluster.leader
        victim = info.cluster.leader
        halfway, placed = asyncio.Event(), Counter[str]()

        def count(_: int) -> None:
            placed["orders"] += 1
            if placed["orders"] >= ORDERS // 3:
                halfway.set()

        placing = asyncio.create_task(place_orders(merchants, seed=7, placed=count))
        async with asyncio.timeout(30):
            await asyncio.wait([placing, asyncio.create_task(halfway.wait())], return_when=asyncio.FIRST_COMPLETED)
        await mesh.kill_nats(victim)  # the ORDER stream's leader dies with events in flight
        works = await placing

        async def leader() -> str | None:
            found = await patiently(lambda: bus.js.stream_info("ORDER"))
            return found.cluster.leader if found.cluster else None

        await eventually(leader, lambda name: bool(name) and name != victim, 30, "a new ORDER leader")
        await mesh.restart_nats(victim)
        finals = [await settle(clients, work) for clients, work in zip(merchants, works, strict=True)]
        await check_invariants(mesh, merchants, bus, works, finals)
        info = await patiently(lambda: bus.js.stream_info("ORDER"))
        assert info.cluster is not None and victim in {
            info.cluster.leader,
            *(r.name for r in info.cluster.replicas or []),
        }
    assert not mesh.dead(), [c.describe_exit() for c in mesh.dead()]
