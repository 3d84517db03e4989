"""order_svc's tables and the repository that reads and writes orders. The chassis adds outbox and inbox."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from order_svc.domain import OPEN, Line, Order, OrderStatus
from paymesh.chassis.db import as_utc


def metadata() -> MetaData:
    """A fresh MetaData per runtime holding order_svc's tables; nothing is created or connected at import."""
    md = MetaData()
    orders_table(md)
    return md


def orders_table(md: MetaData) -> Table:
    if "orders" in md.tables:
        return md.tables["orders"]
    table = Table(
        "orders",
        md,
        Column("order_id", String(40), primary_key=True),
        Column("customer_id", String(64), nullable=False),
        Column("currency", String(3), nullable=False),
        Column("amount_minor", BigInteger, nullable=False),
        Column("status", String(20), nullable=False),
        Column("failure_reason", String(300), nullable=False, default=""),
        Column("payment_id", String(64), nullable=False, default=""),
        Column("payment_method_token", String(64), nullable=False),
        Column("items", JSON, nullable=False),
        Column("deadline", DateTime(timezone=True), nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False),
        Column("update_time", DateTime(timezone=True), nullable=False),
        Column("inventory_answered", Boolean, nullable=False, default=False),
        Column("payment_answered", Boolean, nullable=False, default=False),
        Column("refund_failed", Boolean, nullable=False, default=False),
        Column("version", Integer, nullable=False, default=1),
    )
    Index("ix_orders_newest", table.c.create_time, table.c.order_id)
    Index("ix_orders_customer_newest", table.c.customer_id, table.c.create_time, table.c.order_id)
    Index("ix_orders_status_deadline", table.c.status, table.c.deadline)
    return table


# The columns an answer or a cancel may change; everything else is fixed at CreateOrder.
_MUTABLE = (
    "status",
    "failure_reason",
    "payment_id",
    "update_time",
    "inventory_answered",
    "payment_answered",
    "refund_failed",
    "version",
)


@dataclass(frozen=True)
class Cursor:
    """Where a page of ListOrders stopped: the last order it returned, newest first."""

    create_time: datetime
    order_id: str


class OrderRepository:
    """Orders in and out of the `orders` table, set-based where a batch is involved."""

    def __init__(self, table: Table) -> None:
        self.t = table
        t = table
        # The hot statements are built once: SQLAlchemy then skips building and keying them per call.
        # Written with executemany: one statement for every order a batch changed.
        self._save = (
            update(t)
            .where(t.c.order_id == bindparam("key_order_id"))
            .values({name: bindparam(name) for name in _MUTABLE})
        )
        self._insert = insert(t)
        self._get = select(t).where(t.c.order_id == bindparam("order_id"))

    async def add(self, conn: AsyncConnection, order: Order) -> None:
        row = {name: getattr(order, name) for name in _MUTABLE}
        await conn.execute(
            self._insert,
            {
                "order_id": order.order_id,
                "customer_id": order.customer_id,
                "currency": order.currency,
                "amount_minor": order.amount_minor,
                "payment_method_token": order.payment_method_token,
                "items": [[ln.sku, ln.quantity, ln.unit_price_minor] for ln in order.lines],
                "deadline": order.deadline,
                "create_time": order.create_time,
                **row,
                "status": order.status.value,
            },
        )

    async def get(self, conn: AsyncConnection, order_id: str) -> Order | None:
        rows = await conn.execute(self._get, {"order_id": order_id})
        row = rows.first()
        return None if row is None else _order(row)

    async def lock(self, conn: AsyncConnection, order_ids: Iterable[str]) -> dict[str, Order]:
        """The orders of a batch, read in one SELECT and locked until commit (PostgreSQL; SQLite has one writer).

        Locked in key order, so two batches sharing orders cannot deadlock.
        """
        ids = sorted(set(order_ids))
        if not ids:
            return {}
        rows = await conn.execute(
            select(self.t).where(self.t.c.order_id.in_(ids)).order_by(self.t.c.order_id).with_for_update()
        )
        return {row.order_id: _order(row) for row in rows}

    async def lock_overdue(self, conn: AsyncConnection, now: datetime, limit: int) -> list[Order]:
        """Open orders past their deadline; rows another transaction holds are left for the next sweep."""
        t = self.t
        rows = await conn.execute(
            select(t)
            .where(t.c.status.in_([s.value for s in OPEN]), t.c.deadline <= now)
            .order_by(t.c.order_id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_order(row) for row in rows]

    async def save(self, conn: AsyncConnection, orders: Iterable[Order]) -> None:
        params: list[dict[str, Any]] = []
        for order in orders:
            values: dict[str, Any] = {name: getattr(order, name) for name in _MUTABLE}
            values["status"] = order.status.value
            values["key_order_id"] = order.order_id
            params.append(values)
        if params:
            await conn.execute(self._save, params)

    async def page(
        self,
        conn: AsyncConnection,
        *,
        status: OrderStatus | None,
        customer_id: str,
        after: Cursor | None,
        limit: int,
    ) -> list[Order]:
        """Newest first; `after` is the last order of the previous page."""
        t = self.t
        query = select(t)
        if status is not None:
            query = query.where(t.c.status == status.value)
        if customer_id:
            query = query.where(t.c.customer_id == customer_id)
        if after is not None:
            query = query.where(
                or_(
                    t.c.create_time < after.create_time,
                    and_(t.c.create_time == after.create_time, t.c.order_id < after.order_id),
                )
            )
        rows = await conn.execute(query.order_by(t.c.create_time.desc(), t.c.order_id.desc()).limit(limit))
        return [_order(row) for row in rows]


def _order(row: Row[Any]) -> Order:
    """The domain object of a row of `orders`: no row leaves this module."""
    return Order(
        order_id=row.order_id,
        customer_id=row.customer_id,
        lines=tuple(Line(sku, quantity, price) for sku, quantity, price in row.items),
        currency=row.currency,
        amount_minor=row.amount_minor,
        payment_method_token=row.payment_method_token,
        status=OrderStatus(row.status),
        create_time=as_utc(row.create_time),
        update_time=as_utc(row.update_time),
        deadline=as_utc(row.deadline),
        failure_reason=row.failure_reason,
        payment_id=row.payment_id,
        inventory_answered=row.inventory_answered,
        payment_answered=row.payment_answered,
        refund_failed=row.refund_failed,
        version=row.version,
    )
