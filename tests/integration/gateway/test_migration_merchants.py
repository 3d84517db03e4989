"""The merchants revision on a database the release before it wrote, on SQLite and PostgreSQL: every charge,
refund and request-log row is kept and becomes the legacy merchant's, reads and retries through the
repository and the bank as that merchant, request ids become per merchant, and the downgrade goes back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import DateTime, bindparam, inspect, text
from sqlalchemy.exc import IntegrityError

from gateway_mock.domain import ChargeCommand, ChargeQuery, ChargeStatus, IdempotencyKeyReused, RefundCommand
from gateway_mock.gateway import BankSimulator
from gateway_mock.service import SPEC
from gateway_mock.store import GatewayRepository
from paymesh.chassis import migrations
from paymesh.chassis.db import Database
from paymesh.chassis.schema_steps import LEGACY_MERCHANT_ID
from tests.keys import MERCHANT_A

pytestmark = pytest.mark.timeout(60)

INITIAL = "eea8165148f8"
MERCHANTS = "03f1e3f7355b"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 1, 9, 5, tzinfo=UTC)


def old_fingerprint(amount: int, currency: str, token: str, order_id: str) -> str:
    """What the release before merchants stored as a charge's fingerprint."""
    parts = ["charge", amount, currency, token, order_id]
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


# (charge_id, key, amount, refunded, status, token, last4, order_id)
OLD_CHARGES = [
    ("ch_old1", "key-old-1", 1000, 300, "PARTIALLY_REFUNDED", "tok_visa", "4242", "ord_1"),
    ("ch_old2", "key-old-2", 2500, 0, "DECLINED", "tok_chargeDeclined", "0002", "ord_2"),
    ("ch_old3", "key-old-3", 700, 0, "SUCCEEDED", "tok_visa", "4242", "ord_3"),
]

INSERT_CHARGE = text(
    "INSERT INTO charges (charge_id, idempotency_key, fingerprint, amount_minor, refunded_minor, currency, status, "
    "decline_code, token, card_last4, order_id, description, create_time, update_time) VALUES (:charge_id, :key, "
    ":fingerprint, :amount, :refunded, 'USD', :status, :decline_code, :token, :last4, :order_id, '', :t0, :t1)"
).bindparams(bindparam("t0", type_=DateTime(timezone=True)), bindparam("t1", type_=DateTime(timezone=True)))
INSERT_REFUND = text(
    "INSERT INTO refunds (refund_id, idempotency_key, fingerprint, charge_id, amount_minor, currency, reason, "
    "create_time) VALUES ('re_old1', 'rkey-old-1', 'f', 'ch_old1', 300, 'USD', 'one mug broke', :t1)"
).bindparams(bindparam("t1", type_=DateTime(timezone=True)))
INSERT_REQUEST = text(
    "INSERT INTO idempotent_requests (request_id, method, fingerprint, response) VALUES (:rid, 'Charge', 'f', :resp)"
)
INSERT_REQUEST_FOR = text(
    "INSERT INTO idempotent_requests (merchant_id, request_id, method, fingerprint, response) "
    "VALUES (:m, :rid, 'Charge', 'f', :resp)"
)
REQUEST_ID = "0e6c9d63-8f5b-4b59-9a44-2f4d7a6f0001"


@pytest.fixture
async def old_db(db_url: str) -> AsyncIterator[Database]:
    """A database at the revision before merchants, with rows as that release wrote them."""
    db = Database(db_url, migrations.service_metadata(SPEC))
    assert await migrations.upgrade(db.engine, SPEC, destination=INITIAL) == (INITIAL,)
    async with db.engine.begin() as conn:
        for charge_id, key, amount, refunded, status, token, last4, order_id in OLD_CHARGES:
            await conn.execute(INSERT_CHARGE, {
                "charge_id": charge_id, "key": key, "fingerprint": old_fingerprint(amount, "USD", token, order_id),
                "amount": amount, "refunded": refunded, "status": status,
                "decline_code": "card_declined" if status == "DECLINED" else "", "token": token, "last4": last4,
                "order_id": order_id, "t0": T0, "t1": T1,
            })
        await conn.execute(INSERT_REFUND, {"t1": T1})
        await conn.execute(text("INSERT INTO key_attempts (idempotency_key, attempts) VALUES ('key-flaky', 1)"))
        await conn.execute(text("INSERT INTO config (id, latency_ms, decline_rate, transient_error_rate, "
                                "lost_response_rate, seed) VALUES (1, 0, 0.0, 0.0, 0.0, 42)"))
        await conn.execute(INSERT_REQUEST, {"rid": REQUEST_ID, "resp": b"old answer"})
    try:
        yield db
    finally:
        await db.dispose()


async def column_values(db: Database, table: str, column: str) -> list[Any]:
    async with db.engine.connect() as conn:
        return [r[0] for r in await conn.execute(text(f"SELECT {column} FROM {table}"))]  # noqa: S608


async def test_upgrade_keeps_every_row_as_the_legacy_merchant_s(old_db: Database) -> None:
    assert await migrations.upgrade(old_db.engine, SPEC) == (MERCHANTS,)
    for table in ("charges", "refunds", "idempotent_requests"):
        assert set(await column_values(old_db, table, "merchant_id")) == {LEGACY_MERCHANT_ID}, table
    assert sorted(await column_values(old_db, "charges", "charge_id")) == ["ch_old1", "ch_old2", "ch_old3"]
    assert await column_values(old_db, "key_attempts", "attempts") == [1]
    assert await column_values(old_db, "config", "seed") == [42]

    repository = GatewayRepository(old_db.metadata)
    async with old_db.read() as conn:
        old1 = await repository.charge_by_id(conn, "ch_old1")
        assert old1 is not None
        assert (old1.merchant_id, old1.amount_minor, old1.refunded_minor, old1.status) == (
            LEGACY_MERCHANT_ID, 1000, 300, ChargeStatus.PARTIALLY_REFUNDED)
        assert (old1.create_time, old1.update_time) == (T0, T1)
        by_key = await repository.charge_by_key(conn, "key-old-2")
        assert by_key is not None and (by_key.charge_id, by_key.merchant_id) == ("ch_old2", LEGACY_MERCHANT_ID)
        legacy, next_seq = await repository.list_charges(conn, ChargeQuery(page_size=10,
                                                                           merchant_id=LEGACY_MERCHANT_ID))
        assert ([c.charge_id for c in legacy], next_seq) == (["ch_old3", "ch_old2", "ch_old1"], None)
        assert await repository.list_charges(conn, ChargeQuery(page_size=10, merchant_id=MERCHANT_A)) == ([], None)
        refund = await repository.refund_by_key(conn, "rkey-old-1")
        assert refund is not None and (refund.merchant_id, refund.charge_id, refund.amount_minor) == (
            LEGACY_MERCHANT_ID, "ch_old1", 300)


async def test_the_bank_retries_and_refunds_old_charges_as_the_legacy_merchant_s(old_db: Database) -> None:
    await migrations.upgrade(old_db.engine, SPEC)
    bank = BankSimulator(old_db, GatewayRepository(old_db.metadata))

    def retry(merchant_id: str) -> ChargeCommand:
        return ChargeCommand("key-old-3", 700, "USD", "tok_visa", merchant_id, order_id="ord_3")

    # A retry of an old charge (payment_svc's legacy payments are the legacy merchant's) finds it: the
    # fingerprint stored before merchants still matches.
    assert (await bank.charge(retry(LEGACY_MERCHANT_ID))).charge_id == "ch_old3"
    with pytest.raises(IdempotencyKeyReused):
        await bank.charge(retry(MERCHANT_A))
    refund, charge = await bank.refund(RefundCommand("rkey-new-1", "ch_old3", 200))
    assert (refund.merchant_id, charge.merchant_id, charge.refunded_minor) == (LEGACY_MERCHANT_ID,
                                                                               LEGACY_MERCHANT_ID, 200)
    fresh = await bank.charge(ChargeCommand("key-new-1", 500, "EUR", "tok_visa", MERCHANT_A))
    assert fresh.merchant_id == MERCHANT_A
    assert set(await column_values(old_db, "charges", "merchant_id")) == {LEGACY_MERCHANT_ID, MERCHANT_A}


async def test_request_ids_become_per_merchant(old_db: Database) -> None:
    await migrations.upgrade(old_db.engine, SPEC)
    async with old_db.engine.begin() as conn:  # another merchant may now hold the legacy merchant's id
        await conn.execute(INSERT_REQUEST_FOR, {"m": MERCHANT_A, "rid": REQUEST_ID, "resp": b"new answer"})
    with pytest.raises(IntegrityError):
        async with old_db.engine.begin() as conn:  # and no merchant holds it twice
            await conn.execute(INSERT_REQUEST_FOR, {"m": LEGACY_MERCHANT_ID, "rid": REQUEST_ID, "resp": b"x"})
    async with old_db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT merchant_id, response FROM idempotent_requests"))).all()
    assert sorted(tuple(r) for r in rows) == sorted([(LEGACY_MERCHANT_ID, b"old answer"), (MERCHANT_A, b"new answer")])


async def test_downgrade_drops_the_tag_and_keeps_the_rows(old_db: Database) -> None:
    await migrations.upgrade(old_db.engine, SPEC)
    async with old_db.engine.begin() as conn:
        await conn.execute(INSERT_REQUEST_FOR, {"m": MERCHANT_A, "rid": REQUEST_ID, "resp": b"new answer"})
    # Two merchants hold one request id: the old schema has room for one, so the downgrade refuses.
    with pytest.raises(RuntimeError, match="more than one merchant"):
        await migrations.downgrade(old_db.engine, SPEC, INITIAL)
    assert await migrations.current(old_db.engine, SPEC) == (MERCHANTS,)
    async with old_db.engine.begin() as conn:
        await conn.execute(text("DELETE FROM idempotent_requests WHERE merchant_id = :m"), {"m": MERCHANT_A})

    assert await migrations.downgrade(old_db.engine, SPEC, INITIAL) == (INITIAL,)
    async with old_db.engine.connect() as conn:
        columns = await conn.run_sync(lambda c: {t: {col["name"] for col in inspect(c).get_columns(t)}
                                                 for t in ("charges", "refunds", "idempotent_requests")})
    assert all("merchant_id" not in names for names in columns.values())
    assert sorted(await column_values(old_db, "charges", "charge_id")) == ["ch_old1", "ch_old2", "ch_old3"]
    assert await column_values(old_db, "refunds", "refund_id") == ["re_old1"]
    assert await column_values(old_db, "idempotent_requests", "request_id") == [REQUEST_ID]
    # And up again: the same rows, the legacy merchant's once more.
    assert await migrations.upgrade(old_db.engine, SPEC) == (MERCHANTS,)
    assert set(await column_values(old_db, "charges", "merchant_id")) == {LEGACY_MERCHANT_ID}
