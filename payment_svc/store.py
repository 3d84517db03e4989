"""payment_svc's tables and repository: payments, their audit trail, and refunds, each row a merchant's.
Set-based writes; every statement names the merchant, so another merchant's row is as good as missing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from payment_svc.domain import AuditEntry, Payment, Refund, RefundRequest, Status
from paymesh.chassis.db import as_utc, pairs_in, pairs_params
from paymesh.chassis.schema_steps import MERCHANT_ID_LENGTH

# (merchant_id, order_id): how the saga's events name a payment.
OrderKey = tuple[str, str]


def metadata() -> MetaData:
    """A fresh MetaData with payment_svc's tables; nothing is created or connected at import."""
    md = MetaData()
    Tables(md)
    return md


class Tables:
    def __init__(self, md: MetaData) -> None:
        if "payments" in md.tables:
            self.payments, self.steps, self.refunds = (
                md.tables["payments"],
                md.tables["payment_events"],
                md.tables["refunds"],
            )
            return
        self.payments = Table(
            "payments",
            md,
            Column("payment_id", String(64), primary_key=True),
            Column("order_id", String(64), nullable=False),
            Column("amount_minor", BigInteger, nullable=False),
            Column("refunded_minor", BigInteger, nullable=False, default=0),
            Column("currency", String(3), nullable=False),
            Column("status", String(32), nullable=False),
            Column("payment_method_token", String(255), nullable=False),
            Column("idempotency_key", String(128), nullable=False),
            Column("charge_id", String(128), nullable=False, default=""),
            Column("failure_code", String(64), nullable=False, default=""),
            Column("deadline", DateTime(timezone=True), nullable=False),
            Column("cancel_requested", Boolean, nullable=False, default=False),
            Column("charge_outcome_unknown", Boolean, nullable=False, default=False),
            Column("charge_calls_open", Integer, nullable=False, default=0),
            Column("refund_seq", Integer, nullable=False, default=0),
            Column("create_time", DateTime(timezone=True), nullable=False),
            Column("update_time", DateTime(timezone=True), nullable=False),
            # Last, where revision "merchants" added it to the rows already there.
            _merchant(),
            # An order id is the merchant's (order_svc's id of its order): another merchant's event
            # naming it makes that merchant's own row, never touches this one.
            UniqueConstraint("merchant_id", "order_id", name="uq_payments_merchant_order"),
        )
        p = self.payments
        Index("ix_payments_merchant_created", p.c.merchant_id, p.c.create_time, p.c.payment_id)
        # The refund scan, across merchants.
        Index("ix_payments_status", p.c.status)
        self.steps = Table(
            "payment_events",
            md,
            Column("sequence", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
            Column("payment_id", String(64), nullable=False),
            Column("order_id", String(64), nullable=False),
            Column("type", String(64), nullable=False),
            Column("from_status", String(32), nullable=True),
            Column("to_status", String(32), nullable=False),
            Column("amount_minor", BigInteger, nullable=False),
            Column("detail", Text, nullable=False),
            Column("create_time", DateTime(timezone=True), nullable=False),
            _merchant(),
        )
        Index("ix_payment_events_merchant_payment", self.steps.c.merchant_id, self.steps.c.payment_id)
        self.refunds = Table(
            "refunds",
            md,
            Column("refund_id", String(96), primary_key=True),
            Column("payment_id", String(64), nullable=False),
            Column("request_id", String(64), nullable=False, default=""),
            # The gateway's key: one namespace for the whole platform, so unique across merchants.
            Column("idempotency_key", String(128), nullable=False, unique=True),
            Column("amount_minor", BigInteger, nullable=False),
            Column("reason", Text, nullable=False),
            Column("status", String(16), nullable=False),  # PENDING, SUCCEEDED, FAILED
            Column("gateway_refund_id", String(128), nullable=False, default=""),
            Column("failure_code", String(64), nullable=False, default=""),
            Column("outcome_unknown", Boolean, nullable=False, default=False),
            Column("create_time", DateTime(timezone=True), nullable=False),
            Column("update_time", DateTime(timezone=True), nullable=False),
            _merchant(),
        )
        Index("ix_refunds_merchant_payment", self.refunds.c.merchant_id, self.refunds.c.payment_id)


def _merchant() -> Column[str]:
    return Column("merchant_id", String(MERCHANT_ID_LENGTH), nullable=False)


@dataclass(frozen=True)
class Cursor:
    """Where a page of ListPayments stopped: the last payment it returned, newest first."""

    create_time: datetime
    payment_id: str


_MUTABLE = (
    "status",
    "refunded_minor",
    "charge_id",
    "failure_code",
    "cancel_requested",
    "charge_outcome_unknown",
    "charge_calls_open",
    "refund_seq",
)


class PaymentRepository:
    """Payments, their audit trail and their refunds in and out of the tables, set-based for a batch.
    Every method takes the merchant (for a batch, (merchant_id, order_id) pairs) and puts it in the SQL;
    `refunding` alone spans merchants, as the background's refund scan does."""

    def __init__(self, md: MetaData) -> None:
        self.t = Tables(md)
        p, r = self.t.payments, self.t.refunds
        # Built once: SQLAlchemy then skips building and keying them on every call.
        self._insert_payments = insert(p)
        self._insert_steps = insert(self.t.steps)
        self._insert_refunds = insert(r)
        # Written with executemany: one statement for every payment a batch changed.
        self._update = (
            update(p)
            .where(p.c.merchant_id == bindparam("b_merchant"), p.c.payment_id == bindparam("b_id"))
            .values({k: bindparam(k) for k in (*_MUTABLE, "update_time")})
        )

    # -- reads ----------------------------------------------------------------------

    async def by_orders(
        self, conn: AsyncConnection, orders: Iterable[OrderKey], *, lock: bool = True
    ) -> dict[OrderKey, Payment]:
        """The payments of these (merchant_id, order_id) pairs, keyed by the pair: an order id under another
        merchant than its payment's finds nothing."""
        keys = list(dict.fromkeys(orders))
        if not keys:
            return {}
        p = self.t.payments
        query = select(p).where(pairs_in(p.c.merchant_id, p.c.order_id))
        rows = await conn.execute(query.with_for_update() if lock else query, pairs_params(keys))
        return {(r.merchant_id, r.order_id): _payment(r) for r in rows}

    async def get(
        self, conn: AsyncConnection, merchant_id: str, payment_id: str, *, lock: bool = False
    ) -> Payment | None:
        p = self.t.payments
        query = select(p).where(p.c.merchant_id == merchant_id, p.c.payment_id == payment_id)
        row = (await conn.execute(query.with_for_update() if lock else query)).first()
        return None if row is None else _payment(row)

    async def pending_refund(
        self, conn: AsyncConnection, merchant_id: str, payment_id: str, *, lock: bool = False
    ) -> Refund | None:
        r = self.t.refunds
        query = (
            select(r)
            .where(r.c.merchant_id == merchant_id, r.c.payment_id == payment_id, r.c.status == "PENDING")
            .order_by(r.c.create_time)
        )
        row = (await conn.execute(query.with_for_update() if lock else query)).first()
        return None if row is None else _refund(row)

    async def refunding(self, conn: AsyncConnection) -> list[tuple[str, str]]:
        """(merchant_id, payment_id) of every payment waiting for a refund's answer, of all merchants:
        the background's work list."""
        p = self.t.payments
        rows = await conn.execute(
            select(p.c.merchant_id, p.c.payment_id).where(p.c.status == Status.REFUNDING.value)
        )
        return [(r[0], r[1]) for r in rows]

    async def page(
        self,
        conn: AsyncConnection,
        merchant_id: str,
        *,
        order_id: str,
        status: Status | None,
        after: Cursor | None,
        limit: int,
    ) -> list[Payment]:
        """The merchant's payments, newest first, keyset on (create_time, payment_id)."""
        p = self.t.payments
        query = select(p).where(p.c.merchant_id == merchant_id)
        if order_id:
            query = query.where(p.c.order_id == order_id)
        if status is not None:
            query = query.where(p.c.status == status.value)
        if after is not None:
            t, pid = after.create_time, after.payment_id
            query = query.where(or_(p.c.create_time < t, and_(p.c.create_time == t, p.c.payment_id < pid)))
        rows = await conn.execute(query.order_by(p.c.create_time.desc(), p.c.payment_id.desc()).limit(limit))
        return [_payment(r) for r in rows]

    async def trail(
        self, conn: AsyncConnection, merchant_id: str, payment_id: str, after: int, limit: int
    ) -> list[AuditEntry]:
        """The audit trail in sequence order, with each step's 1-based position in its payment's trail."""
        s = self.t.steps
        numbered = (
            select(s, func.row_number().over(order_by=s.c.sequence).label("position"))
            .where(s.c.merchant_id == merchant_id, s.c.payment_id == payment_id)
            .subquery()
        )
        query = (
            select(numbered)
            .where(numbered.c.sequence > after)
            .order_by(numbered.c.sequence)
            .limit(limit)
        )
        rows = await conn.execute(query)
        return [
            AuditEntry(
                r.sequence,
                r.position,
                r.merchant_id,
                r.payment_id,
                r.order_id,
                r.type,
                None if r.from_status is None else Status(r.from_status),
                Status(r.to_status),
                r.amount_minor,
                r.detail,
                as_utc(r.create_time),
            )
            for r in rows
        ]

    # -- writes ---------------------------------------------------------------------

    async def save(self, conn: AsyncConnection, payments: Iterable[Payment], now: datetime) -> None:
        """Insert new payments, update changed ones, append their audit steps and new refunds: executemany each.
        Each row is written under its payment's own merchant."""
        new: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        refunds: list[dict[str, Any]] = []
        for p in payments:
            if p.is_new:
                new.append(_row(p))
            elif p.changed:
                values = {k: _value(getattr(p, k)) for k in _MUTABLE}
                changed.append({"b_merchant": p.merchant_id, "b_id": p.payment_id, "update_time": now, **values})
                p.update_time = now
            for step in p.steps:
                steps.append(
                    {
                        "merchant_id": p.merchant_id,
                        "payment_id": p.payment_id,
                        "order_id": p.order_id,
                        "type": step.type,
                        "from_status": step.from_status.value if step.from_status else None,
                        "to_status": step.to_status.value,
                        "amount_minor": step.amount_minor,
                        "detail": step.detail[:2000],
                        "create_time": now,
                    }
                )
            for refund in p.new_refunds:
                refunds.append(
                    {
                        "merchant_id": refund.merchant_id,
                        "refund_id": refund.refund_id,
                        "payment_id": refund.payment_id,
                        "request_id": refund.request_id,
                        "idempotency_key": refund.idempotency_key,
                        "amount_minor": refund.amount_minor,
                        "reason": refund.reason,
                        "status": "PENDING",
                        "create_time": now,
                        "update_time": now,
                    }
                )
            p.is_new = p.changed = False
            p.steps = []
            p.new_refunds = []
        if new:
            await conn.execute(self._insert_payments, new)
        if changed:
            await conn.execute(self._update, changed)
        if steps:
            await conn.execute(self._insert_steps, steps)
        if refunds:
            await conn.execute(self._insert_refunds, refunds)

    async def finish_refund(
        self,
        conn: AsyncConnection,
        merchant_id: str,
        refund_id: str,
        status: str,
        gateway_refund_id: str,
        failure_code: str,
        now: datetime,
    ) -> None:
        r = self.t.refunds
        await conn.execute(
            update(r)
            .where(r.c.merchant_id == merchant_id, r.c.refund_id == refund_id)
            .values(status=status, gateway_refund_id=gateway_refund_id, failure_code=failure_code, update_time=now)
        )

    async def mark_refund_unknown(self, conn: AsyncConnection, merchant_id: str, refund_id: str, now: datetime) -> None:
        r = self.t.refunds
        await conn.execute(
            update(r)
            .where(r.c.merchant_id == merchant_id, r.c.refund_id == refund_id)
            .values(outcome_unknown=True, update_time=now)
        )


def _value(v: Any) -> Any:
    return v.value if isinstance(v, Status) else v


def _row(p: Payment) -> dict[str, Any]:
    return {
        "merchant_id": p.merchant_id,
        "payment_id": p.payment_id,
        "order_id": p.order_id,
        "amount_minor": p.amount_minor,
        "currency": p.currency,
        "payment_method_token": p.payment_method_token,
        "idempotency_key": p.idempotency_key,
        "deadline": p.deadline,
        "create_time": p.create_time,
        "update_time": p.update_time,
        **{k: _value(getattr(p, k)) for k in _MUTABLE},
    }


def _payment(r: Any) -> Payment:
    return Payment(
        merchant_id=r.merchant_id,
        payment_id=r.payment_id,
        order_id=r.order_id,
        amount_minor=r.amount_minor,
        currency=r.currency,
        payment_method_token=r.payment_method_token,
        deadline=as_utc(r.deadline),
        # As stored (naive UTC on SQLite): only replies read them, and to_timestamp makes them UTC.
        create_time=r.create_time,
        update_time=r.update_time,
        status=Status(r.status),
        refunded_minor=r.refunded_minor,
        charge_id=r.charge_id,
        failure_code=r.failure_code,
        cancel_requested=bool(r.cancel_requested),
        charge_outcome_unknown=bool(r.charge_outcome_unknown),
        charge_calls_open=r.charge_calls_open,
        refund_seq=r.refund_seq,
    )


def _refund(row: Any) -> Refund:
    request = RefundRequest(
        row.merchant_id, row.refund_id, row.payment_id, row.amount_minor, row.idempotency_key, row.reason,
        row.request_id,
    )
    return Refund(request, row.status, row.gateway_refund_id, bool(row.outcome_unknown), as_utc(row.create_time))
