"""`paymesh status` against running meshes: every replica SERVING with its release, every durable of every saga
stream, empty outboxes and DLQ, the breaker closed and exit 0 on a healthy mesh; a killed replica DOWN, its durables
falling behind and a dead letter counted, exit 1; no mesh at all, exit 2 in one line; the command finding a mesh by
the mesh.json of `paymesh up`, once, as JSON, and watching."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import nats
import pytest

from paymesh.chassis.metrics import Metrics
from paymesh.ops import mesh_file
from paymesh.ops.launcher import Mesh
from paymesh.ops.natsserver import free_port
from paymesh.ops.services import NAMES, SPECS, spec
from paymesh.ops.status import (
    DOWN,
    BreakerState,
    ReplicaStatus,
    Status,
    add_status,
    collect,
    format_text,
    read_metrics,
)
from tests.e2e.harness import Clients, eventually, mesh_env

pytestmark = pytest.mark.timeout(90)

DURABLES = {
    ("ORDER", "inventory_svc-order"), ("ORDER", "payment_svc-order"), ("ORDER", "webhook_svc-order"),
    ("INVENTORY", "order_svc-inventory"), ("INVENTORY", "payment_svc-inventory"),
    ("PAYMENT", "order_svc-payment"), ("PAYMENT", "inventory_svc-payment"), ("PAYMENT", "webhook_svc-payment"),
}
KEYS = {
    "services": {"service", "replica", "addr", "health", "version", "metrics_addr"},
    "consumers": {"stream", "durable", "pending", "ack_pending", "redelivered"},
    "outboxes": {"service", "unsent", "oldest_s"},
    "dlq": {"service", "durable", "count"},
    "breaker": {"replica", "state"},
}
MESH_VARIABLES = tuple(f"{s.env_prefix}_" for s in SPECS) + ("PAYMESH_",)


async def status_of(mesh: Mesh) -> Status:
    """As the CLI sees it, fed from the Mesh object (the test Mesh writes no mesh.json)."""
    return await collect(mesh.env, {s: mesh.addrs(s) for s in mesh.services},
                         {s: mesh.metrics_addrs(s) for s in mesh.services})


def lag(status: Status, durable: str) -> int:
    return next(c.pending for c in status.consumers if c.durable == durable)


def check_schema(data: dict[str, object]) -> None:
    assert set(data) == {"healthy", "attention", "nats", "services", "consumers", "outboxes", "dlq", "breaker",
                         "webhooks"}
    for section, keys in KEYS.items():
        rows = data[section]
        assert isinstance(rows, list) and rows, section
        assert all(set(row) == keys for row in rows), (section, rows)
    assert set(data["nats"]) == {"servers", "error"}  # type: ignore[arg-type]
    assert set(data["webhooks"]) == {"pending"}  # type: ignore[arg-type]
    assert json.loads(json.dumps(data)) == data


def command(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="paymesh")
    add_status(parser.add_subparsers(dest="command"))
    return parser.parse_args(["status", *argv])


def run(args: argparse.Namespace) -> int:
    return int(args.handler(args))


def environment_of_nothing(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process's environment as `env` says for the mesh's variables, whatever the caller had set."""
    for name in [n for n in os.environ if n.startswith(MESH_VARIABLES)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(MESH_VARIABLES):
            monkeypatch.setenv(name, value)


async def test_a_healthy_mesh_shows_every_replica_serving_and_exits_0(mesh: Mesh) -> None:
    # The outbox gauges are refreshed every few seconds: wait until they read 0 (the shared mesh may have just
    # placed orders for another test).
    status = await eventually(lambda: status_of(mesh), lambda s: all(o.unsent == 0 for o in s.outboxes), 20,
                              "every outbox relayed")
    assert [(r.service, r.replica, r.addr) for r in status.services] == [
        (s, 1, mesh.addr(s)) for s in mesh.services]
    for replica in status.services:
        assert replica.health == "SERVING", replica
        assert replica.version, replica
        assert replica.metrics_addr == mesh.metrics_addrs(replica.service)[0]
    assert DURABLES <= {(c.stream, c.durable) for c in status.consumers}
    assert {o.service: (o.unsent, o.oldest_s) for o in status.outboxes} == dict.fromkeys(NAMES, (0, 0.0))
    assert {(d.service, d.durable) for d in status.dlq} >= {(d.split("-")[0], d) for _, d in DURABLES}
    assert all(d.count == 0 for d in status.dlq), status.dlq
    assert status.breaker == [BreakerState(1, "closed")]
    assert isinstance(status.webhooks_pending, int)
    assert status.nats_error is None and status.nats_servers
    assert status.attention() == [] and status.healthy and status.exit_status() == 0

    data = status.to_json()
    check_schema(data)
    assert data["healthy"] is True and data["attention"] == []

    text = format_text(status)
    for heading in ("services", "consumers", "outboxes", "DLQ", "breaker", "webhooks"):
        assert f"\n{heading}\n" in f"\n{text}\n", heading
    assert text.endswith("\nhealthy")


async def test_a_killed_replica_is_down_its_durables_fall_behind_and_a_dead_letter_counts(new_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh: Mesh = await new_mesh()
    await mesh.kill("payment_svc")
    status = await status_of(mesh)
    health = {r.service: r.health for r in status.services}
    assert health == {**dict.fromkeys(NAMES, "SERVING"), "payment_svc": DOWN}
    down = next(r for r in status.services if r.service == "payment_svc")
    assert down.version is None
    assert status.breaker == [BreakerState(1, None)]
    assert status.exit_status() == 1
    assert f"payment_svc DOWN at {mesh.addr('payment_svc')}" in status.attention()

    async with Clients(mesh).session() as clients:
        sku = await clients.put_product(5)
        await clients.create_order([(sku, 1, 500)])
    behind = await eventually(lambda: status_of(mesh),
                              lambda s: lag(s, "payment_svc-order") >= 1 and lag(s, "payment_svc-inventory") >= 1,
                              20, "payment_svc's durables behind on ORDER and INVENTORY")
    assert behind.exit_status() == 1

    # A dead letter, as payment_svc's consumer leaves one when it gives up (as payment_svc's NATS user: only it
    # publishes on its DLQ subjects): counted for its durable, and exit 1 for it alone.
    assert mesh.nats_users is not None
    payment_user = mesh.nats_users.credentials["payment_svc"].connect_options()
    nc = await nats.connect(mesh.nats_url.split(","), **payment_user)
    try:
        await nc.jetstream().publish("dlq.payment_svc.payment_svc-order", b"{}", stream="DLQ")
    finally:
        await nc.close()
    await mesh.restart("payment_svc")
    status = await status_of(mesh)
    assert all(r.health == "SERVING" for r in status.services), status.services
    counts = {d.durable: d.count for d in status.dlq}
    assert counts["payment_svc-order"] == 1 and sum(counts.values()) == 1, counts
    assert status.attention() == ["DLQ: 1 dead-lettered by payment_svc-order"]
    assert status.exit_status() == 1
    assert re.search(r"\n  payment_svc\s+payment_svc-order\s+1\n", format_text(status)), format_text(status)


@pytest.mark.parametrize("nats_named", [True, False], ids=["nats-url-of-nothing", "empty-data-dir"])
def test_no_mesh_exits_2_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str], nats_named: bool) -> None:
    env = mesh_env(tmp_path)  # free ports for every service, nothing listening
    if nats_named:
        env["PAYMESH_NATS_URL"] = f"nats://127.0.0.1:{free_port()}"
    environment_of_nothing(monkeypatch, env)
    assert run(command("--data-dir", str(tmp_path))) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("paymesh: no mesh running:") and err.count("\n") == 1, err
    assert not (tmp_path / "webhook_svc.db").exists()  # nothing made where a store was looked for


def test_the_command_finds_the_mesh_by_its_mesh_file(mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    assert mesh.nats_creds is not None
    # What `paymesh up` writes, in a data dir of its own: the operator's NATS user named by its path.
    mesh_file.write(data_dir, {s: mesh.addrs(s) for s in mesh.services},
                    {s: spec(s).env_prefix for s in mesh.services},
                    {**mesh.env, "PAYMESH_NATS_CREDS": str(mesh.nats_creds.path)}, None,
                    metrics={s: mesh.metrics_addrs(s) for s in mesh.services},
                    databases={s: mesh.database(s) for s in mesh.services})
    environment_of_nothing(monkeypatch, {})

    assert run(command("--data-dir", str(data_dir), "--json")) == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    check_schema(data)
    assert [(r["service"], r["addr"], r["health"]) for r in data["services"]] == [
        (s, mesh.addr(s), "SERVING") for s in mesh.services]
    assert isinstance(data["webhooks"]["pending"], int)
    assert data["nats"]["error"] is None and data["healthy"] is True

    assert run(command("--data-dir", str(data_dir), "--json", "--watch", "0.1", "--count", "2")) == 0
    screens = capsys.readouterr().out.splitlines()
    assert len(screens) == 2 and all(json.loads(s)["healthy"] for s in screens), screens

    assert run(command("--data-dir", str(data_dir))) == 0
    text = capsys.readouterr().out
    assert "\nconsumers\n" in text and text.rstrip().endswith("healthy"), text


def test_an_open_breaker_read_from_metrics_needs_attention() -> None:
    metrics = Metrics("payment_svc")
    metrics.breaker_state("gateway", "open")
    scraped = read_metrics(metrics.text().decode())
    assert scraped.breaker == "open" and scraped.version and scraped.unsent == 0
    status = Status([ReplicaStatus("payment_svc", 1, "127.0.0.1:1", "SERVING", scraped.version, None)],
                    breaker=[BreakerState(1, scraped.breaker)], nats_servers="nats://127.0.0.1:4222")
    assert status.attention() == ["breaker of payment_svc replica 1 open"] and status.exit_status() == 1
