"""Each service's Alembic history builds exactly the schema its models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from pprint import pformat
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from paymesh.chassis import migrations
from paymesh.chassis.db import create_engine
from paymesh.chassis.service import parse_args
from paymesh.ops.services import NAMES, spec

pytestmark = pytest.mark.timeout(60)

SERVICES = list(NAMES)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def engine(db_url: str) -> Any:
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


def differences(conn: Connection, service: str) -> list[Any]:
    context = MigrationContext.configure(conn, opts=migrations.context_options(spec(service)))
    return compare_metadata(context, migrations.service_metadata(spec(service)))


def schema(conn: Connection, service: str) -> dict[str, Any]:
    """Everything the database says about the service's tables, in a form two databases can be compared by."""
    insp = inspect(conn)
    tables: dict[str, Any] = {}
    for name in sorted(set(insp.get_table_names()) - {migrations.version_table(spec(service))}):
        tables[name] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c.get("default"), c.get("autoincrement"))
                for c in insp.get_columns(name)
            ],
            "pk": insp.get_pk_constraint(name),
            "unique": sorted((sorted(u["column_names"]), u["name"]) for u in insp.get_unique_constraints(name)),
            "indexes": sorted(
                (i["name"], i["column_names"], i["unique"], {k: str(v) for k, v in i["dialect_options"].items()})
                for i in insp.get_indexes(name)
            ),
            "checks": sorted((c["name"], c["sqltext"]) for c in insp.get_check_constraints(name)),
            "foreign_keys": insp.get_foreign_keys(name),
        }
    # The DDL itself as the server keeps it: partial index predicates, defaults, constraint text.
    if conn.dialect.name == "sqlite":
        rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'alembic_version%'"))
    else:
        rows = conn.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                "UNION ALL SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE connamespace = current_schema()::regnamespace"
            )
        )
    ddl = [(n, s) for n, s in rows if not n.startswith("alembic_version")]
    if conn.dialect.name == "sqlite":
        ddl = [(n, sqlite_ddl(s)) for n, s in ddl]
    tables["ddl"] = sorted(ddl, key=lambda row: (row[0], str(row[1])))
    return tables


def sqlite_ddl(sql: str | None) -> Any:
    """A CREATE TABLE as SQLite keeps it, in a form a table rebuilt by Alembic's batch mode (a copy renamed into
    place) compares equal with: the name unquoted, `DEFAULT (x)` as `DEFAULT x`, and its lines as a set (the
    rebuild may order constraints differently; the columns' order is compared through the inspector above)."""
    if sql is None or not sql.startswith("CREATE TABLE"):
        return sql
    head, _, body = sql.partition("(")
    head = head.replace('"', "").strip()
    body = re.sub(r"DEFAULT \(([^()]*)\)", r"DEFAULT \1", body.rstrip().removesuffix(")"))
    return head, sorted(line.strip().rstrip(",") for line in body.splitlines() if line.strip())


async def run(engine: AsyncEngine, fn: Any, *args: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.run_sync(fn, *args)


@pytest.mark.parametrize("service", SERVICES)
async def test_upgrade_from_empty_matches_the_models(engine: AsyncEngine, service: str) -> None:
    heads = await migrations.upgrade(engine, spec(service))
    assert heads == (migrations.head(spec(service)),)

    diff = await run(engine, differences, service)
    assert diff == [], f"{service}: migrations and models differ; write a revision for:\n{pformat(diff)}"

    names = await run(engine, lambda c: set(inspect(c).get_table_names()))
    assert migrations.version_table(spec(service)) in names
    assert "alembic_version" not in names, "each service keeps its own version table"
    assert set(migrations.service_metadata(spec(service)).tables) == names - {migrations.version_table(spec(service))}


@pytest.mark.parametrize("service", SERVICES)
async def test_migrated_schema_is_what_create_all_builds(engine: AsyncEngine, service: str) -> None:
    await migrations.upgrade(engine, spec(service))
    migrated = await run(engine, schema, service)

    assert await migrations.downgrade(engine, spec(service), "base") == ()  # the downgrade drops every table
    assert await run(engine, lambda c: inspect(c).get_table_names()) == [migrations.version_table(spec(service))]
    async with engine.begin() as conn:
        await conn.run_sync(migrations.service_metadata(spec(service)).create_all)
    created = await run(engine, schema, service)

    assert migrated == created


@pytest.mark.parametrize("service", SERVICES)
async def test_upgrade_twice_is_a_no_op(engine: AsyncEngine, service: str) -> None:
    first = await migrations.upgrade(engine, spec(service))
    before = await run(engine, schema, service)
    second = await migrations.upgrade(engine, spec(service))
    assert first == second
    assert await run(engine, schema, service) == before
    query = text(f"SELECT version_num FROM {migrations.version_table(spec(service))}")
    rows = await run(engine, lambda c: c.execute(query).all())
    assert [r[0] for r in rows] == list(first)


async def test_replicas_starting_together_migrate_once(db_url: str) -> None:
    """Two engines are two replicas: the advisory lock (PostgreSQL) or the write lock (SQLite) makes them take
    turns, so neither fails on the other's half-created tables."""
    engines = [create_engine(db_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrations.upgrade(e, spec("payment_svc")) for e in engines))
        assert set(results) == {(migrations.head(spec("payment_svc")),)}
        assert await run(engines[0], differences, "payment_svc") == []
    finally:
        for e in engines:
            await e.dispose()


async def test_a_database_from_a_newer_release_is_refused(engine: AsyncEngine) -> None:
    await migrations.upgrade(engine, spec("order_svc"))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version_order_svc SET version_num = 'f00dfeedbeef'"))
    with pytest.raises(migrations.MigrationError, match="order_svc.*f00dfeedbeef"):
        await migrations.upgrade(engine, spec("order_svc"))


def test_migrate_command_needs_only_the_database(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    env = {
        **os.environ,
        "INVENTORY_SVC_DB_URL": f"sqlite+aiosqlite:///{path}",
        # Nothing listens here: `migrate` must not reach for NATS or bind a port.
        "PAYMESH_NATS_URL": "nats://127.0.0.1:1",
        "PAYMESH_DATA_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "inventory_svc", "migrate"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert migrations.head(spec("inventory_svc")) in done.stdout
    with sqlite3.connect(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"products", "reservations", "outbox", "inbox", "idempotent_requests"} <= names
    assert "alembic_version_inventory_svc" in names


@pytest.mark.parametrize("service", SERVICES)
def test_alembic_command_line_sees_no_pending_change(tmp_path: Path, service: str) -> None:
    """`alembic -n <service> ...` (env.py) works, and autogenerate finds nothing the history lacks."""
    env = {**os.environ, f"{service.upper()}_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"}
    alembic = [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "-n", service]
    for command in (["upgrade", "head"], ["check"]):
        done = subprocess.run([*alembic, *command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"alembic {' '.join(command)}: {done.stdout}{done.stderr}"


def test_service_arguments() -> None:
    assert (parse_args("order_svc", []).command, parse_args("order_svc", []).no_migrate) == ("serve", False)
    assert parse_args("order_svc", ["--no-migrate"]).no_migrate
    assert parse_args("order_svc", ["migrate"]).command == "migrate"
    with pytest.raises(SystemExit):
        parse_args("order_svc", ["migrat"])
