"""A new SQLite file that another connection holds when a service opens it still ends up in WAL.

Switching a file to WAL needs it to itself, and SQLite refuses the switch at once (no busy
wait) while another connection holds the write lock: two replicas migrating a new file
together hit this (the `database is locked` flake CI showed). The chassis retries until
the file is free or already switched.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import MetaData

from paymesh.chassis.db import Database

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("driver", ["sqlite+aiosqlite", "sqlite+inloop"])
async def test_opening_a_new_file_another_connection_is_writing_waits_and_switches_it(
    tmp_path: Path, driver: str
) -> None:
    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE other (x INTEGER)")  # the file exists, in rollback-journal mode
    holder.execute("BEGIN IMMEDIATE")  # another process's writer, mid-transaction
    release = threading.Timer(1.0, holder.rollback)
    release.start()
    db = Database(f"{driver}:///{path}", MetaData())
    started = time.monotonic()
    try:
        async with db.unit_of_work() as uow:
            await uow.conn.exec_driver_sql("CREATE TABLE opened (pid INTEGER)")
            await uow.commit()
    finally:
        release.join()
        await db.dispose()
        holder.close()
    assert time.monotonic() - started >= 0.5, "it waited for the other writer"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM opened").fetchone()[0] == 0
