"""Process management of the mesh: a nats-server (or a cluster of them) and the services as child processes.

`Mesh` starts, kills, restarts and stops them, one or several replicas per service, on SQLite files or
on a PostgreSQL database per service; `paymesh up` (`Launcher`), the e2e tests and `paymesh demo` all
run the mesh through it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paymesh.chassis import jetstream
from paymesh.chassis.auth.keys import ApiKey
from paymesh.chassis.auth.pepper import load_pepper
from paymesh.chassis.config import CA_ENV, CLIENT_AUTH_ENV, ConfigError, db_url, grpc_addr, metrics_addr
from paymesh.chassis.nats_creds import OPERATOR_CREDS_ENV, CredentialsError, NatsCredentials
from paymesh.chassis.tls import CLIENT_CERT_ENV, CLIENT_KEY_ENV, ClientTls, channel
from paymesh.ops import mesh_file
from paymesh.ops.addresses import REPLICA_PORT_STEP, bind_host, dial_addr, grpc_target, replica_addr, split_addr
from paymesh.ops.credentials import (
    API_KEY_ENV,
    DEV_KEY_FILE,
    GATEWAY_ACCEPTS,
    KeyFile,
    MeshCredentials,
    ensure_dev_key,
    ensure_operator_key,
    platform_env,
)
from paymesh.ops.databases import DEFAULT_PREFIX, DatabaseSetupError, ensure_databases, shown, without_password
from paymesh.ops.nats_auth import MeshUsers, mesh_users, operator_credentials
from paymesh.ops.nats_setup import ensure_shared
from paymesh.ops.natsserver import NatsCluster, NatsServer, NatsServerError, free_port, port_is_free
from paymesh.ops.services import NAMES, SPECS, spec
from paymesh.ops.tls import MeshTls, ensure_mesh_tls
from webhook_svc.service import ALLOW_PRIVATE_ENV

# gateway_mock first: payment_svc calls it, and nothing calls the others at start.
START_ORDER = NAMES
DEFAULT_NATS_PORT = 4222
START_TIMEOUT_S = 30.0
# A service drains its consumers and NATS connection on SIGTERM (PAYMESH_SHUTDOWN_GRACE_S, 5 s by default).
STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 20
# How often a waiting coroutine looks at whether a child process has exited.
EXIT_POLL_S = 0.05
# R3 streams on a cluster: with one node down, a majority (2 of 3) still stores and acknowledges.
MAX_STREAM_REPLICAS = 3
# Where `paymesh up` keeps its nats-server (or each node of a cluster, n1, n2, ...) under the data dir.
NATS_DIR = "nats"
NATS_CLUSTER_DIR = "nats-cluster"
# Reconnect quickly while a service is still binding its port, instead of gRPC's 1 s+ backoff.
HEALTH_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class LaunchError(Exception):
    """The mesh could not start or a process failed; the message says which and what to change."""


class StopRequested(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived."""


def replica_name(service: str, replica: int) -> str:
    """`order_svc` for the first replica (what a one-replica mesh has always called it), `order_svc#2` after."""
    return service if replica == 1 else f"{service}#{replica}"


@dataclass
class Child:
    """One service process (one replica of a service) and where to find it."""

    service: str
    addr: str
    db_url: str
    log_path: Path
    process: subprocess.Popen[bytes]
    replica: int = 1
    metrics_addr: str | None = None  # where it serves /metrics (None: `off`)

    @property
    def name(self) -> str:
        return replica_name(self.service, self.replica)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def describe_exit(self) -> str:
        return (
            f"{self.name} (PID {self.process.pid}) {exit_status(self.process.returncode)}; "
            f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )


def exit_status(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"  (log unreadable: {err})"
    tail = text.splitlines()[-lines:] or ["(empty)"]
    return "\n".join(f"  {line}" for line in tail)


def child_env(env: Mapping[str, str], data_dir: Path) -> dict[str, str]:
    """The environment every child gets: the caller's, with the data dir made absolute."""
    out = dict(env)
    out["PAYMESH_DATA_DIR"] = str(data_dir)
    # Logs go to files; unbuffered so a crash leaves its last lines in them.
    out.setdefault("PYTHONUNBUFFERED", "1")
    return out


def first_metrics_addr(service: str, env: Mapping[str, str]) -> str | None:
    """Where the first replica of `service` serves /metrics (`<SVC>_METRICS_ADDR`, else its gRPC port + 1000)."""
    return metrics_addr(spec(service), dict(env))[0]


def check_service_ports(
    env: Mapping[str, str], services: Iterable[str] = START_ORDER, replicas: Mapping[str, int] | None = None
) -> None:
    """Every replica's gRPC and metrics ports: well-formed, distinct and free, or LaunchError naming the variable."""
    seen: dict[int, str] = {}
    for service in services:
        prefix = spec(service).env_prefix
        listens = [(f"{prefix}_GRPC_ADDR", grpc_addr(spec(service), dict(env)), "")]
        if (metrics := first_metrics_addr(service, env)) is not None:
            listens.append((f"{prefix}_METRICS_ADDR", metrics, " metrics"))
        for variable, first, what in listens:
            try:
                split_addr(first)
            except ValueError:
                raise LaunchError(f"{service}: {variable}={first!r} is not host:port") from None
            for replica in range(1, (replicas or {}).get(service, 1) + 1):
                name, addr = replica_name(service, replica), replica_addr(first, replica)
                host, port = split_addr(addr)
                if port > 65535:
                    raise LaunchError(f"{name}{what}: port {port} is past 65535; set {variable} to a lower port")
                if port in seen:
                    step = f" (replica r listens on its port + {REPLICA_PORT_STEP}·(r−1))" if replicas else ""
                    raise LaunchError(f"{name}{what} and {seen[port]} are both set to port {port}; set {variable} "
                                      f"to another address{step}")
                seen[port] = f"{name}{what}"
                if not port_is_free(port, bind_host(host)):
                    raise LaunchError(f"{name}{what}: {addr} is in use; set {variable} to another address")


def choose_nats_port(env: Mapping[str, str], say: Callable[[str], None]) -> int:
    """PAYMESH_NATS_PORT if set (it must be free), else 4222, else any free port."""
    raw = env.get("PAYMESH_NATS_PORT")
    if raw:
        if not raw.isdigit():
            raise LaunchError(f"PAYMESH_NATS_PORT={raw!r} is not a port number")
        if not port_is_free(int(raw)):
            raise LaunchError(f"nats-server: 127.0.0.1:{raw} is in use; set PAYMESH_NATS_PORT to another port")
        return int(raw)
    if port_is_free(DEFAULT_NATS_PORT):
        return DEFAULT_NATS_PORT
    port = free_port()
    say(
        f"port {DEFAULT_NATS_PORT} is in use, so the embedded nats-server takes port {port} "
        "(set PAYMESH_NATS_URL to use a running server instead)"
    )
    return port


def start_nats(data_dir: Path, port: int, authorization: dict[str, Any] | None = None) -> NatsServer:
    nats = NatsServer(data_dir / NATS_DIR, port=port, log_file=data_dir / "logs" / "nats-server.log",
                      authorization=authorization)
    try:
        return nats.start()
    except NatsServerError as err:
        raise LaunchError(str(err)) from None


def spawn(service: str, env: Mapping[str, str], logs: Path, replica: int = 1) -> Child:
    """Start one replica of `service`; its address and database are what `env` says."""
    log_path = logs / f"{replica_name(service, replica)}.log"
    # Appended to: a restarted service continues the log of the one it replaces.
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", service],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C at the terminal reaches only the launcher, which stops
            # the services before the nats-server they drain into.
            start_new_session=True,
        )
    finally:
        os.close(log_fd)  # the child holds its own copy
    return Child(
        service=service,
        addr=grpc_addr(spec(service), dict(env)),
        db_url=db_url(spec(service), dict(env)),
        log_path=log_path,
        process=process,
        replica=replica,
        metrics_addr=metrics_addr(spec(service), dict(env))[0],
    )


async def wait_exited(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """True once `process` has exited, False if it still runs at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while process.poll() is None:
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(EXIT_POLL_S)  # polling the process table, under a deadline
    return True


async def wait_serving(service: str, addr: str, tls: ClientTls | None = None) -> None:
    """Return once the overall health ("") of `service` is SERVING; the caller holds the deadline. `tls`: dial
    TLS, verified against its CA."""
    request = health_pb2.HealthCheckRequest(service="")
    async with channel(dial_addr(addr), tls, options=HEALTH_CHANNEL_OPTIONS) as health:
        stub = health_pb2_grpc.HealthStub(health)
        while True:
            try:
                reply = await stub.Check(request, timeout=2.0, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise LaunchError(
                        f"{service}: health check on {addr} failed: {err.code().name} {err.details()}"
                    ) from None
            await asyncio.sleep(0.1)  # NOT_SERVING yet: ask the server again, under the caller's deadline


def say(line: str) -> None:
    print(line, flush=True)


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Mesh:
    """NATS (one embedded nats-server, an embedded cluster, or the one PAYMESH_NATS_URL names) and the
    services as child processes, `replicas` of each.

    Replicas of a service share its database and its durable consumers (the chassis makes that safe:
    inbox primary key, row locks, one outbox relay by lease); each listens on its own address,
    the first on `<SVC>_GRPC_ADDR`, replica r on that port + 100·(r−1), and is named `order_svc`,
    `order_svc#2`, … in `children`, `kill`, `restart` and the table. `nats_nodes` > 1 starts that
    many routed nats-servers (`NatsCluster`) and sets `PAYMESH_STREAM_REPLICAS` (R3 unless set);
    `postgres_url` creates a database per service on that server (`<database_prefix><service>`) and
    points each service at its own, unless its `<SVC>_DB_URL` is set. `tls` makes a local CA and a certificate
    per service under `<data dir>/tls/` (paymesh.ops.tls) and runs every hop on TLS, with client certificates
    required when PAYMESH_TLS_CLIENT_AUTH=require; without it, TLS variables in `env` are passed on as they are.

    Holds no event loop state (plain `Popen` handles), so a mesh started in one loop can be
    killed, restarted and stopped from another: a test session starts it once, each test drives it.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        data_dir: Path,
        *,
        start_timeout: float = START_TIMEOUT_S,
        services: Iterable[str] = START_ORDER,
        replicas: int | Mapping[str, int] = 1,
        nats_nodes: int = 1,
        postgres_url: str | None = None,
        database_prefix: str = DEFAULT_PREFIX,
        tls: bool = False,
        out: Callable[[str], None] = say,
        err: Callable[[str], None] = warn,
    ) -> None:
        self.env = child_env(env, data_dir)
        # A mesh on this machine sends webhooks to receivers on it (`paymesh webhooks listen`): loopback allowed.
        self.env.setdefault(ALLOW_PRIVATE_ENV, "true")
        self.data_dir = data_dir
        self.logs = data_dir / "logs"
        self.start_timeout = start_timeout
        self.services = tuple(services)
        counts = replicas if isinstance(replicas, Mapping) else dict.fromkeys(self.services, replicas)
        self.replicas = {s: int(counts.get(s, 1)) for s in self.services}
        if bad := {s: n for s, n in self.replicas.items() if n < 1}:
            raise LaunchError(f"replicas must be at least 1: {bad}")
        if nats_nodes < 1:
            raise LaunchError(f"a NATS cluster needs at least one node, not {nats_nodes}")
        self.nats_nodes = nats_nodes
        self.postgres_url = postgres_url
        self.database_prefix = database_prefix
        self.children: dict[str, Child] = {}
        self.nats: NatsServer | None = None
        self.cluster: NatsCluster | None = None
        self.say = out
        self.warn = err
        self.stopped = False
        # Made (or found) in the data dir once NATS is up, before any service starts.
        self.credentials = MeshCredentials()
        self.dev_key: KeyFile | None = None
        self.dev_key_made = False
        # The NATS users of a NATS this mesh starts (paymesh.ops.nats_auth), and the one its own tools connect
        # as: the operator's (of the NATS it started, else PAYMESH_NATS_CREDS or the data dir's, else none).
        self.nats_users: MeshUsers | None = None
        self.nats_creds: NatsCredentials | None = None
        self.tls = tls
        # The files `tls` made (None without it), and what the mesh's own clients dial with (from the env).
        self.tls_files: MeshTls | None = None
        self.client_tls: ClientTls | None = None

    @property
    def nats_url(self) -> str:
        return self.env["PAYMESH_NATS_URL"]

    def nats_options(self) -> dict[str, Any]:
        """The keyword arguments of `nats.connect` that sign a tool in as the mesh's operator user."""
        return self.nats_creds.connect_options() if self.nats_creds is not None else {}

    @property
    def nats_servers(self) -> list[NatsServer]:
        """The nats-servers this mesh started (none when PAYMESH_NATS_URL names a running one)."""
        if self.cluster is not None:
            return list(self.cluster.nodes)
        return [self.nats] if self.nats is not None else []

    def addr(self, service: str, replica: int = 1) -> str:
        """The address a client dials for `service` (its replica `replica`)."""
        return dial_addr(replica_addr(grpc_addr(spec(service), self.env), replica))

    def addrs(self, service: str) -> list[str]:
        """Every replica's address, first replica first."""
        return [self.addr(service, r) for r in range(1, self.replicas.get(service, 1) + 1)]

    def database(self, service: str) -> str:
        """The store of `service` (every replica's), as an operator's tool reads it: without its password."""
        return without_password(db_url(spec(service), self.env, shared=self.replicas.get(service, 1) > 1))

    def metrics_addrs(self, service: str) -> list[str]:
        """Where each replica serves /metrics, first replica first (none when `<SVC>_METRICS_ADDR=off`)."""
        first = first_metrics_addr(service, self.env)
        if first is None:
            return []
        return [dial_addr(replica_addr(first, r)) for r in range(1, self.replicas.get(service, 1) + 1)]

    def target(self, service: str) -> str:
        """One gRPC target for all replicas of `service` (see `grpc_target`)."""
        return grpc_target(self.addrs(service))

    def replicas_of(self, service: str) -> list[Child]:
        return [c for c in self.children.values() if c.service == service]

    def child(self, name: str, replica: int = 1) -> Child:
        """A child by name (`order_svc`, `order_svc#2`), or by service and replica."""
        return self.children[name if replica == 1 else replica_name(name, replica)]

    def replica_env(self, service: str, replica: int) -> dict[str, str]:
        """The environment of one replica: its own gRPC address; payment_svc dials every gateway replica,
        its own-numbered one first, so the payment replicas spread their charges and fail over."""
        env = dict(self.env)
        env[f"{spec(service).env_prefix}_GRPC_ADDR"] = replica_addr(grpc_addr(spec(service), self.env), replica)
        if (metrics := first_metrics_addr(service, self.env)) is not None:
            env[f"{spec(service).env_prefix}_METRICS_ADDR"] = replica_addr(metrics, replica)
        env[f"{spec(service).env_prefix}_DB_URL"] = db_url(spec(service), self.env, shared=self.replicas[service] > 1)
        if self.nats_users is not None:
            env.update(self.nats_users.env_of(spec(service)))  # its own NATS user, and no one else's
        if self.tls_files is not None:
            pair = self.tls_files.services[service]
            env[f"{spec(service).env_prefix}_TLS_CERT"] = str(pair.cert)
            env[f"{spec(service).env_prefix}_TLS_KEY"] = str(pair.key)
        gateways = self.addrs("gateway_mock") if "gateway_mock" in self.replicas else []
        if service == "payment_svc" and len(gateways) > 1 and not self.env.get("PAYMENT_SVC_GATEWAY_ADDR"):
            first = (replica - 1) % len(gateways)
            env["PAYMENT_SVC_GATEWAY_ADDR"] = grpc_target(gateways[first:] + gateways[:first])
        return env

    async def start(self, stop: asyncio.Event | None = None) -> Mesh:
        """Start everything and return once every replica is SERVING; raise LaunchError naming what failed."""
        check_service_ports(self.env, self.services, self.replicas)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.ensure_tls()
        if self.postgres_url:
            await self.create_databases(self.postgres_url)
        if not self.env.get("PAYMESH_NATS_URL"):
            await self.start_nats()
        elif self.nats_nodes > 1:
            raise LaunchError("PAYMESH_NATS_URL names a running NATS; unset it to start an embedded cluster")
        if stop is not None and stop.is_set():
            raise StopRequested
        await self.ensure_credentials()
        for service in self.services:
            for replica in range(1, self.replicas[service] + 1):
                child = spawn(service, self.replica_env(service, replica), self.logs, replica)
                self.children[child.name] = child
        await self.wait_serving(list(self.children), stop)
        return self

    def ensure_tls(self) -> None:
        """With `tls`: the local CA and certificates, and the variables that make every hop TLS. Then, with or
        without it, what the mesh's own clients (health checks, MeshClient) dial with."""
        if self.tls:
            hosts = {s: split_addr(grpc_addr(spec(s), self.env))[0] for s in self.services}
            self.tls_files = ensure_mesh_tls(self.data_dir, hosts)
            self.env[CA_ENV] = str(self.tls_files.ca)
            # What a tool shows under mTLS; each service shows its own certificate (replica_env).
            self.env[CLIENT_CERT_ENV] = str(self.tls_files.tools.cert)
            self.env[CLIENT_KEY_ENV] = str(self.tls_files.tools.key)
        try:
            self.client_tls = ClientTls.from_env(self.env)
        except ConfigError as err:
            raise LaunchError(str(err)) from None

    async def create_databases(self, server_url: str) -> None:
        variables = {s: f"{spec(s).env_prefix}_DB_URL" for s in self.services}
        wanted = [s for s in self.services if not self.env.get(variables[s])]
        try:
            urls = await ensure_databases(server_url, wanted, self.database_prefix)
        except DatabaseSetupError as err:
            raise LaunchError(str(err)) from None
        for service, url in urls.items():
            self.env[variables[service]] = url
        if urls:
            self.say(f"PostgreSQL databases ready on {shown(server_url)}: {', '.join(sorted(urls.values()))}")

    async def ensure_credentials(self) -> None:
        """The platform key both sides of the bank get, the development merchant's key and an operator key,
        in the data dir (mode 0600) and the mesh's key bucket; the services hash with the same pepper.
        First, as the operator, what the services bind but may not create: the DLQ stream and the bucket."""
        try:
            self.env.update(platform_env(self.env, self.data_dir))
            pepper = load_pepper(self.env, self.data_dir)
            if self.nats_users is None:  # a NATS this mesh did not start: its operator, if it has users
                self.nats_creds = operator_credentials(self.env, self.data_dir)
        except (ConfigError, CredentialsError) as err:
            raise LaunchError(str(err)) from None
        replicas = int(self.env.get("PAYMESH_STREAM_REPLICAS") or 1)
        try:
            nc = await jetstream.connect(self.nats_url.split(","), "paymesh-up", credentials=self.nats_creds,
                                         timeout=self.start_timeout)
        except ConnectionError as err:
            raise LaunchError(str(err)) from None
        try:
            await ensure_shared(nc.jetstream(), replicas)
            self.dev_key, self.dev_key_made = await ensure_dev_key(nc, pepper, self.data_dir, replicas)
            operator = await ensure_operator_key(nc, pepper, self.data_dir, replicas)
        finally:
            await nc.close()
        self.credentials = MeshCredentials(api_key=self.dev_key.api_key, operator_key=operator.api_key,
                                           platform_key=ApiKey(self.env[GATEWAY_ACCEPTS]), tls=self.client_tls)

    async def start_nats(self) -> None:
        # Least privilege on the bus: a user per service and one for the operator's tools, seeds kept in the data dir.
        try:
            self.nats_users = mesh_users(self.data_dir, SPECS)
        except CredentialsError as err:
            raise LaunchError(str(err)) from None
        self.nats_creds = self.nats_users.operator
        authorization = self.nats_users.authorization
        # Starting blocks until each server's health endpoint answers: off the loop, so a signal
        # meanwhile is handled.
        if self.nats_nodes == 1:
            port = choose_nats_port(self.env, self.say)
            self.nats = await asyncio.to_thread(start_nats, self.data_dir, port, authorization)
            self.env["PAYMESH_NATS_URL"] = self.nats.url
            self.say(f"nats-server is up at {self.nats.url}")
            return
        # Assigned before it starts: `stop` then stops the nodes that did start if another fails.
        self.cluster = NatsCluster(self.data_dir / NATS_CLUSTER_DIR, size=self.nats_nodes, authorization=authorization)
        try:
            await asyncio.to_thread(self.cluster.start)
        except NatsServerError as err:
            raise LaunchError(str(err)) from None
        self.env["PAYMESH_NATS_URL"] = self.cluster.url
        self.env.setdefault("PAYMESH_STREAM_REPLICAS", str(min(self.nats_nodes, MAX_STREAM_REPLICAS)))
        self.say(f"nats-server cluster of {self.nats_nodes} nodes is up at {self.cluster.url}")

    async def wait_serving(self, services: Iterable[str], stop: asyncio.Event | None = None) -> None:
        """Wait until each named child is SERVING; raise if one dies, fails its check, or the deadline passes."""
        children = [self.children[name] for name in services]
        pending = {asyncio.create_task(wait_serving(c.name, c.addr, self.client_tls)): c for c in children}
        stopped = asyncio.create_task(stop.wait()) if stop is not None else None
        deadline = asyncio.get_running_loop().time() + self.start_timeout
        try:
            while pending:
                if dead := [c for c in pending.values() if not c.running]:
                    raise LaunchError(dead[0].describe_exit())
                if stopped is not None and stopped.done():
                    raise StopRequested
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise LaunchError(self.not_serving_message(list(pending.values())))
                # Short waits: a child that dies never answers its health check, so look at it often.
                done, _ = await asyncio.wait(pending, timeout=min(remaining, 0.2), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del pending[task]
                    task.result()  # raises the LaunchError of a failed health check
        finally:
            if stopped is not None:
                stopped.cancel()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def not_serving_message(self, pending: list[Child]) -> str:
        parts = [f"{c.name} at {c.addr}: last lines of {c.log_path}:\n{log_tail(c.log_path)}" for c in pending]
        names = ", ".join(c.name for c in pending)
        return f"not SERVING within {self.start_timeout:.0f}s: {names}\n" + "\n".join(parts)

    def dead(self) -> list[Child]:
        return [c for c in self.children.values() if not c.running]

    def dead_nats(self) -> list[NatsServer]:
        return [n for n in self.nats_servers if n.process is not None and n.process.poll() is not None]

    def nats_died(self) -> bool:
        return bool(self.dead_nats())

    async def wait_failure(self, stop: asyncio.Event) -> None:
        """Return when `stop` is set; raise LaunchError when a child or a nats-server dies first."""
        while not stop.is_set():
            if dead := self.dead():
                raise LaunchError(dead[0].describe_exit())
            if self.nats_died():
                raise LaunchError(self.nats_exit_message())
            try:
                # Process exits are polled (no loop-bound child watcher, see the class docstring).
                await asyncio.wait_for(stop.wait(), timeout=0.2)
            except TimeoutError:
                pass

    def nats_exit_message(self) -> str:
        server = self.dead_nats()[0]
        assert server.process is not None
        log = server.log_file or server.store_dir / "nats-server.log"
        return (
            f"nats-server {server.name} (PID {server.process.pid}) {exit_status(server.process.returncode)}; "
            f"last lines of {log}:\n{log_tail(log)}"
        )

    async def kill(self, service: str, *, replica: int = 1) -> None:
        """SIGKILL one service replica, as a crash: no graceful shutdown, whatever was in flight is cut."""
        child = self.child(service, replica)
        if child.running:
            child.process.kill()
        if not await wait_exited(child.process, STOP_GRACE_S):
            raise LaunchError(f"{child.name} (PID {child.process.pid}) survived SIGKILL")

    async def terminate(self, service: str, grace: float = STOP_GRACE_S, *, replica: int = 1) -> None:
        """SIGTERM one service replica (graceful stop), SIGKILL if it outlives `grace`."""
        await self.stop_children([self.child(service, replica)], grace)

    async def restart(self, service: str, env: Mapping[str, str] | None = None, *, replica: int = 1) -> Child:
        """Stop a service replica if it runs, start it again on the same address and store, wait until SERVING.

        `env` adds or overrides variables for the new process only.
        """
        old = self.child(service, replica)
        if old.running:
            await self.stop_children([old], STOP_GRACE_S)
        new = spawn(old.service, {**self.replica_env(old.service, old.replica), **(env or {})}, self.logs, old.replica)
        self.children[new.name] = new
        await self.wait_serving([new.name])
        return new

    def nats_server(self, name: str | None = None) -> NatsServer:
        """The embedded nats-server, or the cluster node whose server name is `name` (`paymesh-n1`, …)."""
        if self.cluster is not None and name is not None:
            return self.cluster.node(name)
        servers = self.nats_servers
        if not servers or (name is not None and servers[0].name != name) or len(servers) > 1:
            raise KeyError(name)
        return servers[0]

    async def kill_nats(self, name: str | None = None) -> None:
        """SIGKILL a nats-server (a cluster node by server name): a crash, unsynced work and all."""
        await asyncio.to_thread(self.nats_server(name).kill)

    async def restart_nats(self, name: str | None = None) -> None:
        """Start a killed or stopped nats-server again on its ports and store; return once it is ready."""
        try:
            await asyncio.to_thread(self.nats_server(name).restart)
        except NatsServerError as err:
            raise LaunchError(str(err)) from None

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM every child, SIGKILL what outlives the grace period, then stop the nats-servers."""
        if self.stopped:
            return
        self.stopped = True
        await self.stop_children(list(self.children.values()), grace)
        # Popen.wait blocks; off the loop so a signal arriving now is still handled.
        await asyncio.gather(*(asyncio.to_thread(server.stop) for server in self.nats_servers))

    async def stop_children(self, children: list[Child], grace: float) -> None:
        running = [c for c in children if c.running]
        for child in running:
            try:
                child.process.terminate()
            except ProcessLookupError:
                pass
        await asyncio.gather(*(wait_exited(c.process, grace) for c in running))
        for child in running:
            if child.running:
                self.warn(f"{child.name} (PID {child.process.pid}) still running {grace:.0f}s after SIGTERM: SIGKILL")
                child.process.kill()
                await wait_exited(child.process, grace)
            elif child.process.returncode not in (0, -signal.SIGTERM):
                # -SIGTERM: stopped before it had installed its handler, which is what was asked.
                self.warn(f"{child.name} {exit_status(child.process.returncode)} while stopping; see {child.log_path}")

    def table(self) -> list[str]:
        """The lines `paymesh up` prints: each replica's gRPC and metrics addresses, PID and store, then every
        NATS node and the logs."""
        rows = [("service", "gRPC address", "metrics", "PID", "database")]
        rows += [(c.name, c.addr, f"http://{c.metrics_addr}/metrics" if c.metrics_addr else "off",
                  str(c.process.pid), shown(c.db_url)) for c in self.children.values()]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[4]
            for row in rows
        ]
        if self.cluster is not None:
            size, replicas = len(self.cluster.nodes), self.env.get("PAYMESH_STREAM_REPLICAS", "1")
            lines.append(f"NATS  {self.cluster.url}  (JetStream cluster of {size}, streams R{replicas})")
            for node in self.cluster.nodes:
                pid = node.process.pid if node.process is not None else "-"
                lines.append(f"  {node.name}  {node.url}  (nats-server PID {pid}, store {node.store_dir})")
        elif self.nats is not None and self.nats.process is not None:
            lines.append(
                f"NATS  {self.nats.url}  (nats-server PID {self.nats.process.pid}, store {self.nats.store_dir})"
            )
        else:
            lines.append(f"NATS  {self.env['PAYMESH_NATS_URL']}  (external)")
        if self.nats_users is not None:
            lines.append(f"NATS users: one per service and the operator's, each to its own subjects; seeds in "
                         f"{self.nats_users.operator.path.parent} (tools: {OPERATOR_CREDS_ENV}="
                         f"{self.nats_users.operator.path})")
        lines.append(f"logs  {self.logs}")
        lines += self.tls_lines()
        if self.dev_key is not None:
            kept = self.data_dir / DEV_KEY_FILE
            made = "made now" if self.dev_key_made else "kept"
            lines.append(f"API key of the development merchant {self.dev_key.merchant_id} ({made}, in {kept}):")
            lines.append(f"  export {API_KEY_ENV}={self.dev_key.api_key.reveal()}")
        return lines


    def tls_lines(self) -> list[str]:
        """Where the CA is, for `grpcurl -cacert`, and the variables a client of this mesh sets."""
        if self.tls_files is None:
            return []
        ca, tools = self.tls_files.ca, self.tls_files.tools
        mutual = (self.env.get(CLIENT_AUTH_ENV) or "").lower() == "require"
        client = f" -cert {tools.cert} -key {tools.key}" if mutual else ""
        first = "order_svc" if "order_svc" in self.services else self.services[0]
        lines = [f"TLS   on every hop{', client certificates required (mTLS)' if mutual else ''}; CA {ca}",
                 f"  grpcurl -cacert {ca}{client} {self.addr(first)} list",
                 f"  export {CA_ENV}={ca}"]
        if mutual:
            lines.append(f"  export {CLIENT_CERT_ENV}={tools.cert} {CLIENT_KEY_ENV}={tools.key}")
        return lines


class Launcher:
    """`paymesh up`: starts the mesh, watches it, and stops all of it on a signal or on the first death."""

    def __init__(
        self, env: Mapping[str, str], data_dir: Path, start_timeout: float = START_TIMEOUT_S, **mesh_options: Any
    ) -> None:
        self.mesh = Mesh(env, data_dir, start_timeout=start_timeout, **mesh_options)
        self.stop_signal = asyncio.Event()
        self.wrote: Path | None = None

    async def run(self) -> int:
        self.install_signal_handlers()
        try:
            await self.mesh.start(self.stop_signal)
            for line in self.mesh.table():
                say(line)
            # The other `paymesh` commands find this mesh by it (paymesh.ops.mesh_file); gone on a clean stop.
            self.wrote = mesh_file.write(
                self.mesh.data_dir, {s: self.mesh.addrs(s) for s in self.mesh.services},
                {s: spec(s).env_prefix for s in self.mesh.services}, self.mesh.env,
                self.mesh.data_dir / DEV_KEY_FILE if self.mesh.dev_key is not None else None,
                metrics={s: self.mesh.metrics_addrs(s) for s in self.mesh.services},
                databases={s: self.mesh.database(s) for s in self.mesh.services})
            say("paymesh is up")
            say("Ctrl-C to stop")
            await self.mesh.wait_failure(self.stop_signal)
            return 0
        except StopRequested:
            say("stopped before every service was up")
            return 0
        except LaunchError as err:
            warn(f"paymesh: {err}")
            return 1
        finally:
            if self.wrote is not None:
                mesh_file.remove(self.mesh.data_dir)
            await self.mesh.stop()
            if self.mesh.children or self.mesh.nats_servers:
                say("paymesh stopped")

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self.on_signal, signum)

    def on_signal(self, signum: int) -> None:
        if not self.stop_signal.is_set():
            say(f"{signal.Signals(signum).name}: stopping")
        self.stop_signal.set()


def up(
    data_dir: str | None = None,
    nats_port: int | None = None,
    env: Mapping[str, str] | None = None,
    *,
    replicas: int = 1,
    cluster: int = 1,
    postgres_url: str | None = None,
    tls: bool = False,
    mtls: bool = False,
) -> int:
    """Run the mesh until a signal or a failure; the exit status for the `paymesh up` command.

    `postgres_url` (else $PAYMESH_POSTGRES_URL): a PostgreSQL server URL; each service gets its own
    database there, `paymesh_<service>` ($PAYMESH_POSTGRES_DB_PREFIX changes the prefix). `tls`: every hop on
    TLS with a local CA; `mtls`: that, and client certificates required (PAYMESH_TLS_CLIENT_AUTH=require).
    """
    env = dict(os.environ if env is None else env)
    if mtls:
        env[CLIENT_AUTH_ENV] = "require"
    if nats_port is not None:
        env["PAYMESH_NATS_PORT"] = str(nats_port)
    resolved = Path(data_dir or env.get("PAYMESH_DATA_DIR") or ".paymesh").resolve()
    try:
        launcher = Launcher(
            env,
            resolved,
            # Each more process to start on the same cores takes its share of the start.
            start_timeout=START_TIMEOUT_S * max(1, replicas),
            replicas=replicas,
            nats_nodes=cluster,
            postgres_url=postgres_url or env.get("PAYMESH_POSTGRES_URL") or None,
            database_prefix=env.get("PAYMESH_POSTGRES_DB_PREFIX") or DEFAULT_PREFIX,
            tls=tls or mtls,
        )
    except LaunchError as err:
        warn(f"paymesh: {err}")
        return 2
    return asyncio.run(launcher.run())
