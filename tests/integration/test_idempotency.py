"""AIP-155 request ids on real SQLite and PostgreSQL: replay, reuse refused, concurrent duplicates act once."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, text

from paymesh.chassis.db import Database, UnitOfWork
from paymesh.chassis.errors import Aborted, AlreadyExists
from paymesh.chassis.idempotency import RequestLog, requests_table
from paymesh.inventory.v1 import inventory_service_pb2 as pb
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(60)

M = "mer_idempotency_tests"  # the merchant whose request ids these are


@pytest.fixture
async def log_and_db(db_url: str):  # type: ignore[no-untyped-def]
    metadata = MetaData()
    effects = Table("effects", metadata, Column("id", Integer, primary_key=True), Column("sku", String(64)))
    table = requests_table(metadata)
    db = Database(db_url, metadata)
    await db.create_schema()
    yield RequestLog(db, table), db, effects
    await db.dispose()


async def count(db: Database, effects: Table) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(effects))).scalar_one())


def adjust(request_id: str, delta: int = 5) -> pb.AdjustStockRequest:
    return pb.AdjustStockRequest(request_id=request_id, sku="sku-1", delta=delta)


async def test_request_ids_are_per_merchant(log_and_db) -> None:  # type: ignore[no-untyped-def]
    """The same id from two merchants is two requests (Stripe's idempotency keys are per account): each
    acts once, and one merchant's different request under the id is no reuse of the other's."""
    log, db, effects = log_and_db
    rid = str(uuid.uuid4())

    async def action(uow: UnitOfWork) -> pb.AdjustStockResponse:
        await uow.conn.execute(effects.insert().values(sku="sku-1"))
        return pb.AdjustStockResponse(product={"sku": "sku-1", "available": 5})

    await log.run("mer_a", "AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, action)
    await log.run("mer_b", "AdjustStock", rid, adjust(rid, delta=9), pb.AdjustStockResponse, action)
    await log.run("mer_a", "AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, action)  # a replay
    assert await count(db, effects) == 2
    with pytest.raises(AlreadyExists):
        await log.run("mer_b", "AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, action)


async def test_same_request_replays_the_first_answer_and_acts_once(log_and_db) -> None:  # type: ignore[no-untyped-def]
    log, db, effects = log_and_db
    calls = 0

    async def action(uow: UnitOfWork) -> pb.AdjustStockResponse:
        nonlocal calls
        calls += 1
        await uow.conn.execute(effects.insert().values(sku="sku-1"))
        return pb.AdjustStockResponse(product={"sku": "sku-1", "available": 10 + calls})

    rid = str(uuid.uuid4())
    first = await log.run(M, "AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, action)
    again = await log.run(M, "AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, action)
    assert first == again and first.product.available == 11
    assert calls == 1 and await count(db, effects) == 1

    with pytest.raises(AlreadyExists) as err:
        await log.run(M, "AdjustStock", rid, adjust(rid, delta=6), pb.AdjustStockResponse, action)
    assert err.value.reason == "REQUEST_ID_REUSED"
    with pytest.raises(AlreadyExists):
        await log.run(M, "PutProduct", rid, adjust(rid), pb.AdjustStockResponse, action)
    assert await count(db, effects) == 1


async def test_a_failed_action_leaves_the_request_id_free(log_and_db) -> None:  # type: ignore[no-untyped-def]
    log, db, effects = log_and_db

    async def failing(uow: UnitOfWork) -> pb.AdjustStockResponse:
        await uow.conn.execute(effects.insert().values(sku="sku-1"))
        raise RuntimeError("refused")

    async def working(uow: UnitOfWork) -> pb.AdjustStockResponse:
        await uow.conn.execute(effects.insert().values(sku="sku-1"))
        return pb.AdjustStockResponse()

    rid = str(uuid.uuid4())
    with pytest.raises(RuntimeError):
        await log.run(M, "AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, failing)
    assert await count(db, effects) == 0
    await log.run(M, "AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, working)
    assert await count(db, effects) == 1


async def blocked_writers(db: Database) -> int:
    """How many transactions wait behind the open one: queued on this process' SQLite writer lock, or
    on PostgreSQL blocked on a row lock (a duplicate's insert waiting on the first one's primary key)."""
    if db.is_sqlite:
        return len(db._write_lock._waiters or ())  # type: ignore[union-attr]  # asyncio.Lock's queue
    async with db.read() as conn:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int((await conn.execute(query)).scalar_one())


async def test_concurrent_duplicates_wait_for_the_first_and_replay_its_answer(log_and_db) -> None:  # type: ignore[no-untyped-def]
    """Duplicates arriving while the first still runs queue behind its transaction (SQLite's writer lock,
    PostgreSQL's primary key) and then replay its answer: the action runs once, no duplicate is refused."""
    log, db, effects = log_and_db
    started, release = asyncio.Event(), asyncio.Event()
    runs = 0

    async def slow(uow: UnitOfWork) -> pb.AdjustStockResponse:
        nonlocal runs
        runs += 1
        await uow.conn.execute(effects.insert().values(sku="sku-1"))
        started.set()
        await release.wait()  # hold the transaction open until every duplicate waits behind it
        return pb.AdjustStockResponse(product={"sku": "sku-1", "available": 7})

    rid = str(uuid.uuid4())
    first = asyncio.create_task(log.run(M, "AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, slow))
    await started.wait()
    dupes = [
        asyncio.create_task(log.run(M, "AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, slow)) for _ in range(5)
    ]
    await wait_for(lambda: _all_blocked(db, 5), timeout=10, message="five duplicates waiting behind the first")
    release.set()
    answer = await first
    assert await asyncio.gather(*dupes) == [answer] * 5  # each waited, then got the first answer
    assert runs == 1
    assert await count(db, effects) == 1


async def _all_blocked(db: Database, n: int) -> bool:
    return await blocked_writers(db) == n


async def test_a_duplicate_of_a_claimed_but_unanswered_request_is_told_it_is_in_progress(log_and_db) -> None:  # type: ignore[no-untyped-def]
    """A request id committed without its answer yet (a command whose work spans transactions, as a
    refund's gateway call does) answers ABORTED REQUEST_IN_PROGRESS, and the action does not run."""
    log, db, effects = log_and_db
    rid = str(uuid.uuid4())
    async with db.unit_of_work() as uow:
        assert await log.claim(uow, M, "AdjustStock", rid, adjust(rid)) is None
        await uow.commit()

    async def act(uow: UnitOfWork) -> pb.AdjustStockResponse:
        raise AssertionError("a duplicate in progress must not act")

    with pytest.raises(Aborted) as refused:
        await log.run(M, "AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, act)
    assert refused.value.reason == "REQUEST_IN_PROGRESS"
    assert await count(db, effects) == 0


async def test_two_phase_claim_reports_in_progress(log_and_db) -> None:  # type: ignore[no-untyped-def]
    log, db, _ = log_and_db
    rid = str(uuid.uuid4())
    async with db.unit_of_work() as uow:
        assert await log.claim(uow, M, "Refund", rid, adjust(rid)) is None
        await uow.commit()
    async with db.unit_of_work() as uow:
        with pytest.raises(Aborted):
            await log.claim(uow, M, "Refund", rid, adjust(rid))
    async with db.unit_of_work() as uow:
        await log.complete(uow, M, rid, pb.AdjustStockResponse(product={"sku": "done"}))
        await uow.commit()
    async with db.unit_of_work() as uow:
        stored = await log.claim(uow, M, "Refund", rid, adjust(rid))
    assert stored is not None and pb.AdjustStockResponse.FromString(stored).product.sku == "done"


async def test_concurrent_two_phase_claims_take_the_id_once(log_and_db) -> None:  # type: ignore[no-untyped-def]
    """Each claimer has its own transaction open at once (as concurrent RefundPayment calls do)."""
    log, db, _ = log_and_db
    rid = str(uuid.uuid4())
    first_claimed = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with db.unit_of_work() as uow:
            assert await log.claim(uow, M, "Refund", rid, adjust(rid)) is None
            first_claimed.set()
            await release.wait()  # hold the claim uncommitted while the duplicate arrives
            await uow.commit()

    async def duplicate() -> BaseException | bytes | None:
        await first_claimed.wait()
        try:
            async with db.unit_of_work() as uow:
                return await log.claim(uow, M, "Refund", rid, adjust(rid))
        except Aborted as exc:
            return exc

    holder = asyncio.create_task(first())
    dup = asyncio.create_task(duplicate())
    await first_claimed.wait()
    release.set()
    await holder
    answer = await dup
    assert isinstance(answer, Aborted) and answer.reason == "REQUEST_IN_PROGRESS", answer


async def test_replay_reads_a_stored_answer_and_writes_nothing(log_and_db) -> None:  # type: ignore[no-untyped-def]
    log, db, effects = log_and_db

    async def act(uow: UnitOfWork) -> pb.AdjustStockResponse:
        await uow.conn.execute(effects.insert().values(sku="sku-1"))
        return pb.AdjustStockResponse(product={"sku": "sku-1", "available": 3})

    rid, unseen = str(uuid.uuid4()), str(uuid.uuid4())
    answer = await log.run(M, "AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, act)
    async with db.read() as conn:
        assert await log.replay(conn, M, "AdjustStock", rid, adjust(rid)) == answer.SerializeToString()
        assert await log.replay(conn, M, "AdjustStock", unseen, adjust(unseen)) is None
        with pytest.raises(AlreadyExists):
            await log.replay(conn, M, "AdjustStock", rid, adjust(rid, delta=9))
    # The unseen id was only read: it is still free and acts once.
    await log.run(M, "AdjustStock", unseen, adjust(unseen), pb.AdjustStockResponse, act)
    assert await count(db, effects) == 2
