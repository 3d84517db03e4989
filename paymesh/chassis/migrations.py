"""Schema migrations: one Alembic history per service, run at start or by `python -m <service> migrate`."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine

from paymesh.chassis.config import db_url
from paymesh.chassis.db import create_engine
from paymesh.chassis.idempotency import requests_table
from paymesh.chassis.inbox import inbox_table
from paymesh.chassis.outbox import outbox_table
from paymesh.chassis.spec import ServiceSpec

Spec = ServiceSpec[Any]

log = logging.getLogger(__name__)

class MigrationError(RuntimeError):
    """The database cannot be brought to this code's schema; the message says why."""


def complete_metadata(metadata: MetaData) -> MetaData:
    """Add the chassis' tables (outbox, inbox, request log) to a service's own; returns the same MetaData."""
    outbox_table(metadata)
    inbox_table(metadata)
    requests_table(metadata)
    return metadata


def service_metadata(spec: Spec) -> MetaData:
    """Everything a service's database holds, as the models say: its spec's tables plus the chassis'."""
    return complete_metadata(spec.metadata())


def version_table(spec: Spec) -> str:
    # One table per service, so two services' histories can share a database (or a schema) safely.
    return f"alembic_version_{spec.name}"


def script_location(spec: Spec) -> Path:
    # __path__ rather than __file__: it is there for an editable install's namespace packages too.
    package = importlib.import_module(spec.migrations)
    return Path(next(iter(package.__path__)))


def script_directory(spec: Spec) -> ScriptDirectory:
    return ScriptDirectory(str(script_location(spec)))


def context_options(spec: Spec) -> dict[str, Any]:
    """The options every MigrationContext of a service uses: the runtime's, the CLI's and the tests'."""
    return {
        "version_table": version_table(spec),
        "target_metadata": service_metadata(spec),
        # SQLite alters a table by copying it; autogenerate must write later revisions that way.
        "render_as_batch": True,
        "compare_type": True,
        "compare_server_default": True,
    }


def head(spec: Spec) -> str | None:
    return script_directory(spec).get_current_head()


def _lock_key(spec: Spec) -> int:
    # A stable signed 64-bit key per service, for pg_advisory_xact_lock(bigint).
    digest = hashlib.blake2b(version_table(spec).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def upgrade_connection(
    conn: Connection, spec: Spec, destination: str = "heads", *, downgrade: bool = False
) -> tuple[str, ...]:
    """Upgrade (or downgrade) inside the caller's transaction; returns the revisions it is at afterwards.
    On PostgreSQL an advisory lock held to the transaction's end makes replicas that start together
    take turns: the second finds the first's work committed and does nothing. On SQLite the
    transaction's BEGIN IMMEDIATE write lock does the same."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(spec)})
    script = script_directory(spec)
    config = Config()
    config.set_main_option("script_location", str(script_location(spec)))

    def steps(revision: Any, _context: MigrationContext) -> Any:
        # What `alembic upgrade` / `alembic downgrade` run.
        if downgrade:
            return script._downgrade_revs(destination, revision)
        return script._upgrade_revs(destination, revision)

    with EnvironmentContext(config, script, fn=steps, destination_rev=destination) as env:
        env.configure(connection=conn, **context_options(spec))
        with env.begin_transaction():
            env.run_migrations()
        return tuple(env.get_context().get_current_heads())


def current_connection(conn: Connection, spec: Spec) -> tuple[str, ...]:
    context = MigrationContext.configure(conn, opts={"version_table": version_table(spec)})
    return tuple(context.get_current_heads())


async def upgrade(engine: AsyncEngine, spec: Spec, destination: str = "heads") -> tuple[str, ...]:
    """Bring a service's database to `destination` (its head by default) in one transaction; returns
    the revisions it is at afterwards."""
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(upgrade_connection, spec, destination)
    except CommandError as exc:
        # Typically a database migrated by a newer release than this one.
        raise MigrationError(f"cannot migrate {spec.name}'s database: {exc}") from exc


async def downgrade(engine: AsyncEngine, spec: Spec, destination: str) -> tuple[str, ...]:
    """Take a service's database back to `destination` ("base" drops everything); for operators and tests."""
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(lambda c: upgrade_connection(c, spec, destination, downgrade=True))
    except CommandError as exc:
        raise MigrationError(f"cannot downgrade {spec.name}'s database: {exc}") from exc


async def current(engine: AsyncEngine, spec: Spec) -> tuple[str, ...]:
    async with engine.connect() as conn:
        return await conn.run_sync(current_connection, spec)


async def migrate(url: str, spec: Spec) -> tuple[str, ...]:
    """What `python -m <service> migrate` does: upgrade to head and close the engine."""
    engine = create_engine(url)
    try:
        return await upgrade(engine, spec)
    finally:
        await engine.dispose()


def run_alembic_env(spec: Spec) -> None:
    """The body of `<service>/migrations/env.py`, for the `alembic` command line (see alembic.ini).
    The services do not go through it: they call `upgrade` on their own engine."""
    # alembic.context exists only while the alembic command runs an env.py.
    from alembic import context

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    url = context.config.get_main_option("sqlalchemy.url") or db_url(spec)
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, **context_options(spec))
        with context.begin_transaction():
            context.run_migrations()
        return

    def run(conn: Connection) -> None:
        context.configure(connection=conn, **context_options(spec))
        with context.begin_transaction():
            context.run_migrations()

    async def online() -> None:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(spec)})
                await conn.run_sync(run)
        finally:
            await engine.dispose()

    asyncio.run(online())
