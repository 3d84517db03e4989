"""`paymesh webhooks listen` as a process against a running mesh: it registers its endpoint, prints each delivery
verified as it arrives (a forged one BAD, answered 400), deletes the endpoint on SIGINT or SIGTERM and exits 0;
with no mesh running it says so in one line and exits non-zero."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import aiohttp
import pytest

from paymesh.ops.launcher import Mesh
from paymesh.ops.natsserver import free_port
from paymesh.webhook.v1 import webhook_service_pb2 as wpb
from tests.e2e.harness import Clients, merchant_key, mesh_env, statuses
from webhook_svc import signing

pytestmark = pytest.mark.timeout(150)

CONFIRMED = statuses("CONFIRMED")
# The command imports the whole mesh's wiring before it listens: slow on a loaded machine.
START_S = 60.0
LINE_S = 30.0


class Listener:
    """A running `paymesh webhooks listen`, its stdout read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def line(self, timeout: float = LINE_S) -> str:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not raw:
            stderr = await self.process.stderr.read() if self.process.stderr is not None else b""
            raise AssertionError(f"the listener ended: {self.lines} {stderr.decode(errors='replace')}")
        self.lines.append(raw.decode().rstrip("\n"))
        return self.lines[-1]

    async def until(self, accept: Callable[[str], bool], timeout: float = LINE_S) -> str:
        deadline = time.monotonic() + timeout
        while not accept(line := await self.line(max(0.1, deadline - time.monotonic()))):
            pass
        return line

    async def stop(self, signum: int) -> tuple[int, str, str]:
        """Send `signum`; the exit status and the rest of stdout and stderr."""
        self.process.send_signal(signum)
        out, err = await asyncio.wait_for(self.process.communicate(), 30)
        return self.process.returncode or 0, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def listening(env: Mapping[str, str], *flags: str) -> AsyncIterator[Listener]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paymesh.ops.cli", "webhooks", "listen", *flags,
        env=dict(env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield Listener(process)
    finally:
        if process.returncode is None:  # a failed test: stop it (this test's own child, by its handle)
            process.kill()
            await process.wait()


async def endpoint_ids(clients: Clients) -> list[str]:
    reply = await clients.webhook.ListEndpoints(wpb.ListEndpointsRequest(), timeout=10)
    return [e.endpoint_id for e in reply.endpoints]


def without_key(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "PAYMESH_API_KEY"}


async def test_json_lines_arrive_verified_and_sigint_deletes_the_endpoint(mesh: Mesh) -> None:
    merchant_id, key = await merchant_key(mesh, f"listen {uuid.uuid4().hex[:6]}")
    env = without_key(mesh.env) | {"PAYMESH_API_KEY": key.reveal()}  # a merchant of this test's own
    async with Clients(mesh, api_key=key, merchant_id=merchant_id).session() as clients, \
            listening(env, "--json") as listener:
        first = json.loads(await listener.line(START_S))
        assert first["listening"].startswith("http://127.0.0.1:") and first["enabled_events"] == ["*"], first
        endpoint_id = first["endpoint_id"]
        assert await endpoint_ids(clients) == [endpoint_id]

        sku = await clients.put_product(5)
        order = await clients.create_order([(sku, 1, 1250)])
        await clients.wait_order(order.order_id, CONFIRMED)
        got = json.loads(await listener.until(lambda line: order.order_id in line))
        assert (got["type"], got["order_id"], got["sequence"]) == ("order.confirmed", order.order_id, 1), got
        assert got["verified"] is True and got["status"] == 200 and got["id"].startswith("evt_"), got
        assert got["latency_ms"] is not None and got["latency_ms"] >= 0 and got["created"], got

        # A delivery signed with another secret: printed BAD, answered 400.
        body = json.dumps({"id": "evt_forged", "type": "order.confirmed", "sequence": 9,
                           "data": {"object": {"orderId": "ord_forged"}}}).encode()
        forged = signing.headers([signing.new_secret()], "evt_forged", int(time.time()), body)
        async with aiohttp.ClientSession() as http, http.post(first["listening"], data=body, headers=forged) as answer:
            assert answer.status == 400
        bad = json.loads(await listener.until(lambda line: "ord_forged" in line))
        assert bad["verified"] is False and bad["status"] == 400 and bad["error"], bad

        status, out, err = await listener.stop(signal.SIGINT)
        assert status == 0, (out, err)
        assert json.loads(out.splitlines()[-1]) == {"deleted": endpoint_id}
        assert await endpoint_ids(clients) == []
        for line in listener.lines + out.splitlines():
            json.loads(line)  # --json: every stdout line is one JSON object


async def test_the_data_dirs_development_key_and_sigterm(mesh: Mesh) -> None:
    port = free_port()
    async with Clients(mesh).session() as clients, \
            listening(without_key(mesh.env), "--port", str(port), "--events", "order.confirmed") as listener:
        first = await listener.line(START_S)
        found = re.match(rf"listening on http://127\.0\.0\.1:{port}/ as webhook endpoint (we_\w+) "
                         r"\(events: order\.confirmed\)", first)
        assert found, first
        endpoint_id = found[1]
        assert endpoint_id in await endpoint_ids(clients)  # the development merchant's, found in the data dir

        sku = await clients.put_product(5)
        order = await clients.create_order([(sku, 1, 1250)])
        await clients.wait_order(order.order_id, CONFIRMED)
        line = await listener.until(lambda line: order.order_id in line)
        assert re.search(rf"order\.confirmed\s+{order.order_id} seq 1\s+latency\s+[\d.]+ ms\s+verified\s+evt_", line)

        status, out, err = await listener.stop(signal.SIGTERM)
        assert status == 0, (out, err)
        assert f"webhook endpoint {endpoint_id} deleted" in out and "SIGTERM" in err
        assert endpoint_id not in await endpoint_ids(clients)


@pytest.mark.timeout(90)
def test_no_running_mesh_is_one_clear_line_and_a_failure(tmp_path: Path) -> None:
    env = mesh_env(tmp_path / "data")  # free ports, nothing listening on them

    done = subprocess.run([sys.executable, "-m", "paymesh.ops.cli", "webhooks", "listen", "--json"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=80)

    assert done.returncode != 0
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "no mesh running" in line and env["WEBHOOK_SVC_GRPC_ADDR"] in line, line
