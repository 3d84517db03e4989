"""The outbox relay against a real nats-server and real SQLite / PostgreSQL stores."""

from __future__ import annotations

import asyncio

import pytest

from paymesh.chassis import jetstream, outbox
from paymesh.chassis.events import MSG_ID, TRACEPARENT, TYPE
from paymesh.chassis.outbox import SEQUENTIAL_MAX, OutboxRelay, add
from paymesh.ops.natsserver import NatsServer
from tests.conftest import wait_for
from tests.integration.chassis_harness import Store, ensure_order_stream, ids_of, placed, stream_messages

pytestmark = pytest.mark.timeout(60)


async def commit_events(store: Store, relay: OutboxRelay | None, count: int) -> list[str]:
    """Commit `count` events, one transaction each, in a known order."""
    ids = []
    for _ in range(count):
        event = placed()
        async with store.db.unit_of_work() as uow:
            await add(uow.conn, store.outbox, [event])
            if relay is not None:
                uow.after_commit(relay.wake)
            await uow.commit()
        ids.append(event.event_id)
    return ids


async def test_committed_events_are_published_in_order_with_headers(nats_server: NatsServer, db_url: str) -> None:
    nc = await jetstream.connect([nats_server.url], "test")
    await ensure_order_stream(nc)
    async with Store(db_url) as store:
        relay = OutboxRelay(store.db, store.outbox, nc, batch_size=7, poll_interval_s=30)
        relay.start()
        try:
            ids = await commit_events(store, relay, 20)
            # A rolled-back transaction leaves nothing to publish.
            async with store.db.unit_of_work() as uow:
                await add(uow.conn, store.outbox, [placed(event_id="rolled-back")])
            # poll_interval_s=30: only the wake-up on commit can deliver these in time.
            await wait_for(lambda: relay.published == 20, message="20 events relayed")
            assert await relay.unsent_count() == 0
        finally:
            await relay.stop()
    messages = await stream_messages(nc, "ORDER")
    assert ids_of(messages) == ids
    subject, headers, _ = messages[0]
    assert subject.startswith("order.placed.")
    assert headers[TYPE] == "paymesh.order.v1.OrderPlaced"
    assert headers[MSG_ID] == ids[0]
    assert headers[TRACEPARENT].startswith("00-")
    await nc.close()


class CrashAfterPublish(Exception):
    """Stands for the process dying after JetStream's ack and before the rows are marked sent."""


class CrashingRelay(OutboxRelay):
    async def mark_sent(self, event_ids: list[str]) -> None:
        raise CrashAfterPublish


# A batch of SEQUENTIAL_MAX or fewer rows is published one by one; a larger one atomically,
# and its resend is refused whole by the server and then sent one by one.
@pytest.mark.parametrize("batch", [SEQUENTIAL_MAX - 1, SEQUENTIAL_MAX + 2], ids=["one-by-one", "atomic"])
async def test_relay_killed_between_publish_and_mark_sent(
    nats_server: NatsServer, db_url: str, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused: list[int] = []

    async def publish_atomic(nc: object, events: list[object], **kw: object) -> int:
        try:
            return await jetstream.publish_atomic(nc, events, **kw)  # type: ignore[arg-type]
        except jetstream.DuplicateInBatch:
            refused.append(len(events))
            raise

    monkeypatch.setattr(outbox, "publish_atomic", publish_atomic)
    nc = await jetstream.connect([nats_server.url], "test")
    await ensure_order_stream(nc)
    async with Store(db_url) as store:
        ids = await commit_events(store, None, 2 * batch + 2)
        crashing = CrashingRelay(store.db, store.outbox, nc, batch_size=batch)
        with pytest.raises(CrashAfterPublish):
            await crashing.relay_once()  # the first batch on the stream, still unsent in the table
        assert len(await stream_messages(nc, "ORDER")) == batch
        assert await crashing.unsent_count() == len(ids)

        restarted = OutboxRelay(store.db, store.outbox, nc, batch_size=batch)
        while await restarted.relay_once():
            pass
        assert await restarted.unsent_count() == 0
    assert refused == ([] if batch <= SEQUENTIAL_MAX else [batch]), "the atomic resend is refused whole once"
    messages = await stream_messages(nc, "ORDER")
    assert ids_of(messages) == ids, "each event exactly once, in commit order"
    await nc.close()


async def test_nats_outage_loses_nothing(nats_server: NatsServer, db_url: str) -> None:
    nc = await jetstream.connect([nats_server.url], "test")
    await ensure_order_stream(nc)
    async with Store(db_url) as store:
        relay = OutboxRelay(store.db, store.outbox, nc, batch_size=10, ack_timeout_s=1.0)
        relay.start()
        try:
            before = await commit_events(store, relay, 5)
            await wait_for(lambda: relay.published == 5, message="first events relayed")
            nats_server.stop()
            during = await commit_events(store, relay, 25)
            # Let the relay fail against the dead server at least once.
            await wait_for(lambda: relay.failures > 0, message="relay noticed the outage")
            assert await relay.unsent_count() == 25
            nats_server.start()
            after = await commit_events(store, relay, 5)
            await wait_for(lambda: relay.published == 35, timeout=30, message="all events relayed after restart")
        finally:
            await relay.stop()
    messages = await stream_messages(nc, "ORDER")
    assert ids_of(messages) == before + during + after
    await nc.close()


async def test_wake_without_rows_is_cheap_and_stop_is_prompt(nats_server: NatsServer, db_url: str) -> None:
    nc = await jetstream.connect([nats_server.url], "test")
    await ensure_order_stream(nc)
    async with Store(db_url) as store:
        relay = OutboxRelay(store.db, store.outbox, nc, poll_interval_s=30)
        relay.start()
        relay.wake()
        await asyncio.wait_for(relay.stop(), 5)
        assert relay.published == 0
    await nc.close()


async def test_two_relays_on_one_outbox_publish_each_event_once_in_order(nats_server: NatsServer, db_url: str) -> None:
    """Replicas of a service share one outbox: one relay holds the lease, the other stands by."""
    nc = await jetstream.connect([nats_server.url], "test")
    await ensure_order_stream(nc)
    async with Store(db_url) as store, Store(db_url) as replica:
        first = OutboxRelay(store.db, store.outbox, nc, batch_size=10, poll_interval_s=0.05)
        second = OutboxRelay(replica.db, replica.outbox, nc, batch_size=10, poll_interval_s=0.05)
        first.start()
        second.start()
        stopped = []
        try:
            ids = await commit_events(store, first, 30)
            ids += await commit_events(replica, second, 30)
            await wait_for(lambda: first.published + second.published == 60, message="60 relayed")
            assert 0 in (first.published, second.published), "only the lease holder relays"
            leader, standby = (first, second) if first.published else (second, first)
            await leader.stop()  # releases its lease: the standby takes over
            stopped.append(leader)
            more = await commit_events(store, None, 10)
            standby.wake()
            await wait_for(lambda: standby.published == 10, message="standby took over")
        finally:
            for relay in (first, second):
                if relay not in stopped:
                    await relay.stop()
    messages = await stream_messages(nc, "ORDER")
    assert ids_of(messages) == ids + more
    await nc.close()
