"""One PostgreSQL database per service under a server URL: what `paymesh up --postgres URL` points the services at."""

from __future__ import annotations

import re
from collections.abc import Iterable

import asyncpg
from sqlalchemy.engine import make_url

DEFAULT_PREFIX = "paymesh_"
# Unquoted-identifier characters only: the name goes into CREATE DATABASE, which takes no parameters.
SAFE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class DatabaseSetupError(Exception):
    """The server could not be reached or a database not created; the message says which and why."""


def database_name(service: str, prefix: str = DEFAULT_PREFIX) -> str:
    name = f"{prefix}{service}"
    if not SAFE_NAME.fullmatch(name):
        raise DatabaseSetupError(f"{name!r} is not a plain database name (lower-case letters, digits, _)")
    return name


def service_url(server_url: str, database: str) -> str:
    """The SQLAlchemy URL of `database` on the server `server_url` names (user, password, host, port kept)."""
    return (
        make_url(server_url)
        .set(drivername="postgresql+asyncpg", database=database)
        .render_as_string(hide_password=False)
    )


def admin_dsn(server_url: str) -> str:
    """`server_url` as asyncpg takes it (no SQLAlchemy driver suffix)."""
    return make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)


def without_password(url: str) -> str:
    """The URL with no password at all (the driver then takes one from PGPASSWORD or ~/.pgpass)."""
    try:
        parsed = make_url(url)
    except Exception:
        return url
    # URL.set() keeps a password given as None; the namedtuple replace drops it.
    return parsed._replace(password=None).render_as_string(hide_password=False) if parsed.password else url


def shown(url: str) -> str:
    """A URL fit to print: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: the service will say so; print it as given
        return url


async def ensure_databases(
    server_url: str, services: Iterable[str], prefix: str = DEFAULT_PREFIX, timeout: float = 10.0
) -> dict[str, str]:
    """Create `<prefix><service>` for each service unless it exists; service -> its SQLAlchemy URL.

    Each service migrates its own schema on start, so an empty database is all it needs.
    """
    names = {service: database_name(service, prefix) for service in services}
    try:
        conn = await asyncpg.connect(admin_dsn(server_url), timeout=timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError) as err:
        raise DatabaseSetupError(f"PostgreSQL at {shown(server_url)} not reachable: {err}") from None
    try:
        for name in names.values():
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                continue
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass  # created meanwhile by another launcher: just as good
            except asyncpg.PostgresError as err:
                raise DatabaseSetupError(f"CREATE DATABASE {name} on {shown(server_url)} failed: {err}") from None
    finally:
        await conn.close()
    return {service: service_url(server_url, name) for service, name in names.items()}


async def drop_databases(server_url: str, services: Iterable[str], prefix: str = DEFAULT_PREFIX) -> None:
    """Drop what `ensure_databases` made (tests: a prefix of their own, dropped afterwards)."""
    conn = await asyncpg.connect(admin_dsn(server_url), timeout=10)
    try:
        for service in services:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database_name(service, prefix)}" WITH (FORCE)')
    finally:
        await conn.close()
