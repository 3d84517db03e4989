"""Fixtures on real parts: a nats-server from the package on a free port, SQLite files, PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from paymesh.chassis import jetstream
from paymesh.ops.nats_setup import ensure_shared
from paymesh.ops.natsserver import NatsServer

# CI and `make test` always have a PostgreSQL here (see .ci/run); tests fail, never skip, without it.
PG_ADMIN_URL = os.environ.get("PAYMESH_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _set_up(server: NatsServer) -> None:
    nc = await jetstream.connect([server.url], "tests-operator")
    try:
        await ensure_shared(nc.jetstream())
    finally:
        await nc.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server (no authorization) as the operator leaves it before the services start: with the
    DLQ stream and the keys' bucket, which services bind but do not create."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        asyncio.run(_set_up(server))
        yield server
    finally:
        server.stop()


async def _create_pg_database() -> str:
    name = f"paymesh_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _async_url(admin_url: str, database: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + database


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """One store per test, on each backend: the same behaviour, proven twice."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    name = await _create_pg_database()
    try:
        yield _async_url(PG_ADMIN_URL, name)
    finally:
        await _drop_pg_database(name)


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll an async or sync predicate until it is truthy; fail with `message` at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)
