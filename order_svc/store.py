"""order_svc's tables and the repository that reads and writes orders. The chassis adds outbox and inbox.

Every order is one merchant's: each read and write names the merchant in its SQL, so another merchant's
order is found exactly as a missing one is (not at all). Only the deadline sweeper reads across merchants.
"""

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
from paymesh.chassis.db import as_utc, pairs_in, pairs_params
from paymesh.chassis.schema_steps import MERCHANT_ID_LENGTH

# (merchant_id, order_id): how a batch names the orders it reads.
OrderKey = tuple[str, str]


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
        # Last, where the `merchants` revision added it.
        Column("merchant_id", String(MERCHANT_ID_LENGTH), nullable=False),
    )
    # ListOrders reads one merchant's orders, newest first, maybe of one customer.
    Index("ix_orders_merchant_newest", table.c.merchant_id, table.c.create_time, table.c.order_id)
    Index(
        "ix_orders_merchant_customer_newest",
        table.c.merchant_id,
        table.c.customer_id,
        table.c.create_time,
        table.c.order_id,
    )
    # The deadline sweeper's, across every merchant.
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
            .where(t.c.merchant_id == bindparam("key_merchant_id"), t.c.order_id == bindparam("key_order_id"))
            .values({name: bindparam(name) for name in _MUTABLE})
        )
        self._insert = insert(t)
        self._get = select(t).where(t.c.merchant_id == bindparam("merchant_id"), t.c.order_id == bindparam("order_id"))

    async def add(self, conn: AsyncConnection, order: Order) -> None:
        row = {name: getattr(order, name) for name in _MUTABLE}
        await conn.execute(
            self._insert,
            {
                "order_id": order.order_id,
                "merchant_id": order.merchant_id,
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

    async def get(self, conn: AsyncConnection, merchant_id: str, order_id: str) -> Order | None:
        """The merchant's order; None when there is none, or it is another merchant's."""
        rows = await conn.execute(self._get, {"merchant_id": merchant_id, "order_id": order_id})
        row = rows.first()
        return None if row is None else _order(row)

    async def lock(self, conn: AsyncConnection, keys: Iterable[OrderKey]) -> dict[OrderKey, Order]:
        """The orders of a batch by (merchant_id, order_id), read in one SELECT and locked until commit
        (PostgreSQL; SQLite has one writer). A key whose merchant does not own the order finds nothing.

        Locked in key order, so two batches sharing orders cannot deadlock.
        """
        pairs = sorted(set(keys))
        if not pairs:
            return {}
        t = self.t
        query = select(t).where(pairs_in(t.c.merchant_id, t.c.order_id))
        rows = await conn.execute(query.order_by(t.c.order_id).with_for_update(), pairs_params(pairs))
        return {(row.merchant_id, row.order_id): _order(row) for row in rows}

    async def lock_overdue(self, conn: AsyncConnection, now: datetime, limit: int) -> list[Order]:
        """Open orders past their deadline, of every merchant (the saga's clock is the system's); rows another
        transaction holds are left for the next sweep."""
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
        """Each order's new state, written where its own merchant and id match."""
        params: list[dict[str, Any]] = []
        for order in orders:
            values: dict[str, Any] = {name: getattr(order, name) for name in _MUTABLE}
            values["status"] = order.status.value
            values["key_merchant_id"] = order.merchant_id
            values["key_order_id"] = order.order_id
            params.append(values)
        if params:
            await conn.execute(self._save, params)

    async def page(
        self,
        conn: AsyncConnection,
        merchant_id: str,
        *,
        status: OrderStatus | None,
        customer_id: str,
        after: Cursor | None,
        limit: int,
    ) -> list[Order]:
        """The merchant's orders, newest first; `after` is the last order of the previous page."""
        t = self.t
        query = select(t).where(t.c.merchant_id == merchant_id)
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
        merchant_id=row.merchant_id,
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
