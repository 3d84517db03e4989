"""Revision "merchants" on a database the previous release wrote, with rows: every row becomes the legacy
merchant's, readable through the repository as that merchant only, and order ids and request ids are per
merchant afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from payment_svc.domain import Payment, Status
from payment_svc.service import SPEC
from payment_svc.store import PaymentRepository
from paymesh.chassis import migrations
from paymesh.chassis.db import Database
from paymesh.chassis.idempotency import RequestLog, fingerprint
from paymesh.chassis.schema_steps import LEGACY_MERCHANT_ID
from paymesh.payment.v1 import payment_service_pb2 as pb
from tests.keys import MERCHANT_B

pytestmark = pytest.mark.timeout(60)

INITIAL = "e622bbc180b7"
MERCHANTS = "cda7f924a068"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
REQUEST_ID = "0b9a3c4e-5f60-4d1e-8a2b-3c4d5e6f7a8b"
REFUND_REQUEST = pb.RefundPaymentRequest(request_id=REQUEST_ID, payment_id="pay_old2", amount_minor=300,
                                         reason="goodwill")
REFUND_ANSWER = pb.RefundPaymentResponse(refund_id="re_gw_1", amount_minor=300)


def payment_row(payment_id: str, order_id: str, status: str, refunded: int, refund_seq: int, at: datetime) -> Any:
    return {
        "payment_id": payment_id, "order_id": order_id, "amount_minor": 1000, "refunded_minor": refunded,
        "currency": "EUR", "status": status, "payment_method_token": "tok_visa", "idempotency_key": payment_id,
        "charge_id": f"ch_{payment_id}", "failure_code": "", "deadline": at + timedelta(seconds=30),
        "cancel_requested": False, "charge_outcome_unknown": False, "charge_calls_open": 0,
        "refund_seq": refund_seq, "create_time": at, "update_time": at,
    }


# What the previous release wrote: two payments (one mid-refund), their trails, a refund, a request id.
OLD_ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    ("payments", [
        payment_row("pay_old1", "ord_old1", "SUCCEEDED", 0, 0, T0),
        payment_row("pay_old2", "ord_old2", "REFUNDING", 0, 1, T0 + timedelta(seconds=1)),
    ]),
    ("payment_events", [
        {"payment_id": pid, "order_id": oid, "type": kind, "from_status": frm, "to_status": to,
         "amount_minor": 1000, "detail": kind, "create_time": T0}
        for pid, oid in (("pay_old1", "ord_old1"), ("pay_old2", "ord_old2"))
        for kind, frm, to in (("created", None, "PENDING"), ("charge_requested", "PENDING", "PROCESSING"),
                              ("charge_succeeded", "PROCESSING", "SUCCEEDED"))
    ]),
    ("refunds", [
        {"refund_id": "re_pay_old2_1", "payment_id": "pay_old2", "request_id": REQUEST_ID,
         "idempotency_key": REQUEST_ID, "amount_minor": 300, "reason": "goodwill", "status": "PENDING",
         "gateway_refund_id": "", "failure_code": "", "outcome_unknown": False, "create_time": T0,
         "update_time": T0},
    ]),
    ("idempotent_requests", [
        {"request_id": REQUEST_ID, "method": "RefundPayment",
         "fingerprint": fingerprint("RefundPayment", REFUND_REQUEST), "response": REFUND_ANSWER.SerializeToString(),
         "created_at": T0},
    ]),
]


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, migrations.service_metadata(SPEC))
    try:
        yield database
    finally:
        await database.engine.dispose()


async def write_old_release(db: Database) -> None:
    assert await migrations.upgrade(db.engine, SPEC, destination=INITIAL) == (INITIAL,)
    async with db.engine.begin() as conn:
        for table, rows in OLD_ROWS:
            columns = list(rows[0])
            statement = text(f"INSERT INTO {table} ({', '.join(columns)}) "
                             f"VALUES ({', '.join(':' + c for c in columns)})")
            await conn.execute(statement, rows)


async def test_rows_of_the_previous_release_become_the_legacy_merchants(db: Database) -> None:
    await write_old_release(db)
    assert await migrations.upgrade(db.engine, SPEC) == (MERCHANTS,)

    async with db.engine.connect() as conn:
        for table, rows in OLD_ROWS:
            merchants = (await conn.execute(text(f"SELECT merchant_id FROM {table}"))).scalars().all()
            assert merchants == [LEGACY_MERCHANT_ID] * len(rows), table

    payments = PaymentRepository(db.metadata)
    async with db.engine.connect() as conn:
        old1 = await payments.get(conn, LEGACY_MERCHANT_ID, "pay_old1")
        assert old1 is not None
        assert (old1.merchant_id, old1.order_id, old1.status, old1.amount_minor, old1.currency) == (
            LEGACY_MERCHANT_ID, "ord_old1", Status.SUCCEEDED, 1000, "EUR")
        page = await payments.page(conn, LEGACY_MERCHANT_ID, order_id="", status=None, after=None, limit=10)
        assert [p.payment_id for p in page] == ["pay_old2", "pay_old1"]
        found = await payments.by_orders(conn, [(LEGACY_MERCHANT_ID, "ord_old2")], lock=False)
        assert [p.payment_id for p in found.values()] == ["pay_old2"]
        trail = await payments.trail(conn, LEGACY_MERCHANT_ID, "pay_old1", 0, 10)
        assert [(e.position, e.type, e.merchant_id) for e in trail] == [
            (1, "created", LEGACY_MERCHANT_ID), (2, "charge_requested", LEGACY_MERCHANT_ID),
            (3, "charge_succeeded", LEGACY_MERCHANT_ID)]
        refund = await payments.pending_refund(conn, LEGACY_MERCHANT_ID, "pay_old2")
        assert refund is not None
        assert (refund.request.merchant_id, refund.request.idempotency_key, refund.request.request_id) == (
            LEGACY_MERCHANT_ID, REQUEST_ID, REQUEST_ID), "a refund in flight keeps the key it was asked with"
        # The background scan finds the legacy merchant's refund to resume.
        assert await payments.refunding(conn) == [(LEGACY_MERCHANT_ID, "pay_old2")]

        # Another merchant sees none of it.
        assert await payments.get(conn, MERCHANT_B, "pay_old1") is None
        assert await payments.page(conn, MERCHANT_B, order_id="", status=None, after=None, limit=10) == []
        assert await payments.by_orders(conn, [(MERCHANT_B, "ord_old1")], lock=False) == {}
        assert await payments.trail(conn, MERCHANT_B, "pay_old1", 0, 10) == []
        assert await payments.pending_refund(conn, MERCHANT_B, "pay_old2") is None

    # The request log answers the legacy merchant's stored request, and only to it.
    requests = RequestLog(db, db.metadata.tables["idempotent_requests"])
    async with db.engine.connect() as conn:
        stored = await requests.replay(conn, LEGACY_MERCHANT_ID, "RefundPayment", REQUEST_ID, REFUND_REQUEST)
        assert stored is not None and pb.RefundPaymentResponse.FromString(stored) == REFUND_ANSWER
        assert await requests.replay(conn, MERCHANT_B, "RefundPayment", REQUEST_ID, REFUND_REQUEST) is None


async def test_order_ids_and_request_ids_are_per_merchant_after_the_upgrade(db: Database) -> None:
    await write_old_release(db)
    await migrations.upgrade(db.engine, SPEC)
    payments = PaymentRepository(db.metadata)
    now = datetime.now(UTC)

    # B's payment for an order id the legacy merchant already has: a row of its own.
    theirs = Payment.place(MERCHANT_B, "pay_new1", "ord_old1", 500, "USD", "tok_visa", now, now)
    async with db.unit_of_work() as uow:
        await payments.save(uow.conn, [theirs], now)
        await uow.commit()
    async with db.engine.connect() as conn:
        found = await payments.by_orders(conn, [(LEGACY_MERCHANT_ID, "ord_old1"), (MERCHANT_B, "ord_old1")],
                                         lock=False)
    assert {k: p.payment_id for k, p in found.items()} == {
        (LEGACY_MERCHANT_ID, "ord_old1"): "pay_old1", (MERCHANT_B, "ord_old1"): "pay_new1"}
    # Within one merchant an order id still has one payment.
    again = Payment.place(MERCHANT_B, "pay_new2", "ord_old1", 500, "USD", "tok_visa", now, now)
    with pytest.raises(IntegrityError):
        async with db.unit_of_work() as uow:
            await payments.save(uow.conn, [again], now)
            await uow.commit()

    # B may use the legacy merchant's request id: a new claim of its own, not the stored answer.
    requests = RequestLog(db, db.metadata.tables["idempotent_requests"])
    async with db.unit_of_work() as uow:
        assert await requests.claim(uow, MERCHANT_B, "RefundPayment", REQUEST_ID, REFUND_REQUEST) is None
        await uow.commit()
    async with db.unit_of_work() as uow:
        stored = await requests.claim(uow, LEGACY_MERCHANT_ID, "RefundPayment", REQUEST_ID, REFUND_REQUEST)
        assert stored is not None and pb.RefundPaymentResponse.FromString(stored) == REFUND_ANSWER


async def test_downgrade_returns_the_rows_to_the_previous_schema(db: Database) -> None:
    await write_old_release(db)
    await migrations.upgrade(db.engine, SPEC)
    assert await migrations.downgrade(db.engine, SPEC, INITIAL) == (INITIAL,)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT payment_id, order_id FROM payments ORDER BY payment_id"))).all()
        assert [tuple(r) for r in rows] == [("pay_old1", "ord_old1"), ("pay_old2", "ord_old2")]
        columns = (await conn.execute(text("SELECT * FROM idempotent_requests"))).keys()
        assert "merchant_id" not in columns
