"""The container health probe against a real gRPC health server: exit 0 only when SERVING."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from paymesh.ops import healthcheck
from paymesh.ops.natsserver import free_port

pytestmark = pytest.mark.timeout(30)

ORDERS = "paymesh.order.v1.OrderService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    def __init__(self) -> None:
        self.servicer = health.HealthServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.addr = f"127.0.0.1:{self.port}"

    def set(self, service: str, status: int) -> None:
        self.servicer.set(service, status)


@pytest.fixture
def health_server() -> Iterator[Health]:
    h = Health()
    h.server.start()
    try:
        yield h
    finally:
        h.server.stop(None)


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the probe as the compose health check does: `python -m paymesh.ops.healthcheck ...`."""
    return subprocess.run(
        [sys.executable, "-m", "paymesh.ops.healthcheck", *args],
        capture_output=True, text=True, timeout=20, check=False,
    )


def test_serving_server_exits_0_as_a_module(health_server: Health) -> None:
    health_server.set("", SERVING)
    done = probe(health_server.addr)
    assert done.returncode == 0, done.stderr
    assert "SERVING" in done.stdout


def test_not_serving_exits_1(health_server: Health) -> None:
    health_server.set("", NOT_SERVING)
    done = probe(health_server.addr)
    assert done.returncode == 1
    assert "NOT_SERVING" in done.stderr


def test_named_service_is_checked_by_name(health_server: Health) -> None:
    health_server.set("", SERVING)
    health_server.set(ORDERS, NOT_SERVING)
    assert healthcheck.main([health_server.addr, ORDERS]) == 1
    health_server.set(ORDERS, SERVING)
    assert healthcheck.main([health_server.addr, ORDERS]) == 0
    # A service the server has never heard of is NOT_FOUND, not healthy.
    assert healthcheck.main([health_server.addr, "paymesh.nope.v1.Nope"]) == 1


def test_wildcard_bind_address_is_dialled_on_loopback(health_server: Health) -> None:
    health_server.set("", SERVING)
    assert healthcheck.main([f"0.0.0.0:{health_server.port}"]) == 0
    assert healthcheck.main([f":{health_server.port}"]) == 0


def test_nothing_listening_exits_1_quickly() -> None:
    started = time.monotonic()
    serving, seen = healthcheck.check(f"127.0.0.1:{free_port()}")
    assert not serving
    assert "UNAVAILABLE" in seen
    assert time.monotonic() - started < healthcheck.TIMEOUT_S + 1


def test_a_server_that_never_answers_times_out_after_2s() -> None:
    # A socket that completes TCP handshakes (the kernel does) but never speaks HTTP/2.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        started = time.monotonic()
        serving, seen = healthcheck.check(f"127.0.0.1:{mute.getsockname()[1]}")
        elapsed = time.monotonic() - started
    assert not serving
    assert "DEADLINE_EXCEEDED" in seen or "UNAVAILABLE" in seen, seen
    assert healthcheck.TIMEOUT_S - 0.5 < elapsed < healthcheck.TIMEOUT_S + 1.5, elapsed


@pytest.mark.parametrize("args", [[], ["a", "b", "c"], ["no-port-here"], ["host:notaport"], ["--help"]])
def test_bad_arguments_exit_1_with_usage(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(args) == 1
    assert "usage: python -m paymesh.ops.healthcheck" in capsys.readouterr().err
