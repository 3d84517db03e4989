"""inventory_svc's tables and its repository: set-based for a batch (one SELECT per table, executemany writes).

Every row is a merchant's, and every statement names the merchant in its WHERE clause: another merchant's
sku or order reads exactly as one that does not exist."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    MetaData,
    PrimaryKeyConstraint,
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
from paymesh.chassis.db import lock_pairs, pairs_in, pairs_params
from paymesh.chassis.schema_steps import MERCHANT_ID_LENGTH

T = TypeVar("T")

# (merchant_id, sku) of a product, (merchant_id, order_id) of a reservation: what a batch asks for.
ProductKey = tuple[str, str]
ReservationKey = tuple[str, str]


def _define(metadata: MetaData) -> None:
    Table(
        "products",
        metadata,
        Column("sku", String(64), nullable=False),
        Column("name", String(200), nullable=False),
        Column("available", BigInteger, nullable=False),
        Column("reserved", BigInteger, nullable=False),
        Column("sold", BigInteger, nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False),
        Column("update_time", DateTime(timezone=True), nullable=False),
        # Last, where the merchants revision added it to existing tables. A sku is unique per merchant, and
        # the key leads with the merchant: it serves GetProduct and a merchant's ListProducts page.
        Column("merchant_id", String(MERCHANT_ID_LENGTH), nullable=False),
        PrimaryKeyConstraint("merchant_id", "sku", name="products_pkey"),
        # The last line of defence: a bug that would oversell fails the transaction.
        CheckConstraint("available >= 0", name="ck_products_available"),
        CheckConstraint("reserved >= 0", name="ck_products_reserved"),
        CheckConstraint("sold >= 0", name="ck_products_sold"),
    )
    Table(
        "reservations",
        metadata,
        Column("order_id", String(64), nullable=False),
        Column("status", String(16), nullable=False),
        Column("lines", JSON, nullable=False),
        Column("reason", String(64), nullable=False),
        Column("sku", String(64), nullable=False),
        Column("cancel_answered", Boolean, nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False),
        Column("update_time", DateTime(timezone=True), nullable=False),
        Column("merchant_id", String(MERCHANT_ID_LENGTH), nullable=False),
        # Per merchant, though order ids are global: another merchant's event naming this order finds
        # nothing and gets a row (a tombstone, a rejection) of its own, never this one.
        PrimaryKeyConstraint("merchant_id", "order_id", name="reservations_pkey"),
    )


def metadata() -> MetaData:
    """A fresh MetaData per runtime; nothing is created or connected at import."""
    fresh = MetaData()
    _define(fresh)
    return fresh


@dataclass(frozen=True)
class Stored(Generic[T]):
    """A product or reservation as read for a reply, with the times its row keeps (naive from SQLite: UTC)."""

    value: T
    create_time: datetime
    update_time: datetime


class InventoryRepository:
    """Products and reservations in and out of their tables; the statements are built once, here."""

    def __init__(self, metadata: MetaData) -> None:
        if "products" not in metadata.tables:
            _define(metadata)
        p = self.products = metadata.tables["products"]
        r = self.reservations = metadata.tables["reservations"]
        # Locked in key order, so two batches sharing rows cannot deadlock (PostgreSQL; SQLite has one writer).
        self._lock_products = (
            select(p)
            .where(pairs_in(p.c.merchant_id, p.c.sku))
            .order_by(p.c.merchant_id, p.c.sku)
            .with_for_update()
        )
        self._add_product = insert(p)
        # executemany: one statement for every product a batch changed.
        self._save_products = (
            update(p)
            .where(p.c.merchant_id == bindparam("b_merchant_id"), p.c.sku == bindparam("b_sku"))
            .values(
                name=bindparam("b_name"),
                available=bindparam("b_available"),
                reserved=bindparam("b_reserved"),
                sold=bindparam("b_sold"),
                update_time=bindparam("b_update_time"),
            )
        )
        self._product = select(p).where(p.c.merchant_id == bindparam("merchant_id"), p.c.sku == bindparam("sku"))
        self._first_page = (
            select(p).where(p.c.merchant_id == bindparam("merchant_id")).order_by(p.c.sku).limit(bindparam("limit"))
        )
        self._page_after = (
            select(p)
            .where(p.c.merchant_id == bindparam("merchant_id"), p.c.sku > bindparam("after"))
            .order_by(p.c.sku)
            .limit(bindparam("limit"))
        )
        self._lock_reservations = (
            select(r)
            .where(pairs_in(r.c.merchant_id, r.c.order_id))
            .order_by(r.c.merchant_id, r.c.order_id)
            .with_for_update()
        )
        self._add_reservations = insert(r)
        self._save_reservations = (
            update(r)
            .where(r.c.merchant_id == bindparam("b_merchant_id"), r.c.order_id == bindparam("b_order_id"))
            .values(
                status=bindparam("b_status"),
                lines=bindparam("b_lines", type_=JSON),
                reason=bindparam("b_reason"),
                sku=bindparam("b_sku"),
                cancel_answered=bindparam("b_cancel_answered"),
                update_time=bindparam("b_update_time"),
            )
        )
        self._reservation = select(r).where(
            r.c.merchant_id == bindparam("merchant_id"), r.c.order_id == bindparam("order_id")
        )

    # Products ---------------------------------------------------------------------------

    async def lock_products(self, conn: AsyncConnection, keys: Collection[ProductKey]) -> dict[ProductKey, Product]:
        """The products of these (merchant_id, sku) pairs that exist, locked until the transaction ends."""
        if not keys:
            return {}
        rows = await conn.execute(self._lock_products, pairs_params(keys))
        return {(row.merchant_id, row.sku): _product(row) for row in rows}

    async def lock_product(self, conn: AsyncConnection, merchant_id: str, sku: str) -> Product | None:
        """The merchant's product `sku`, locked until the transaction ends; None if the merchant has none."""
        return (await self.lock_products(conn, [(merchant_id, sku)])).get((merchant_id, sku))

    async def add_product(self, conn: AsyncConnection, product: Product, now: datetime) -> None:
        await conn.execute(
            self._add_product,
            {
                "merchant_id": product.merchant_id,
                "sku": product.sku,
                "name": product.name,
                "available": product.available,
                "reserved": 0,
                "sold": 0,
                "create_time": now,
                "update_time": now,
            },
        )

    async def save_products(self, conn: AsyncConnection, products: Iterable[Product], now: datetime) -> None:
        """Write back the stock of existing products (each to its own merchant's row), one executemany."""
        params = [
            {
                "b_merchant_id": p.merchant_id,
                "b_sku": p.sku,
                "b_name": p.name,
                "b_available": p.available,
                "b_reserved": p.reserved,
                "b_sold": p.sold,
                "b_update_time": now,
            }
            for p in products
        ]
        if params:
            await conn.execute(self._save_products, params)

    async def product(self, conn: AsyncConnection, merchant_id: str, sku: str) -> Stored[Product] | None:
        row = (await conn.execute(self._product, {"merchant_id": merchant_id, "sku": sku})).first()
        return None if row is None else _stored(row, _product(row))

    async def product_page(
        self, conn: AsyncConnection, merchant_id: str, after: str | None, limit: int
    ) -> list[Stored[Product]]:
        """Up to `limit` of the merchant's products ordered by sku, those after `after` (keyset paging)."""
        if after is None:
            rows = await conn.execute(self._first_page, {"merchant_id": merchant_id, "limit": limit})
        else:
            rows = await conn.execute(
                self._page_after, {"merchant_id": merchant_id, "after": after, "limit": limit}
            )
        return [_stored(row, _product(row)) for row in rows]

    # Reservations -----------------------------------------------------------------------

    async def lock_reservations(
        self, conn: AsyncConnection, keys: Collection[ReservationKey]
    ) -> dict[ReservationKey, Reservation]:
        """The reservations of these (merchant_id, order_id) pairs that exist, locked until the transaction ends;
        the keys without one are locked too, so another replica cannot insert one meanwhile (a tombstone or a
        reservation this batch would then insert again)."""
        if not keys:
            return {}
        await lock_pairs(conn, "reservations", keys)
        rows = await conn.execute(self._lock_reservations, pairs_params(keys))
        return {(row.merchant_id, row.order_id): _reservation(row) for row in rows}

    async def add_reservations(self, conn: AsyncConnection, reservations: Iterable[Reservation], now: datetime) -> None:
        rows = [
            {
                "merchant_id": r.merchant_id,
                "order_id": r.order_id,
                **_reservation_values(r),
                "create_time": now,
                "update_time": now,
            }
            for r in reservations
        ]
        if rows:
            await conn.execute(self._add_reservations, rows)

    async def save_reservations(
        self, conn: AsyncConnection, reservations: Iterable[Reservation], now: datetime
    ) -> None:
        params = [
            {
                "b_merchant_id": r.merchant_id,
                "b_order_id": r.order_id,
                **{f"b_{k}": v for k, v in _reservation_values(r).items()},
                "b_update_time": now,
            }
            for r in reservations
        ]
        if params:
            await conn.execute(self._save_reservations, params)

    async def reservation(self, conn: AsyncConnection, merchant_id: str, order_id: str) -> Stored[Reservation] | None:
        row = (await conn.execute(self._reservation, {"merchant_id": merchant_id, "order_id": order_id})).first()
        return None if row is None else _stored(row, _reservation(row))


def _stored(row: Row[Any], value: T) -> Stored[T]:
    return Stored(value, row.create_time, row.update_time)


def _product(row: Row[Any]) -> Product:
    return Product(row.merchant_id, row.sku, row.name, row.available, row.reserved, row.sold)


def _reservation(row: Row[Any]) -> Reservation:
    lines = tuple(Line(line["sku"], int(line["quantity"])) for line in row.lines)
    return Reservation(
        merchant_id=row.merchant_id,
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
