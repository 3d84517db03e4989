"""webhook_svc's repository on SQLite and PostgreSQL: leases shared by replicas (no delivery claimed twice at
once, a dead holder's lease taken over), the per-endpoint limit, per-order sequences, the event feed's filters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from paymesh.chassis import migrations
from paymesh.chassis.db import Database
from webhook_svc.domain import Attempt, Delivery, Endpoint, MerchantEvent, new_endpoint_id, new_event_id
from webhook_svc.service import SPEC
from webhook_svc.store import WebhookRepository, tables

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, migrations.service_metadata(SPEC))
    await migrations.upgrade(database.engine, SPEC)
    yield database
    await database.dispose()


@pytest.fixture
def repo(db: Database) -> WebhookRepository:
    return WebhookRepository(tables(db.metadata))


async def endpoint(db: Database, repo: WebhookRepository, merchant: str = "mer_a") -> Endpoint:
    e = Endpoint(new_endpoint_id(), merchant, "https://example.com/h", ("*",), "", "whsec_x", T0, T0)
    async with db.unit_of_work() as uow:
        await repo.add_endpoint(uow.conn, e)
        await uow.commit()
    return e


async def pending(db: Database, repo: WebhookRepository, endpoints: list[Endpoint], count: int) -> list[Delivery]:
    """`count` events of one order each, with a delivery to each endpoint, due at T0."""
    events, deliveries = [], []
    for i in range(count):
        event = MerchantEvent(new_event_id(), endpoints[0].merchant_id, "order.confirmed", f"ord_{i:032x}", 1,
                              T0, "{}", f"src-{i}")
        events.append(event)
        deliveries += [Delivery.new(event.event_id, e.endpoint_id, e.merchant_id, T0) for e in endpoints]
    async with db.unit_of_work() as uow:
        await repo.add_events(uow.conn, events, deliveries)
        await uow.commit()
    return deliveries


async def claim(db: Database, repo: WebhookRepository, owner: str, now: datetime, *, limit: int = 100,
                per_endpoint: int = 100, busy: tuple[str, ...] = ()) -> list[str]:
    async with db.unit_of_work() as uow:
        claimed = await repo.claim(uow.conn, now=now, owner=owner, lease_until=now + LEASE, limit=limit,
                                   per_endpoint=per_endpoint, busy=busy)
        await uow.commit()
    return [c.delivery.delivery_id for c in claimed]


async def test_two_replicas_claiming_at_once_never_share_a_delivery(db: Database, repo: WebhookRepository) -> None:
    ends = [await endpoint(db, repo) for _ in range(3)]
    made = await pending(db, repo, ends, 40)
    now = T0 + timedelta(seconds=1)
    # Each replica claims in small bites, concurrently, until nothing is left.
    taken: dict[str, list[str]] = {"a": [], "b": []}

    async def replica(owner: str) -> None:
        while got := await claim(db, repo, owner, now, limit=7):
            taken[owner] += got

    await asyncio.gather(replica("a"), replica("b"))
    everything = taken["a"] + taken["b"]
    assert len(everything) == len(set(everything)) == len(made)
    assert taken["a"] and taken["b"], "both replicas got a share"
    # Leased: nothing more to claim until the leases end; then a live replica takes over a dead one's.
    assert await claim(db, repo, "c", now + LEASE - timedelta(seconds=1)) == []
    assert sorted(await claim(db, repo, "c", now + LEASE + timedelta(seconds=1), limit=1000)) == sorted(everything)


async def test_a_recorded_attempt_ends_the_lease_and_schedules_the_next(db: Database, repo: WebhookRepository) -> None:
    [d] = await pending(db, repo, [await endpoint(db, repo)], 1)
    now = T0 + timedelta(seconds=1)
    assert await claim(db, repo, "a", now) == [d.delivery_id]
    async with db.unit_of_work() as uow:
        delivery, found = await repo.lock_delivery(uow.conn, d.delivery_id)
        assert found is not None
        attempt = Attempt(1, now, 500, "", 3)
        delivery.answered(attempt, (0, 10), draw=0.5)
        await repo.record(uow.conn, delivery, attempt)
        await uow.commit()
    assert await claim(db, repo, "b", now + timedelta(seconds=9)) == []  # not due yet
    assert await claim(db, repo, "b", now + timedelta(seconds=11)) == [d.delivery_id]
    async with db.read() as conn:
        [(listed, attempts)] = await repo.deliveries_page(conn, "mer_a", event_id="", endpoint_id="", after=None,
                                                          limit=10)
    assert (listed.attempts, [a.http_status for a in attempts]) == (1, [500])


async def test_the_claim_honours_the_per_endpoint_limit_and_skips_busy_endpoints(
    db: Database, repo: WebhookRepository
) -> None:
    slow, fast = await endpoint(db, repo), await endpoint(db, repo)
    await pending(db, repo, [slow, fast], 10)
    now = T0 + timedelta(seconds=1)
    async with db.unit_of_work() as uow:
        first = await repo.claim(uow.conn, now=now, owner="a", lease_until=now + LEASE, limit=100, per_endpoint=3)
        await uow.commit()
    per = {e.endpoint_id: sum(c.delivery.endpoint_id == e.endpoint_id for c in first) for e in (slow, fast)}
    assert per == {slow.endpoint_id: 3, fast.endpoint_id: 3}
    assert all(c.body == "{}" and c.endpoint.url == "https://example.com/h" for c in first)
    again = await claim(db, repo, "a", now, per_endpoint=3, busy=(slow.endpoint_id,))
    async with db.read() as conn:
        pages = await repo.deliveries_page(conn, "mer_a", event_id="", endpoint_id=fast.endpoint_id, after=None,
                                           limit=100)
    fast_ids = {d.delivery_id for d, _ in pages}
    assert len(again) == 3 and set(again) <= fast_ids


async def test_sequences_rise_per_order_across_batches_and_replicas(db: Database, repo: WebhookRepository) -> None:
    one, two = ("mer_a", "ord_1"), ("mer_a", "ord_2")
    async with db.unit_of_work() as uow:
        assert await repo.next_sequences(uow.conn, [one, two, one]) == [1, 1, 2]
        await uow.commit()

    async def batch() -> list[int]:
        async with db.unit_of_work() as uow:
            got = await repo.next_sequences(uow.conn, [one])
            await uow.commit()
        return got

    results = await asyncio.gather(*(batch() for _ in range(6)))
    assert sorted(n for r in results for n in r) == [3, 4, 5, 6, 7, 8]
    async with db.unit_of_work() as uow:
        assert await repo.next_sequences(uow.conn, [("mer_b", "ord_1")]) == [1], "per merchant"
        await uow.commit()


async def test_the_event_feed_filters_by_delivery_success(db: Database, repo: WebhookRepository) -> None:
    e = await endpoint(db, repo)
    delivered, failing = await pending(db, repo, [e], 2)
    async with db.unit_of_work() as uow:
        d, _ = await repo.lock_delivery(uow.conn, delivered.delivery_id)
        attempt = Attempt(1, T0, 200, "", 2)
        d.answered(attempt, (0,), 0.5)
        await repo.record(uow.conn, d, attempt)
        await uow.commit()
    async with db.read() as conn:

        async def ids(success: bool | None) -> set[str]:
            page = await repo.events_page(conn, "mer_a", type="", order_id="", delivery_success=success, after=None,
                                          limit=10)
            return {event.event_id for event, _ in page}

        assert await ids(True) == {delivered.event_id}
        assert await ids(False) == {failing.event_id}
        assert await ids(None) == {delivered.event_id, failing.event_id}
        assert await repo.events_page(conn, "mer_b", type="", order_id="", delivery_success=None, after=None,
                                      limit=10) == []


async def test_prune_removes_old_settled_events_with_their_deliveries_and_keeps_pending_ones(
    db: Database, repo: WebhookRepository
) -> None:
    e = await endpoint(db, repo)
    settled, waiting = await pending(db, repo, [e], 2)
    async with db.unit_of_work() as uow:
        d, _ = await repo.lock_delivery(uow.conn, settled.delivery_id)
        attempt = Attempt(1, T0, 200, "", 2)
        d.answered(attempt, (0,), 0.5)
        await repo.record(uow.conn, d, attempt)
        await uow.commit()
    async with db.unit_of_work() as uow:
        assert await repo.prune(uow.conn, T0, 10) == 0, "nothing is older than T0"
        assert await repo.prune(uow.conn, T0 + timedelta(days=1), 10) == 1
        await uow.commit()
    async with db.read() as conn:
        left = await repo.events_page(conn, "mer_a", type="", order_id="", delivery_success=None, after=None,
                                      limit=10)
        assert [event.event_id for event, _ in left] == [waiting.event_id]
        assert await repo.attempts_of(conn, [settled.delivery_id]) == {}
        rows = await repo.deliveries_page(conn, "mer_a", event_id="", endpoint_id="", after=None, limit=10)
        assert [dv.delivery_id for dv, _ in rows] == [waiting.delivery_id]


async def test_next_due_waits_out_leases_and_leaves_busy_endpoints_to_their_wake_up(
    db: Database, repo: WebhookRepository
) -> None:
    slow, other = await endpoint(db, repo), await endpoint(db, repo)
    async with db.read() as conn:
        assert await repo.next_due(conn, T0) is None
    await pending(db, repo, [slow], 1)
    now = T0 + timedelta(seconds=1)
    async with db.read() as conn:
        assert await repo.next_due(conn, now) == T0
    assert len(await claim(db, repo, "a", now)) == 1
    async with db.read() as conn:
        # Held by a's lease: not before it ends (a sender that looked again at once would spin).
        assert await repo.next_due(conn, now) == now + LEASE
        assert await repo.next_due(conn, now, busy=[slow.endpoint_id]) is None
    await pending(db, repo, [other], 1)
    async with db.read() as conn:
        assert await repo.next_due(conn, now, busy=[slow.endpoint_id]) == T0
