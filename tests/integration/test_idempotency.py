"""AIP-155 request ids on real SQLite and PostgreSQL: replay, reuse refused, concurrent duplicates act once."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select

from paymesh.chassis.db import Database, UnitOfWork
from paymesh.chassis.errors import Aborted, AlreadyExists
from paymesh.chassis.idempotency import RequestLog, requests_table
from paymesh.inventory.v1 import inventory_service_pb2 as pb

pytestmark = pytest.mark.timeout(60)


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


async def test_same_request_replays_the_first_answer_and_acts_once(log_and_db) -> None:  # type: ignore[no-untyped-def]
    log, db, effects = log_and_db
    calls = 0

    async def action(uow: UnitOfWork) -> pb.AdjustStockResponse:
        nonlocal calls
        calls += 1
        await uow.conn.execute(effects.insert().values(sku="sku-1"))
        return pb.AdjustStockResponse(product={"sku": "sku-1", "available": 10 + calls})

    rid = str(uuid.uuid4())
    first = await log.run("AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, action)
    again = await log.run("AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, action)
    assert first == again and first.product.available == 11
    assert calls == 1 and await count(db, effects) == 1

    with pytest.raises(AlreadyExists) as err:
        await log.run("AdjustStock", rid, adjust(rid, delta=6), pb.AdjustStockResponse, action)
    assert err.value.reason == "REQUEST_ID_REUSED"
    with pytest.raises(AlreadyExists):
        await log.run("PutProduct", rid, adjust(rid), pb.AdjustStockResponse, action)
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
        await log.run("AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, failing)
    assert await count(db, effects) == 0
    await log.run("AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, working)
    assert await count(db, effects) == 1


async def test_concurrent_duplicates_act_once(log_and_db) -> None:  # type: ignore[no-untyped-def]
    log, db, effects = log_and_db
    started = asyncio.Event()

    async def slow(uow: UnitOfWork) -> pb.AdjustStockResponse:
        await uow.conn.execute(effects.insert().values(sku="sku-1"))
        started.set()
        await asyncio.sleep(0.2)  # hold the transaction open while the duplicates arrive
        return pb.AdjustStockResponse(product={"sku": "sku-1", "available": 7})

    rid = str(uuid.uuid4())
    first = asyncio.create_task(log.run("AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, slow))
    await started.wait()
    dupes = await asyncio.gather(
        *[log.run("AdjustStock", rid, adjust(rid), pb.AdjustStockResponse, slow) for _ in range(5)],
        return_exceptions=True,
    )
    answer = await first
    for d in dupes:
        # Each duplicate either waited and got the first answer, or was told the first is in progress.
        assert d == answer or (isinstance(d, Aborted) and d.reason == "REQUEST_IN_PROGRESS"), d
    assert await count(db, effects) == 1


async def test_two_phase_claim_reports_in_progress(log_and_db) -> None:  # type: ignore[no-untyped-def]
    log, db, _ = log_and_db
    rid = str(uuid.uuid4())
    async with db.unit_of_work() as uow:
        assert await log.claim(uow, "Refund", rid, adjust(rid)) is None
        await uow.commit()
    async with db.unit_of_work() as uow:
        with pytest.raises(Aborted):
            await log.claim(uow, "Refund", rid, adjust(rid))
    async with db.unit_of_work() as uow:
        await log.complete(uow, rid, pb.AdjustStockResponse(product={"sku": "done"}))
        await uow.commit()
    async with db.unit_of_work() as uow:
        stored = await log.claim(uow, "Refund", rid, adjust(rid))
    assert stored is not None and pb.AdjustStockResponse.FromString(stored).product.sku == "done"


async def test_concurrent_two_phase_claims_take_the_id_once(log_and_db) -> None:  # type: ignore[no-untyped-def]
    """Each claimer has its own transaction open at once (as concurrent RefundPayment calls do)."""
    log, db, _ = log_and_db
    rid = str(uuid.uuid4())
    first_claimed = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with db.unit_of_work() as uow:
            assert await log.claim(uow, "Refund", rid, adjust(rid)) is None
            first_claimed.set()
            await release.wait()  # hold the claim uncommitted while the duplicate arrives
            await uow.commit()

    async def duplicate() -> BaseException | bytes | None:
        await first_claimed.wait()
        try:
            async with db.unit_of_work() as uow:
                return await log.claim(uow, "Refund", rid, adjust(rid))
        except Aborted as exc:
            return exc

    holder = asyncio.create_task(first())
    dup = asyncio.create_task(duplicate())
    await first_claimed.wait()
    release.set()
    await holder
    answer = await dup
    assert isinstance(answer, Aborted) and answer.reason == "REQUEST_IN_PROGRESS", answer
