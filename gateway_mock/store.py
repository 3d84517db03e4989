"""gateway_mock's tables and the repository of its charges, refunds and settings. The chassis adds outbox and inbox."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
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

from gateway_mock.domain import Charge, ChargeQuery, ChargeStatus, Refund
from gateway_mock.faults import FaultConfig
from paymesh.chassis.db import as_utc, conflict_insert
from paymesh.chassis.schema_steps import MERCHANT_ID_LENGTH
from paymesh.chassis.validation import page_limit, split_page

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
        # Unique across merchants: the keys are the platform's (the bank's one customer), not a merchant's.
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
        # Last, where the merchants revision added it. The platform's tag, not an owner: the bank answers the
        # platform about every merchant's charges, and ListCharges filters by it.
        Column("merchant_id", String(MERCHANT_ID_LENGTH), nullable=False),
        Index("ix_charges_merchant_id_seq", "merchant_id", "seq"),
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
        Column("merchant_id", String(MERCHANT_ID_LENGTH), nullable=False),  # the refunded charge's
    )
    # No merchant_id on the two tables below, on purpose: neither row is a merchant's. The attempts count
    # the platform's keys (global, as the charges' are); the settings are the operator's, one for the bank.
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


class GatewayRepository:
    """Charges, refunds, attempts and the fault settings: rows in, domain objects out, on the caller's connection."""

    def __init__(self, md: MetaData) -> None:
        define_tables(md)
        self.charges = charges = md.tables["charges"]
        refunds = md.tables["refunds"]
        attempts = md.tables["key_attempts"]
        config = md.tables["config"]
        # Built once: a charge reads by key twice and inserts once, on every saga's path.
        self._charge_by_key = select(charges).where(charges.c.idempotency_key == bindparam("key"))
        self._charge_by_id = select(charges).where(charges.c.charge_id == bindparam("charge_id"))
        # PostgreSQL: concurrent refunds of one charge queue here (SQLite has one writer).
        self._charge_by_id_locked = self._charge_by_id.with_for_update()
        self._insert_charge = insert(charges)
        self._save_refunded = (
            update(charges)
            .where(charges.c.charge_id == bindparam("key_charge_id"))
            .values({name: bindparam(name) for name in ("refunded_minor", "status", "update_time")})
        )
        self._refund_by_key = select(refunds).where(refunds.c.idempotency_key == bindparam("key"))
        self._insert_refund = insert(refunds)
        self._count_attempt = {dialect: _count_attempt(attempts, dialect) for dialect in ("sqlite", "postgresql")}
        self._load_config = select(config).where(config.c.id == CONFIG_ROW)
        self._update_config = update(config).where(config.c.id == CONFIG_ROW)
        self._insert_config = insert(config)

    # charges

    async def charge_by_key(self, conn: AsyncConnection, key: str) -> Charge | None:
        row = (await conn.execute(self._charge_by_key, {"key": key})).first()
        return None if row is None else _charge(row)

    async def charge_by_id(self, conn: AsyncConnection, charge_id: str, *, for_update: bool = False) -> Charge | None:
        query = self._charge_by_id_locked if for_update else self._charge_by_id
        row = (await conn.execute(query, {"charge_id": charge_id})).first()
        return None if row is None else _charge(row)

    async def insert_charge(self, conn: AsyncConnection, charge: Charge) -> None:
        await conn.execute(
            self._insert_charge,
            {
                "charge_id": charge.charge_id,
                "idempotency_key": charge.idempotency_key,
                "fingerprint": charge.fingerprint,
                "amount_minor": charge.amount_minor,
                "refunded_minor": charge.refunded_minor,
                "currency": charge.currency,
                "status": charge.status.value,
                "decline_code": charge.decline_code,
                "token": charge.token,
                "card_last4": charge.card_last4,
                "merchant_id": charge.merchant_id,
                "order_id": charge.order_id,
                "description": charge.description,
                "create_time": charge.create_time,
                "update_time": charge.update_time,
            },
        )

    async def save_refunded(self, conn: AsyncConnection, charge: Charge) -> None:
        await conn.execute(
            self._save_refunded,
            {
                "key_charge_id": charge.charge_id,
                "refunded_minor": charge.refunded_minor,
                "status": charge.status.value,
                "update_time": charge.update_time,
            },
        )

    async def list_charges(self, conn: AsyncConnection, query: ChargeQuery) -> tuple[list[Charge], int | None]:
        """One page, newest first, and the cursor of the next page (None at the end)."""
        c = self.charges.c
        stmt = select(self.charges).order_by(c.seq.desc()).limit(page_limit(query.page_size))
        if query.before_seq is not None:
            stmt = stmt.where(c.seq < query.before_seq)
        if query.merchant_id:  # ix_charges_merchant_id_seq: the merchant's rows, already newest first
            stmt = stmt.where(c.merchant_id == query.merchant_id)
        if query.order_id:
            stmt = stmt.where(c.order_id == query.order_id)
        if query.status is not None:
            stmt = stmt.where(c.status == query.status.value)
        page, last = split_page((await conn.execute(stmt)).all(), query.page_size)
        return [_charge(row) for row in page], None if last is None else last.seq

    # refunds

    async def refund_by_key(self, conn: AsyncConnection, key: str) -> Refund | None:
        row = (await conn.execute(self._refund_by_key, {"key": key})).first()
        return None if row is None else _refund(row)

    async def insert_refund(self, conn: AsyncConnection, refund: Refund) -> None:
        await conn.execute(
            self._insert_refund,
            {
                "refund_id": refund.refund_id,
                "idempotency_key": refund.idempotency_key,
                "fingerprint": refund.fingerprint,
                "charge_id": refund.charge_id,
                "merchant_id": refund.merchant_id,
                "amount_minor": refund.amount_minor,
                "currency": refund.currency,
                "reason": refund.reason,
                "create_time": refund.create_time,
            },
        )

    # attempts and config

    async def count_attempt(self, conn: AsyncConnection, key: str) -> int:
        """Add one attempt for `key` and return how many there have been, counting this one."""
        stmt = self._count_attempt["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
        return int((await conn.execute(stmt, {"key": key})).scalar_one())

    async def load_config(self, conn: AsyncConnection) -> FaultConfig | None:
        row = (await conn.execute(self._load_config)).first()
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
        result = await conn.execute(self._update_config, values)
        if result.rowcount == 0:
            await conn.execute(self._insert_config, {"id": CONFIG_ROW, **values})


def _count_attempt(attempts: Table, dialect: str) -> Any:
    """The upsert that counts one attempt of a key, in `dialect` (ON CONFLICT is spelled alike in both)."""
    stmt = conflict_insert(attempts, dialect).values(idempotency_key=bindparam("key"), attempts=1)
    return stmt.on_conflict_do_update(
        index_elements=[attempts.c.idempotency_key],
        set_={"attempts": attempts.c.attempts + 1},
    ).returning(attempts.c.attempts)


def _charge(row: Row[Any]) -> Charge:
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
        merchant_id=row.merchant_id,
        order_id=row.order_id,
        description=row.description,
        create_time=as_utc(row.create_time),
        update_time=as_utc(row.update_time),
    )


def _refund(row: Row[Any]) -> Refund:
    return Refund(
        refund_id=row.refund_id,
        idempotency_key=row.idempotency_key,
        fingerprint=row.fingerprint,
        charge_id=row.charge_id,
        merchant_id=row.merchant_id,
        amount_minor=row.amount_minor,
        currency=row.currency,
        reason=row.reason,
        create_time=as_utc(row.create_time),
    )
