"""End to end: `paymesh up` starts nats-server and every service as processes, and stops all of them."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from paymesh.chassis.nats_creds import public_key
from paymesh.ops.databases import drop_databases
from paymesh.ops.nats_auth import CREDS_DIR, authorization, operator_options, users
from paymesh.ops.services import NAMES, SPECS
from paymesh.order.v1 import order_service_pb2, order_service_pb2_grpc
from tests.conftest import PG_ADMIN_URL
from tests.e2e.harness import mesh_env

UP = [sys.executable, "-m", "paymesh.ops.cli", "up"]
UP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0


@dataclass
class Launch:
    """One `paymesh up` process and everything it printed (stdout and stderr, merged)."""

    process: subprocess.Popen[str]
    data_dir: Path
    lines: list[str] = field(default_factory=list)
    fresh: queue.Queue[str | None] = field(default_factory=queue.Queue)
    reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self.fresh.put(line)
        self.fresh.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {text!r} within {timeout:.0f}s; output:\n{self.output}")
            try:
                line = self.fresh.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"exited ({self.process.wait()}) before {text!r}; output:\n{self.output}")
            if text in line:
                return

    def wait_exit(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout:.0f}s later; output:\n{self.output}")
        assert self.reader is not None
        self.reader.join(10)  # EOF: the children log to files and do not hold the launcher's stdout
        return code

    def table_pids(self) -> dict[str, int]:
        """service replica (`order_svc`, `order_svc#2`) and "nats-server" (or each cluster node's name) -> PID,
        from the table printed before `paymesh is up`."""
        pids: dict[str, int] = {}
        for line in self.lines:
            if line == "paymesh is up":
                break
            row = re.fullmatch(r"([\w#]+)\s+(\S+)\s+(\S+)\s+(\d+)\s+(\S+)", line)
            if row and row[1].split("#")[0] in NAMES:
                pids[row[1]] = int(row[4])
            if found := re.search(r"nats-server PID (\d+)", line):
                pids["nats-server" if line.startswith("NATS") else line.split()[0]] = int(found[1])
        return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_using(data_dir: Path) -> list[int]:
    """PIDs whose command line or environment names `data_dir`: whatever `up` started for this test."""
    mark = str(data_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "cmdline").read_bytes() or mark in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def health_status(addr: str) -> int:
    with grpc.insecure_channel(addr) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10, wait_for_ready=True
        )
    return int(reply.status)


@pytest.fixture
def launches() -> Iterator[list[Launch]]:
    """Every launch of the test; whatever is still running afterwards is killed, by PID."""
    started: list[Launch] = []
    yield started
    for launch in started:
        if launch.process.poll() is None:
            launch.process.kill()
            launch.process.wait(10)
        for pid in {*launch.table_pids().values(), *processes_using(launch.data_dir)}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def up(launches: list[Launch], tmp_path: Path) -> Iterator[tuple[Launch, dict[str, str]]]:
    """`paymesh up` in a subprocess, its own data dir, free ports; returned once it has printed `paymesh is up`."""
    env = mesh_env(tmp_path / "data")
    launch = start(launches, env, tmp_path)
    launch.wait_for("paymesh is up", UP_TIMEOUT_S)
    yield launch, env


def start(launches: list[Launch], env: dict[str, str], cwd: Path, *flags: str) -> Launch:
    process = subprocess.Popen(
        [*UP, *flags], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    launch = Launch(process, Path(env["PAYMESH_DATA_DIR"]))
    launches.append(launch)
    launch.reader = threading.Thread(target=launch.read, daemon=True)
    launch.reader.start()
    return launch


def assert_nothing_left(launch: Launch, pids: dict[str, int]) -> None:
    still = {name: pid for name, pid in pids.items() if alive(pid)}
    assert not still, f"still running after `up` exited: {still}\n{launch.output}"
    assert not processes_using(launch.data_dir), launch.output


def assert_bus_authorization(data_dir: Path, conf: Path) -> None:
    """The server config admits exactly the mesh's users, by the public keys of the seed files `up` wrote
    (one per user, mode 0600, in a directory only its owner reads), each with the permissions nats_auth gives."""
    creds = data_dir / CREDS_DIR
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    seeds = {user: creds / f"{user}.nk" for user in users(SPECS)}
    for path in seeds.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    keys = {user: public_key(path.read_text().strip()) for user, path in seeds.items()}
    written = json.loads(conf.read_text())
    assert written["authorization"] == authorization(keys, SPECS)
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    if "cluster" in written:  # the routes authenticate too, or joining as a route would go around the users
        route = written["cluster"]["authorization"]
        assert all(f"{route['user']}:{route['password']}@" in url for url in written["cluster"]["routes"])


async def refused_without_credentials(url: str) -> bool:
    try:
        nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=0)
    except nats.errors.Error:
        return True
    await nc.close()
    return False


@pytest.mark.timeout(120)
def test_up_serves_every_service_and_sigterm_stops_all(up: tuple[Launch, dict[str, str]]) -> None:
    launch, env = up
    pids = launch.table_pids()
    assert set(pids) == {*NAMES, "nats-server"}, launch.output
    assert f"nats://127.0.0.1:{env['PAYMESH_NATS_PORT']}" in launch.output
    assert_bus_authorization(launch.data_dir, launch.data_dir / "nats" / "nats-server.conf")
    assert asyncio.run(refused_without_credentials(f"nats://127.0.0.1:{env['PAYMESH_NATS_PORT']}"))
    for service, prefix in ((s.name, s.env_prefix) for s in SPECS):
        addr = env[f"{prefix}_GRPC_ADDR"]
        assert addr in launch.output
        assert f"sqlite+inloop:///{launch.data_dir / service}.db" in launch.output
        assert health_status(addr) == health_pb2.HealthCheckResponse.SERVING, service
        # Its metrics, where the table says, in Prometheus text (the health checks above already counted).
        metrics = f"http://{env[f'{prefix}_METRICS_ADDR']}/metrics"
        assert metrics in launch.output
        with urllib.request.urlopen(metrics, timeout=5) as response:
            text = response.read().decode()
        families = {f.name for f in text_string_to_metric_families(text)}
        assert {"grpc_server_handled", "paymesh_consumer_num_pending", "process_cpu_seconds"} <= families, service

    launch.process.send_signal(signal.SIGTERM)

    assert launch.wait_exit(STOP_TIMEOUT_S) == 0, launch.output
    assert "paymesh stopped" in launch.output
    assert_nothing_left(launch, pids)


def printed_key(launch: Launch) -> str:
    found = re.search(r"export PAYMESH_API_KEY=(sk_mesh_\w+)", launch.output)
    assert found, launch.output
    return found[1]


def get_order_code(addr: str, key: str | None) -> grpc.StatusCode:
    metadata = [("authorization", f"Bearer {key}")] if key else []
    with grpc.insecure_channel(addr) as channel:
        try:
            order_service_pb2_grpc.OrderServiceStub(channel).GetOrder(
                order_service_pb2.GetOrderRequest(order_id=f"ord_{uuid.uuid4().hex}"), metadata=metadata, timeout=10)
        except grpc.RpcError as err:
            return err.code()  # type: ignore[no-any-return,attr-defined]  # a grpc.Call
    raise AssertionError("an unknown order was found")


@pytest.mark.timeout(180)
def test_up_makes_a_development_key_once_and_keeps_it(launches: list[Launch], tmp_path: Path) -> None:
    env = mesh_env(tmp_path / "data")
    first = start(launches, env, tmp_path)
    first.wait_for("paymesh is up", UP_TIMEOUT_S)
    key = printed_key(first)
    assert "made now" in first.output
    addr = env["ORDER_SVC_GRPC_ADDR"]
    assert get_order_code(addr, key) == grpc.StatusCode.NOT_FOUND
    assert get_order_code(addr, None) == grpc.StatusCode.UNAUTHENTICATED
    data = first.data_dir
    for name in ("key_pepper", "platform_key", "dev_key.json", "operator_key.json"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    logs = "\n".join(p.read_text(errors="replace") for p in (data / "logs").glob("*.log"))
    assert key not in logs and (data / "platform_key").read_text().strip() not in logs, "a secret in a service log"
    first.process.send_signal(signal.SIGINT)
    assert first.wait_exit(STOP_TIMEOUT_S) == 0, first.output

    again = start(launches, env, tmp_path)
    again.wait_for("paymesh is up", UP_TIMEOUT_S)
    assert printed_key(again) == key and "kept" in again.output, again.output
    assert get_order_code(addr, key) == grpc.StatusCode.NOT_FOUND
    again.process.send_signal(signal.SIGINT)
    assert again.wait_exit(STOP_TIMEOUT_S) == 0, again.output


@pytest.mark.timeout(120)
def test_a_service_that_dies_stops_the_mesh(up: tuple[Launch, dict[str, str]]) -> None:
    launch, _ = up
    pids = launch.table_pids()

    os.kill(pids["inventory_svc"], signal.SIGKILL)

    assert launch.wait_exit(STOP_TIMEOUT_S) != 0, launch.output
    assert f"inventory_svc (PID {pids['inventory_svc']}) was killed by SIGKILL" in launch.output
    assert_nothing_left(launch, pids)


@pytest.mark.timeout(60)
def test_taken_port_names_the_service_and_starts_nothing(launches: list[Launch], tmp_path: Path) -> None:
    env = mesh_env(tmp_path / "data")
    addr = env["PAYMENT_SVC_GRPC_ADDR"]
    host, port = addr.rsplit(":", 1)
    with socket.socket() as holder:
        holder.bind((host, int(port)))
        holder.listen()
        launch = start(launches, env, tmp_path)
        code = launch.wait_exit(30)

    assert code != 0, launch.output
    assert f"payment_svc: {addr} is in use; set PAYMENT_SVC_GRPC_ADDR" in launch.output
    assert_nothing_left(launch, launch.table_pids())


@pytest.mark.timeout(120)
def test_a_service_failing_at_start_is_named_and_the_rest_stopped(launches: list[Launch], tmp_path: Path) -> None:
    env = mesh_env(tmp_path / "data")
    # SQLAlchemy refuses an unknown dialect: order_svc exits at start, the others may already be up.
    env["ORDER_SVC_DB_URL"] = "nosuchdb://nowhere"
    launch = start(launches, env, tmp_path)

    assert launch.wait_exit(UP_TIMEOUT_S) != 0, launch.output
    assert re.search(r"order_svc \(PID \d+\) exited with code [1-9]", launch.output), launch.output
    assert "paymesh is up" not in launch.output
    assert_nothing_left(launch, {})


async def stream_replicas(url: str, data_dir: Path) -> dict[str, int]:
    nc = await nats.connect(servers=url.split(","), connect_timeout=5,
                            **operator_options({"PAYMESH_DATA_DIR": str(data_dir)}))
    try:
        js = nc.jetstream(timeout=10)
        return {name: (await js.stream_info(name)).config.num_replicas for name in ("ORDER", "INVENTORY", "PAYMENT")}
    finally:
        await nc.close()


@pytest.mark.timeout(150)
def test_up_with_replicas_a_cluster_and_postgres_serves_and_stops(launches: list[Launch], tmp_path: Path) -> None:
    """`paymesh up --replicas 2 --cluster 3 --postgres URL`: eight services on their own databases, three
    nats-servers holding R3 streams, every one of them in the table; SIGTERM stops them all."""
    env = mesh_env(tmp_path / "data", replicas=2)
    prefix = f"paymesh_e2e_up_{uuid.uuid4().hex[:8]}_"
    env["PAYMESH_POSTGRES_DB_PREFIX"] = prefix
    try:
        launch = start(launches, env, tmp_path, "--replicas", "2", "--cluster", "3", "--postgres", PG_ADMIN_URL)
        launch.wait_for("paymesh is up", UP_TIMEOUT_S)
        pids = launch.table_pids()
        nodes = {"paymesh-n1", "paymesh-n2", "paymesh-n3"}
        assert set(pids) == {*NAMES, *(f"{s}#2" for s in NAMES), *nodes}, launch.output
        nats_line = next(line for line in launch.lines if line.startswith("NATS  "))
        assert "JetStream cluster of 3, streams R3" in nats_line, launch.output
        assert asyncio.run(stream_replicas(nats_line.split()[1], launch.data_dir)) == {
            "ORDER": 3, "INVENTORY": 3, "PAYMENT": 3}
        for node in sorted((launch.data_dir / "nats-cluster").glob("n*")):
            assert_bus_authorization(launch.data_dir, node / "nats-server.conf")
        for service, variable in ((s.name, s.env_prefix) for s in SPECS):
            host, first = env[f"{variable}_GRPC_ADDR"].rsplit(":", 1)
            for addr in (f"{host}:{first}", f"{host}:{int(first) + 100}"):
                assert addr in launch.output
                assert health_status(addr) == health_pb2.HealthCheckResponse.SERVING, (service, addr)
            assert f"postgresql+asyncpg://postgres@127.0.0.1:5432/{prefix}{service}" in launch.output

        launch.process.send_signal(signal.SIGTERM)

        assert launch.wait_exit(STOP_TIMEOUT_S) == 0, launch.output
        assert "paymesh stopped" in launch.output
        assert_nothing_left(launch, pids)
    finally:
        asyncio.run(drop_databases(PG_ADMIN_URL, NAMES, prefix))


def bare_env(data_dir: Path) -> dict[str, str]:
    """What a second terminal has: no address, port or key of the mesh; only where its data dir is."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH")
    return {**{k: v for k, v in os.environ.items() if k in keep}, "PAYMESH_DATA_DIR": str(data_dir)}


@pytest.mark.timeout(180)
def test_a_running_up_is_found_by_its_mesh_file_and_the_demo_leaves_it_running(
    up: tuple[Launch, dict[str, str]], tmp_path: Path
) -> None:
    launch, env = up
    written = json.loads((launch.data_dir / "mesh.json").read_text())
    assert stat.S_IMODE((launch.data_dir / "mesh.json").stat().st_mode) == 0o600
    assert written["pid"] == launch.process.pid
    assert {name: addrs[0] for name, addrs in written["services"].items()} == {
        s.name: env[f"{s.env_prefix}_GRPC_ADDR"] for s in SPECS}
    assert written["variables"]["PAYMESH_NATS_URL"] == f"nats://127.0.0.1:{env['PAYMESH_NATS_PORT']}"
    assert "sk_mesh_" not in json.dumps(written) and "pl_mesh_" not in json.dumps(written), "no secret in it"

    demo = subprocess.run([sys.executable, "-m", "paymesh.ops.cli", "demo"], env=bare_env(launch.data_dir),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "using the running mesh" in demo.stdout and "webhook deliveries" in demo.stdout, demo.stdout
    assert launch.process.poll() is None, "the demo left the mesh running"
    for s in SPECS:
        assert health_status(env[f"{s.env_prefix}_GRPC_ADDR"]) == health_pb2.HealthCheckResponse.SERVING

    launch.process.send_signal(signal.SIGTERM)
    assert launch.wait_exit(STOP_TIMEOUT_S) == 0, launch.output
    assert not (launch.data_dir / "mesh.json").exists(), "a clean stop removes it"
