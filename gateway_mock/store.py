"""gateway_mock's tables and the queries on them. The chassis adds its outbox and inbox to this metadata."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway_mock.domain import Charge, ChargeQuery, ChargeStatus, Refund
from gateway_mock.faults import FaultConfig
from paymesh.chassis.db import as_utc, conflict_insert

KEY_LEN = 64
ID_LEN = 64
TEXT_LEN = 500
CONFIG_ROW = 1


def metadata() -> MetaData:
    """A fresh MetaData per runtime; nothing is created or connected at import."""
    md = MetaData()
    define_tables(md)
    return md


def define_tables(md: MetaData) -> None:
    """Add the gateway's tables to `md` unless it has them already."""
    if "charges" in md.tables:
        return
    Table(
        "charges",
        md,
        # seq orders ListCharges newest first and is its cursor; ids are random.
        Column("seq", Integer, primary_key=True, autoincrement=True),
        Column("charge_id", String(ID_LEN), nullable=False, unique=True),
        Column("idempotency_key", String(KEY_LEN), nullable=False, unique=True),
        Column("fingerprint", String(64), nullable=False),
        Column("amount_minor", BigInteger, nullable=False),
        Column("refunded_minor", BigInteger, nullable=False),
        Column("currency", String(3), nullable=False),
        Column("status", String(32), nullable=False),
        Column("decline_code", String(64), nullable=False),
        Column("token", String(64), nullable=False),
        Column("card_last4", String(4), nullable=False),
        Column("order_id", String(ID_LEN), nullable=False, index=True),
        Column("description", String(TEXT_LEN), nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False),
        Column("update_time", DateTime(timezone=True), nullable=False),
    )
    Table(
        "refunds",
        md,
        Column("refund_id", String(ID_LEN), primary_key=True),
        Column("idempotency_key", String(KEY_LEN), nullable=False, unique=True),
        Column("fingerprint", String(64), nullable=False),
        Column("charge_id", String(ID_LEN), nullable=False, index=True),
        Column("amount_minor", BigInteger, nullable=False),
        Column("currency", String(3), nullable=False),
        Column("reason", String(TEXT_LEN), nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False),
    )
    # Attempts of a key that has no stored charge yet: what tok_flaky counts.
    Table(
        "key_attempts",
        md,
        Column("idempotency_key", String(KEY_LEN), primary_key=True),
        Column("attempts", Integer, nullable=False),
    )
    Table(
        "config",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("latency_ms", Integer, nullable=False),
        Column("decline_rate", Float, nullable=False),
        Column("transient_error_rate", Float, nullable=False),
        Column("lost_response_rate", Float, nullable=False),
        Column("seed", BigInteger, nullable=False),
    )


class Store:
    """The repository: rows in, domain objects out. Every method runs on the caller's connection."""

    def __init__(self, md: MetaData) -> None:
        define_tables(md)
        self.charges = md.tables["charges"]
        self.refunds = md.tables["refunds"]
        self.key_attempts = md.tables["key_attempts"]
        self.config = md.tables["config"]

    # charges

    def _charge(self, row: Any) -> Charge:
        return Charge(
            charge_id=row.charge_id,
            idempotency_key=row.idempotency_key,
            fingerprint=row.fingerprint,
            amount_minor=row.amount_minor,
            refunded_minor=row.refunded_minor,
            currency=row.currency,
            status=ChargeStatus(row.status),
            decline_code=row.decline_code,
            token=row.token,
            card_last4=row.card_last4,
            order_id=row.order_id,
            description=row.description,
            create_time=as_utc(row.create_time),
            update_time=as_utc(row.update_time),
        )

    async def charge_by_key(self, conn: AsyncConnection, key: str) -> Charge | None:
        row = (await conn.execute(select(self.charges).where(self.charges.c.idempotency_key == key))).first()
        return None if row is None else self._charge(row)

    async def charge_by_id(self, conn: AsyncConnection, charge_id: str, *, for_update: bool = False) -> Charge | None:
        query = select(self.charges).where(self.charges.c.charge_id == charge_id)
        if for_update:  # PostgreSQL: concurrent refunds of one charge queue here (SQLite has one writer)
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        return None if row is None else self._charge(row)

    async def insert_charge(self, conn: AsyncConnection, charge: Charge) -> None:
        await conn.execute(
            insert(self.charges).values(
                charge_id=charge.charge_id,
                idempotency_key=charge.idempotency_key,
                fingerprint=charge.fingerprint,
                amount_minor=charge.amount_minor,
                refunded_minor=charge.refunded_minor,
                currency=charge.currency,
                status=charge.status.value,
                decline_code=charge.decline_code,
                token=charge.token,
                card_last4=charge.card_last4,
                order_id=charge.order_id,
                description=charge.description,
                create_time=charge.create_time,
                update_time=charge.update_time,
            )
        )

    async def save_refunded(self, conn: AsyncConnection, charge: Charge) -> None:
        await conn.execute(
            update(self.charges)
            .where(self.charges.c.charge_id == charge.charge_id)
            .values(refunded_minor=charge.refunded_minor, status=charge.status.value, update_time=charge.update_time)
        )

    async def list_charges(self, conn: AsyncConnection, query: ChargeQuery) -> tuple[list[Charge], int | None]:
        """One page, newest first, and the cursor of the next page (None at the end)."""
        c = self.charges.c
        stmt = select(self.charges).order_by(c.seq.desc()).limit(query.page_size + 1)
        if query.before_seq is not None:
            stmt = stmt.where(c.seq < query.before_seq)
        if query.order_id:
            stmt = stmt.where(c.order_id == query.order_id)
        if query.status is not None:
            stmt = stmt.where(c.status == query.status.value)
        rows = (await conn.execute(stmt)).all()
        page = rows[: query.page_size]
        next_seq = page[-1].seq if len(rows) > query.page_size else None
        return [self._charge(row) for row in page], next_seq

    # refunds

    async def refund_by_key(self, conn: AsyncConnection, key: str) -> Refund | None:
        row = (await conn.execute(select(self.refunds).where(self.refunds.c.idempotency_key == key))).first()
        if row is None:
            return None
        return Refund(
            refund_id=row.refund_id,
            idempotency_key=row.idempotency_key,
            fingerprint=row.fingerprint,
            charge_id=row.charge_id,
            amount_minor=row.amount_minor,
            currency=row.currency,
            reason=row.reason,
            create_time=as_utc(row.create_time),
        )

    async def insert_refund(self, conn: AsyncConnection, refund: Refund) -> None:
        await conn.execute(
            insert(self.refunds).values(
                refund_id=refund.refund_id,
                idempotency_key=refund.idempotency_key,
                fingerprint=refund.fingerprint,
                charge_id=refund.charge_id,
                amount_minor=refund.amount_minor,
                currency=refund.currency,
                reason=refund.reason,
                create_time=refund.create_time,
            )
        )

    # attempts and config

    async def count_attempt(self, conn: AsyncConnection, key: str) -> int:
        """Add one attempt for `key` and return how many there have been, counting this one."""
        stmt = conflict_insert(self.key_attempts, conn.dialect.name).values(idempotency_key=key, attempts=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=[self.key_attempts.c.idempotency_key],
            set_={"attempts": self.key_attempts.c.attempts + 1},
        ).returning(self.key_attempts.c.attempts)
        return int((await conn.execute(stmt)).scalar_one())

    async def load_config(self, conn: AsyncConnection) -> FaultConfig | None:
        row = (await conn.execute(select(self.config).where(self.config.c.id == CONFIG_ROW))).first()
        if row is None:
            return None
        return FaultConfig(
            latency_ms=row.latency_ms,
            decline_rate=row.decline_rate,
            transient_error_rate=row.transient_error_rate,
            lost_response_rate=row.lost_response_rate,
            seed=row.seed,
        )

    async def save_config(self, conn: AsyncConnection, config: FaultConfig) -> None:
        values = {
            "latency_ms": config.latency_ms,
            "decline_rate": config.decline_rate,
            "transient_error_rate": config.transient_error_rate,
            "lost_response_rate": config.lost_response_rate,
            "seed": config.seed,
        }
        result = await conn.execute(update(self.config).where(self.config.c.id == CONFIG_ROW).values(**values))
        if result.rowcount == 0:
            await conn.execute(insert(self.config).values(id=CONFIG_ROW, **values))
