"""The outbox and consumer on a 3-node JetStream cluster with R3 streams, the stream leader SIGKILLed mid-flow."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS

from paymesh.chassis import jetstream
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.events import InboundEvent
from paymesh.chassis.outbox import OutboxRelay, add
from paymesh.ops.natsserver import NatsCluster
from tests.conftest import wait_for
from tests.integration.chassis_harness import EVENTS, FAST, Store, ids_of, placed, stream_messages

pytestmark = pytest.mark.timeout(120)


async def read_after_failover(nc: NATS, stream: str) -> list[tuple[str, dict[str, str], bytes]]:
    """The stream's messages; the API may time out while the restarted node rejoins, so ask again."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            return await stream_messages(nc, stream)
        except nats.errors.TimeoutError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)  # back off before asking the cluster again


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "cluster").start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_stream_leader_killed_mid_flow_loses_and_doubles_nothing(cluster: NatsCluster, db_url: str,
                                                                     tmp_path: Path) -> None:
    nc = await jetstream.connect(cluster.urls, "publisher")
    js = nc.jetstream()
    await jetstream.ensure_stream(js, "ORDER", ["order.>"], replicas=3)
    await jetstream.ensure_stream(js, jetstream.DLQ_STREAM, jetstream.DLQ_SUBJECTS, replicas=3)
    consumer_nc = await jetstream.connect(cluster.urls, "consumer")

    async with Store(db_url) as store, Store(f"sqlite+aiosqlite:///{tmp_path / 'consumer.db'}") as ledger:
        from paymesh.chassis.consumer import Consumer, ConsumerSpec

        async def credit(uow: UnitOfWork, events: list[InboundEvent]) -> None:
            await ledger.credit(uow, events)

        consumer = Consumer(
            ConsumerSpec("ledger", "ORDER", ["order.placed.*"], credit, EVENTS, backoff=FAST, ack_wait_s=5),
            consumer_nc.jetstream(), ledger.db, ledger.inbox, "test_svc",
        )
        await consumer.start()
        relay = OutboxRelay(store.db, store.outbox, nc, batch_size=20, ack_timeout_s=2.0)
        relay.start()
        committed: list[str] = []

        async def commit(count: int) -> None:
            for _ in range(count):
                event = placed()
                async with store.db.unit_of_work() as uow:
                    await add(uow.conn, store.outbox, [event])
                    uow.after_commit(relay.wake)
                    await uow.commit()
                committed.append(event.event_id)

        try:
            await commit(100)
            leader = (await js.stream_info("ORDER")).cluster.leader
            assert leader, "an R3 stream has a leader"
            victim = cluster.node(leader)
            writing = asyncio.create_task(commit(200))
            await wait_for(lambda: len(committed) >= 130, message="commits under way")
            victim.kill()  # the stream leader dies mid-flow, unsynced work and all
            await writing
            await wait_for(lambda: relay.published == 300, timeout=60, message="every row relayed after failover")
            await asyncio.to_thread(victim.start)  # it comes back and catches up
            await wait_for(lambda: consumer.applied == 300, timeout=60, message="every event applied once")
        finally:
            await relay.stop()
            await consumer.stop()
        credits = await ledger.credits()
    assert len(credits) == 300 and set(credits.values()) == {1}, "each event applied exactly once"
    messages = await read_after_failover(nc, "ORDER")
    assert ids_of(messages) == committed, "each event on the stream exactly once, in commit order"
    await consumer_nc.close()
    await nc.close()
