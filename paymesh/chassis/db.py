"""A service's database: the async engine (SQLite or PostgreSQL) and its unit of work."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, MetaData, Table, and_, bindparam, event, text, tuple_
from sqlalchemy.dialects import postgresql, registry, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "sqlite+inloop", "postgresql+asyncpg")

# `sqlite+inloop://`: stdlib sqlite3 run on the event loop, without aiosqlite's thread hop
# (paymesh/chassis/sqlite_inloop.py; benchmarks/README.md has what it gains).
registry.register("sqlite.inloop", "paymesh.chassis.sqlite_inloop", "SQLiteDialect_inloop")


def as_utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime: SQLite hands them back without their zone,
    and every time paymesh writes is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def conflict_insert(table: Table, dialect_name: str) -> Any:
    """`INSERT` into `table` with `on_conflict_do_nothing` / `on_conflict_do_update`, in the
    dialect of the database (`sqlite` or `postgresql`: both spell ON CONFLICT alike)."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(table)


def pairs_in(first: ColumnElement[Any], second: ColumnElement[Any], name: str = "keys") -> ColumnElement[bool]:
    """`(first, second) IN :name`, e.g. the (merchant_id, order_id) pairs of a batch, written so SQLite searches
    an index: alone, a row-value IN makes SQLite scan the whole table, so each column's own IN comes first
    (`:name_1`, `:name_2`) and the pairs keep the combinations exact. Bind it with `pairs_params`."""
    return and_(
        first.in_(bindparam(f"{name}_1", expanding=True)),
        second.in_(bindparam(f"{name}_2", expanding=True)),
        tuple_(first, second).in_(bindparam(name, expanding=True)),
    )


def pairs_params(pairs: Iterable[tuple[Any, Any]], name: str = "keys") -> dict[str, list[Any]]:
    """The parameters of `pairs_in(..., name)` for these pairs."""
    unique = sorted(set(pairs))
    return {name: unique, f"{name}_1": sorted({a for a, _ in unique}), f"{name}_2": sorted({b for _, b in unique})}


# One statement for a batch's keys, taken in key order: two transactions locking overlapping sets cannot deadlock.
_LOCK_KEYS = text("SELECT pg_advisory_xact_lock(k) FROM unnest(:keys) AS k ORDER BY k").bindparams(
    bindparam("keys", type_=postgresql.ARRAY(BigInteger))
)


async def lock_pairs(conn: AsyncConnection, table: str, pairs: Iterable[tuple[str, str]]) -> None:
    """Lock these keys of `table` until the transaction ends, whether or not a row has them yet.

    SELECT ... FOR UPDATE locks only rows that exist: two replicas reading the same absent key both find
    nothing and both insert it, and the second's whole batch fails on the primary key. Taken first, these
    (PostgreSQL advisory) locks make the second wait for the first's commit and then read its row. SQLite
    needs none: it has one writer at a time."""
    if conn.dialect.name != "postgresql":
        return
    keys = sorted({_lock_key(table, a, b) for a, b in pairs})
    if keys:
        await conn.execute(_LOCK_KEYS, {"keys": keys})


def _lock_key(table: str, a: str, b: str) -> int:
    # A stable signed 64-bit key, for pg_advisory_xact_lock(bigint); a collision only makes two keys take turns.
    digest = hashlib.blake2b(f"{table}\0{a}\0{b}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class DatabaseConfigError(ValueError):
    """The database URL names a driver paymesh does not run on."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # isolation_level None hands transaction control to us: the "begin" hook below
    # issues BEGIN IMMEDIATE so a writer takes the lock at the start, not at its
    # first write (where a deferred transaction would fail with SQLITE_BUSY).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=5000")
    _switch_to_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _switch_to_wal(cur: Any, timeout_s: float = 5.0) -> None:
    """WAL is a property of the file: switch it once. Switching needs the file to itself and
    SQLite refuses it at once (no busy wait) while another connection holds a lock, as when
    two processes open a new file together: retry until it is WAL, whoever switched it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if _journal_mode(cur) != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
                cur.fetchall()  # the mode it could take (an in-memory database stays "memory")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.02)  # another connection holds the new file for a moment


def _journal_mode(cur: Any) -> str:
    cur.execute("PRAGMA journal_mode")
    return str(cur.fetchone()[0]).lower()


def _sqlite_begin(conn: Any) -> None:
    # Readers take no lock (WAL); writers take the write lock up front.
    readonly = conn.get_execution_options().get("paymesh_readonly", False)
    conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


# PostgreSQL connections one process keeps open, and the most it opens beyond them under a burst (then a
# transaction waits for one): every replica of every service takes up to twice this from the server's
# max_connections (100 by default), so ten processes fit beside a few tools (PAYMESH_DB_POOL_SIZE).
DEFAULT_POOL_SIZE = 4


def create_engine(url: str, pool_size: int = DEFAULT_POOL_SIZE) -> AsyncEngine:
    """An async engine for `sqlite+aiosqlite:///path`, `sqlite+inloop:///path` or `postgresql+asyncpg://...`;
    connects lazily."""
    parsed = make_url(url)
    if parsed.drivername not in SUPPORTED_DRIVERS:
        raise DatabaseConfigError(
            f"database URL {parsed.render_as_string(hide_password=True)!r} uses driver "
            f"{parsed.drivername!r}; use one of {', '.join(SUPPORTED_DRIVERS)}"
        )
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 5})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


class UnitOfWork:
    """One transaction. Rolls back unless `commit()` is called; runs `after_commit` hooks on success."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.committed = False
        self._after_commit: list[Callable[[], None]] = []

    def after_commit(self, hook: Callable[[], None]) -> None:
        self._after_commit.append(hook)

    async def commit(self) -> None:
        await self.conn.commit()
        self.committed = True
        for hook in self._after_commit:
            hook()


class Database:
    """The engine plus a writer lock: SQLite has one writer per file, so this process queues its
    writers in memory rather than letting them busy-wait on the file lock."""

    def __init__(self, url: str, metadata: MetaData, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.url = url
        self.metadata = metadata
        self.engine = create_engine(url, pool_size)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    async def create_schema(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(self.metadata.create_all)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """A write transaction: `async with db.unit_of_work() as uow: ...; await uow.commit()`."""
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self.engine.connect() as conn:
            await conn.begin()
            uow = UnitOfWork(conn)
            try:
                yield uow
            finally:
                if not uow.committed:
                    await conn.rollback()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only connection; under WAL it does not wait for the writer."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(paymesh_readonly=True)
            yield conn
            await conn.rollback()

    async def dispose(self) -> None:
        await self.engine.dispose()
