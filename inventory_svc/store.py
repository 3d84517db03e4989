"""inventory_svc's tables and set-based repository: one SELECT per table for a batch, executemany writes."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    MetaData,
    Row,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from inventory_svc.domain import Line, Product, Reservation, ReservationStatus


@dataclass(frozen=True)
class Tables:
    products: Table
    reservations: Table

    @classmethod
    def of(cls, metadata: MetaData) -> Tables:
        """The inventory tables in `metadata`, defined there first if they are not yet."""
        if "products" not in metadata.tables:
            _define(metadata)
        return cls(metadata.tables["products"], metadata.tables["reservations"])


def _define(metadata: MetaData) -> None:
    Table(
        "products",
        metadata,
        Column("sku", String(64), primary_key=True),
        Column("name", String(200), nullable=False),
        Column("available", BigInteger, nullable=False),
        Column("reserved", BigInteger, nullable=False),
        Column("sold", BigInteger, nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False),
        Column("update_time", DateTime(timezone=True), nullable=False),
        # The last line of defence: a bug that would oversell fails the transaction.
        CheckConstraint("available >= 0", name="ck_products_available"),
        CheckConstraint("reserved >= 0", name="ck_products_reserved"),
        CheckConstraint("sold >= 0", name="ck_products_sold"),
    )
    Table(
        "reservations",
        metadata,
        Column("order_id", String(64), primary_key=True),
        Column("status", String(16), nullable=False),
        Column("lines", JSON, nullable=False),
        Column("reason", String(64), nullable=False),
        Column("sku", String(64), nullable=False),
        Column("cancel_answered", Boolean, nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False),
        Column("update_time", DateTime(timezone=True), nullable=False),
    )


def metadata() -> MetaData:
    """A fresh MetaData per runtime; nothing is created or connected at import."""
    fresh = MetaData()
    Tables.of(fresh)
    return fresh


def utcnow() -> datetime:
    return datetime.now(UTC)


# Products -----------------------------------------------------------------------------


def _product(row: Any) -> Product:
    return Product(row.sku, row.name, row.available, row.reserved, row.sold)


async def load_products(conn: AsyncConnection, t: Tables, skus: Collection[str]) -> dict[str, Product]:
    """The products of `skus` that exist, locked until the transaction ends (PostgreSQL; SQLite has one writer)."""
    if not skus:
        return {}
    p = t.products
    rows = await conn.execute(select(p).where(p.c.sku.in_(sorted(set(skus)))).order_by(p.c.sku).with_for_update())
    return {row.sku: _product(row) for row in rows}


async def save_products(conn: AsyncConnection, t: Tables, products: Iterable[Product], now: datetime) -> None:
    """Write back the stock of existing products, one executemany."""
    params = [
        {"b_sku": p.sku, "b_name": p.name, "b_available": p.available, "b_reserved": p.reserved, "b_sold": p.sold}
        for p in products
    ]
    if not params:
        return
    table = t.products
    statement = (
        update(table)
        .where(table.c.sku == bindparam("b_sku"))
        .values(
            name=bindparam("b_name"),
            available=bindparam("b_available"),
            reserved=bindparam("b_reserved"),
            sold=bindparam("b_sold"),
            update_time=now,
        )
    )
    await conn.execute(statement, params)


async def insert_product(conn: AsyncConnection, t: Tables, product: Product, now: datetime) -> None:
    values = {"sku": product.sku, "name": product.name, "available": product.available}
    await conn.execute(insert(t.products).values(**values, reserved=0, sold=0, create_time=now, update_time=now))


async def product_row(conn: AsyncConnection, t: Tables, sku: str) -> Row[Any] | None:
    result = await conn.execute(select(t.products).where(t.products.c.sku == sku))
    return result.first()


async def product_page(conn: AsyncConnection, t: Tables, after: str | None, limit: int) -> Sequence[Row[Any]]:
    """Up to `limit` products ordered by sku, those after `after` (keyset paging)."""
    p = t.products
    query = select(p).order_by(p.c.sku).limit(limit)
    if after is not None:
        query = query.where(p.c.sku > after)
    return (await conn.execute(query)).all()


# Reservations -------------------------------------------------------------------------


def _reservation(row: Any) -> Reservation:
    lines = tuple(Line(line["sku"], int(line["quantity"])) for line in row.lines)
    return Reservation(
        order_id=row.order_id,
        status=ReservationStatus(row.status),
        lines=lines,
        reason=row.reason,
        sku=row.sku,
        cancel_answered=row.cancel_answered,
    )


def _reservation_values(r: Reservation) -> dict[str, Any]:
    return {
        "status": r.status.value,
        "lines": [{"sku": line.sku, "quantity": line.quantity} for line in r.lines],
        "reason": r.reason,
        "sku": r.sku,
        "cancel_answered": r.cancel_answered,
    }


async def load_reservations(
    conn: AsyncConnection, t: Tables, order_ids: Collection[str]
) -> dict[str, Reservation]:
    """The reservations of `order_ids` that exist, locked until the transaction ends (PostgreSQL)."""
    if not order_ids:
        return {}
    r = t.reservations
    query = select(r).where(r.c.order_id.in_(sorted(set(order_ids)))).order_by(r.c.order_id).with_for_update()
    return {row.order_id: _reservation(row) for row in await conn.execute(query)}


async def insert_reservations(
    conn: AsyncConnection, t: Tables, reservations: Iterable[Reservation], now: datetime
) -> None:
    rows = [
        {"order_id": r.order_id, **_reservation_values(r), "create_time": now, "update_time": now}
        for r in reservations
    ]
    if rows:
        await conn.execute(insert(t.reservations), rows)


async def update_reservations(
    conn: AsyncConnection, t: Tables, reservations: Iterable[Reservation], now: datetime
) -> None:
    params = [
        {"b_order_id": r.order_id, **{f"b_{k}": v for k, v in _reservation_values(r).items()}} for r in reservations
    ]
    if not params:
        return
    table = t.reservations
    statement = (
        update(table)
        .where(table.c.order_id == bindparam("b_order_id"))
        .values(
            status=bindparam("b_status"),
            lines=bindparam("b_lines", type_=JSON),
            reason=bindparam("b_reason"),
            sku=bindparam("b_sku"),
            cancel_answered=bindparam("b_cancel_answered"),
            update_time=now,
        )
    )
    await conn.execute(statement, params)


async def reservation_row(conn: AsyncConnection, t: Tables, order_id: str) -> Row[Any] | None:
    result = await conn.execute(select(t.reservations).where(t.reservations.c.order_id == order_id))
    return result.first()
