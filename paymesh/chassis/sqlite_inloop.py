"""SQLite for the async engine without a thread hop: stdlib sqlite3 called on the event loop.

`sqlite+inloop:///path` runs each statement directly on the loop (microseconds) instead of
handing it to aiosqlite's worker thread and back. The loop is held while SQLite waits for a
lock, so this suits one process per database file (the embedded default, where the chassis
already queues a process's writers in memory); several processes on one SQLite file should
use `sqlite+aiosqlite` or, better, PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import pool
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL
from sqlalchemy.util.concurrency import await_


async def _yield() -> None:
    """Completes at once; awaiting it tells SQLAlchemy's greenlet bridge this driver is async."""


class _Cursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def execute(self, operation: str, parameters: Any = ()) -> Any:
        result = self._cursor.execute(operation, parameters)
        await_(_yield())
        return result

    def executemany(self, operation: str, seq: Any) -> Any:
        result = self._cursor.executemany(operation, seq)
        await_(_yield())
        return result

    async def _async_soft_close(self) -> None:
        """The async result's hook before it hands rows to sync code: sqlite3 rows stay readable."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __iter__(self) -> Any:
        return iter(self._cursor)


class _Connection:
    def __init__(self, connection: sqlite3.Connection) -> None:
        object.__setattr__(self, "_connection", connection)

    def cursor(self, *args: Any) -> _Cursor:
        return _Cursor(self._connection.cursor(*args))

    def commit(self) -> None:
        self._connection.commit()
        await_(_yield())

    def rollback(self) -> None:
        self._connection.rollback()
        await_(_yield())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._connection, name, value)


class _DBAPI:
    """sqlite3's module interface, with connections adapted for the async engine."""

    def __init__(self) -> None:
        self.sqlite = sqlite3

    def connect(self, *args: Any, **kwargs: Any) -> _Connection:
        kwargs["check_same_thread"] = False
        return _Connection(sqlite3.connect(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(sqlite3, name)


class SQLiteDialect_inloop(SQLiteDialect_pysqlite):  # noqa: N801 - SQLAlchemy's dialect naming
    driver = "inloop"
    is_async = True
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> Any:
        return _DBAPI()

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        return pool.AsyncAdaptedQueuePool

    def get_driver_connection(self, connection: Any) -> Any:
        return connection._connection


dialect = SQLiteDialect_inloop
