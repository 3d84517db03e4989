"""The mesh as processes for e2e tests: nats-server and every service on free ports, SQLite or PostgreSQL.

`mesh` is one mesh per backend for the whole session (orders, skus and customers are unique per
test, so tests share it); before each test it revives any service a test killed and resets the
gateway's faults. `new_mesh` starts a mesh of the test's own, for settings such as a short saga
timeout. Tests run on SQLite; those marked `both_backends` on PostgreSQL too
(`PAYMESH_E2E_BACKENDS=sqlite,postgres` runs every test on both).
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from paymesh.ops.launcher import START_TIMEOUT_S, Mesh
from paymesh.ops.nats_auth import CREDS_DIR
from paymesh.ops.services import NAMES
from tests.conftest import PG_ADMIN_URL, _async_url
from tests.e2e.events import Bus
from tests.e2e.harness import ERRORS_SEEN, SECRETS, Clients, mesh_env

DEFAULT_BACKENDS = os.environ.get("PAYMESH_E2E_BACKENDS", "sqlite").split(",")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_backends: an e2e test run on SQLite and on PostgreSQL")
    config.addinivalue_line("markers", "backends(*names): an e2e test run on exactly these backends")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    if only := metafunc.definition.get_closest_marker("backends"):
        backends = list(only.args)
    elif metafunc.definition.get_closest_marker("both_backends"):
        backends = ["sqlite", "postgres"]
    else:
        backends = DEFAULT_BACKENDS
    metafunc.parametrize("backend", backends, indirect=True, scope="session")


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class PgDatabases:
    """One fresh PostgreSQL database per service, dropped afterwards."""

    def __init__(self) -> None:
        self.names: list[str] = []

    async def create(self) -> dict[str, str]:
        urls = {}
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
        try:
            for service in NAMES:
                name = f"paymesh_e2e_{service}_{uuid.uuid4().hex[:8]}"
                await conn.execute(f'CREATE DATABASE "{name}"')
                self.names.append(name)
                urls[service] = _async_url(PG_ADMIN_URL, name)
        finally:
            await conn.close()
        return urls

    async def drop(self) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
        try:
            for name in self.names:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


# Every mesh the session started, for the secret scan at its end.
LAUNCHED: list[Mesh] = []


def mesh_secrets(mesh: Mesh) -> set[str]:
    """The secrets a mesh holds: its keys, its pepper, and whatever the credentials files under its data dir keep."""
    keys = mesh.credentials
    found = {k.reveal() for k in (keys.api_key, keys.operator_key, keys.platform_key) if k is not None}
    pepper = mesh.data_dir / "key_pepper"
    if pepper.exists():
        found.add(pepper.read_text().strip())
    found |= {seed.read_text().strip() for seed in (mesh.data_dir / CREDS_DIR).glob("*.nk")}  # the NATS users'
    return found


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_logs() -> Iterator[None]:
    """After the session (its meshes log at DEBUG): no service log line and no refusal a test received holds a
    secret, whole or past its display prefix; no service log line holds a payment token."""
    yield
    secrets = set(SECRETS)
    for mesh in LAUNCHED:
        secrets |= mesh_secrets(mesh)
    leaks = []
    for mesh in LAUNCHED:
        for log in sorted(mesh.logs.glob("*.log")):
            text = log.read_text(errors="replace")
            leaks += [f"{log}: {s[:12]}…" for s in secrets if s in text or s[12:] in text]
            if log.name != "nats-server.log" and (token := re.search(r"tok_[0-9A-Za-z]", text)):
                leaks.append(f"{log}: a payment token ({token[0]}…)")
    for message in ERRORS_SEEN:
        leaks += [f"a refusal: {s[:12]}…" for s in secrets if s in message or s[12:] in message]
    assert not leaks, leaks


async def launch(
    backend: str, data_dir: Path, *, replicas: int = 1, nats_nodes: int = 1, tls: bool = False, **extra_env: str
) -> tuple[Mesh, PgDatabases | None]:
    databases = PgDatabases() if backend == "postgres" else None
    urls = await databases.create() if databases is not None else None
    # DEBUG: the secret scan above reads the most a service ever writes.
    extra_env = {"PAYMESH_LOG_LEVEL": "DEBUG", **extra_env}
    env = mesh_env(data_dir, urls, replicas=replicas, **extra_env)
    # Each more process on the same cores takes its share of the start.
    timeout = START_TIMEOUT_S * max(1, replicas)
    mesh = Mesh(env, data_dir, out=lambda _: None, replicas=replicas, nats_nodes=nats_nodes, start_timeout=timeout,
                tls=tls)
    LAUNCHED.append(mesh)
    try:
        await mesh.start()
    except BaseException:
        await mesh.stop()
        if databases is not None:
            await databases.drop()
        raise
    return mesh, databases


async def shut(mesh: Mesh, databases: PgDatabases | None) -> None:
    await mesh.stop()
    if databases is not None:
        await databases.drop()


@pytest.fixture(scope="session")
def shared_mesh(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    # A loop of its own: the mesh holds no loop state, and each test drives it from the test's loop.
    mesh, databases = asyncio.run(launch(backend, tmp_path_factory.mktemp(f"mesh-{backend}")))
    try:
        yield mesh
    finally:
        asyncio.run(shut(mesh, databases))


@pytest.fixture
async def mesh(shared_mesh: Mesh) -> AsyncIterator[Mesh]:
    """The session's mesh, every service running and the gateway without faults."""
    if dead := [c.name for c in shared_mesh.dead()]:
        for name in dead:
            await shared_mesh.restart(name)
    async with Clients(shared_mesh).session() as clients:
        await clients.configure_gateway(reset=True)
    yield shared_mesh


@pytest.fixture
async def new_mesh(backend: str, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Mesh]]]:
    """`await new_mesh(PAYMESH_SAGA_TIMEOUT_S="3")`: a mesh of the test's own, stopped after it.

    `replicas=2` runs two processes of each service; `nats_nodes=3` an embedded 3-node cluster (R3 streams);
    `tls=True` TLS on every hop (with PAYMESH_TLS_CLIENT_AUTH="require": mTLS)."""
    started: list[tuple[Mesh, PgDatabases | None]] = []

    async def start(*, replicas: int = 1, nats_nodes: int = 1, tls: bool = False, **extra_env: str) -> Mesh:
        data_dir = tmp_path / f"mesh{len(started)}"
        mesh, databases = await launch(backend, data_dir, replicas=replicas, nats_nodes=nats_nodes, tls=tls,
                                       **extra_env)
        started.append((mesh, databases))
        return mesh

    yield start
    for mesh, databases in started:
        await shut(mesh, databases)


@pytest.fixture
async def clients(mesh: Mesh) -> AsyncIterator[Clients]:
    """Stubs of every service on the session's mesh, and the helpers built on them."""
    async with Clients(mesh).session() as clients:
        yield clients


@pytest.fixture
async def bus(mesh: Mesh) -> AsyncIterator[Bus]:
    """A NATS connection to the session's mesh: follow an order's events, read and publish into the streams."""
    async with Bus.connect(mesh.nats_url, **mesh.nats_options()) as bus:
        yield bus
