"""End to end, `paymesh trace` and `paymesh stuck` on meshes of real processes: a confirmed order's history across the
services in time order, an order held up by a killed payment_svc (what it waits for, found by stuck, followed until it
confirms), a healthy mesh with nothing stuck, and the one-line refusals (an unknown order, no mesh)."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from order_svc.domain import OrderStatus
from paymesh.ops.launcher import Mesh
from paymesh.ops.natsserver import free_port
from paymesh.ops.services import SPECS
from paymesh.ops.stuck import NoMesh, stuck
from paymesh.ops.trace import KINDS, Entry, Trace, trace
from tests.e2e.harness import Clients, eventually, paymesh_command, statuses, stores_env

TOP_KEYS = {"order_id", "merchant_id", "status", "placed_at", "updated_at", "final", "entries", "waiting",
            "aged_out", "retention_s", "notes"}
ENTRY_KEYS = {"at", "offset_ms", "service", "kind", "what", "at_least", "detail"}
WAITING_KEYS = {"for", "service", "durable", "event", "event_id", "since", "pending", "ack_pending", "redelivered",
                "state", "last_error", "also"}
# Each event of a confirmed order, who publishes it, and the durables that apply it.
HAPPY = {
    "order.placed": ("order_svc", {"inventory_svc-order", "payment_svc-order"}),
    "inventory.reserved": ("inventory_svc", {"payment_svc-inventory", "order_svc-inventory"}),
    "payment.succeeded": ("payment_svc", {"order_svc-payment", "inventory_svc-payment"}),
    "order.confirmed": ("order_svc", {"webhook_svc-order"}),
    "inventory.committed": ("inventory_svc", set()),
}
SERVICE_PREFIXES = tuple(f"{s.env_prefix}_" for s in SPECS) + ("PAYMESH_",)


def operator_env(mesh: Mesh) -> dict[str, str]:
    """What an operator's shell holds for this mesh: its environment and each service's store."""
    return {**mesh.env, **stores_env(mesh)}


async def paymesh(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    return await paymesh_command(env, *argv)


def published(t: Trace, name: str) -> Entry:
    found = [e for e in t.entries if e.kind == "published" and e.what.startswith(f"published {name} (")]
    assert len(found) == 1, (name, [e.what for e in t.entries])
    return found[0]


def applied_by(entry: Entry) -> set[str]:
    return {c["durable"] for c in entry.detail["consumers"] if c["state"] == "applied"}


def settled(t: Trace) -> bool:
    """Every event of a confirmed order on its stream, each applied by every durable that takes it, the charge in."""
    names = {e.what.split()[1] for e in t.entries if e.kind == "published"}
    return (set(HAPPY) <= names and any(e.kind == "charge" for e in t.entries)
            and all(c["state"] == "applied" for e in t.entries if e.kind == "published" for c in e.detail["consumers"]))


@pytest.mark.timeout(120)
async def test_a_confirmed_orders_trace_runs_in_time_order_across_every_service(mesh: Mesh, clients: Clients) -> None:
    sku = await clients.put_product(10)
    order = await clients.create_order([(sku, 2, 600)])
    other = await clients.create_order([(sku, 1, 450)])
    for placed in (order, other):
        await clients.wait_order(placed.order_id, statuses("CONFIRMED"))
    env = operator_env(mesh)
    done: Trace = await eventually(lambda: trace(env, order.order_id), settled, 20, "every event applied")

    assert (done.order.status, done.final, done.waiting, done.aged_out) == (OrderStatus.CONFIRMED, True, None, False)
    assert [e.at for e in done.entries] == sorted(e.at for e in done.entries)
    created = done.entries[0]
    assert (created.kind, created.service, created.what.split()[:2]) == ("rpc", "order_svc", ["CreateOrder", "OK"])
    charges = [e for e in done.entries if e.kind == "charge"]
    assert len(charges) == 1 and charges[0].service == "gateway_mock", charges
    charge = charges[0]
    assert charge.what.endswith("SUCCEEDED 12.00 USD") and charge.detail["amount_minor"] == 1200, charge
    events = {name: published(done, name) for name in HAPPY}
    for name, (publisher, durables) in HAPPY.items():
        assert events[name].service == publisher, events[name]
        assert applied_by(events[name]) == durables, (name, events[name].detail)
        for durable in durables:  # each application is a line of its own, not before the publication
            line = [e for e in done.entries if e.kind == "applied" and e.what == f"applied {name} ({durable})"]
            assert len(line) == 1 and line[0].at >= events[name].at, (name, durable, line)
    # The saga's order: each step answers the one before it. order.confirmed and inventory.committed both answer
    # payment.succeeded (order_svc and inventory_svc apply it at once), so they may come in either order.
    steps = [created, events["order.placed"], events["inventory.reserved"], charge, events["payment.succeeded"]]
    assert [s.at for s in steps] == sorted(s.at for s in steps), [(s.what, s.at) for s in steps]
    index = {id(e): i for i, e in enumerate(done.entries)}
    assert [index[id(s)] for s in steps] == sorted(index[id(s)] for s in steps)
    for answer in ("order.confirmed", "inventory.committed"):
        assert events[answer].at >= events["payment.succeeded"].at, answer
    audit = [e.detail["type"] for e in done.entries if e.kind == "audit"]
    assert audit[:3] == ["created", "charge_requested", "charge_succeeded"], audit

    # JSON: the documented keys, the same for another order, and a stable round trip.
    first, second = done.as_json(), (await eventually(lambda: trace(env, other.order_id), settled, 20,
                                                      "the other order settled")).as_json()
    for body in (first, second):
        assert set(body) == TOP_KEYS and body["waiting"] is None and body["final"] is True
        assert body["status"] == "CONFIRMED" and body["placed_at"].endswith("Z")
        assert all(set(e) == ENTRY_KEYS and e["kind"] in KINDS for e in body["entries"])
        assert json.loads(json.dumps(body, sort_keys=True)) == body
    assert {e["kind"] for e in first["entries"]} == {e["kind"] for e in second["entries"]}
    assert first["entries"][0]["offset_ms"] == 0.0

    status, out, err = await paymesh(env, "trace", order.order_id, "--json")
    assert (status, err) == (0, ""), err
    printed = json.loads(out)
    assert set(printed) == TOP_KEYS and printed["order_id"] == order.order_id
    assert [e["what"] for e in printed["entries"]] == [e["what"] for e in first["entries"]]
    status, out, err = await paymesh(env, "trace", order.order_id)
    assert (status, err) == (0, ""), err
    lines = out.splitlines()
    assert lines[0].startswith(f"order {order.order_id} of ") and lines[-1] == "CONFIRMED: final", out
    assert any("order_svc      CreateOrder OK" in line for line in lines), out
    assert any("inventory_svc  applied order.placed (inventory_svc-order)" in line for line in lines), out
    assert any("gateway_mock   charge ch_" in line and "SUCCEEDED 12.00 USD" in line for line in lines), out


@pytest.mark.timeout(120)
async def test_an_order_held_up_by_a_dead_payment_svc_waits_on_its_durable_until_it_returns(new_mesh) -> None:  # type: ignore[no-untyped-def]
    # A saga deadline past the test's length: the order must wait for payment_svc, not be timed out meanwhile.
    mesh: Mesh = await new_mesh(PAYMESH_SAGA_TIMEOUT_S="300")
    env = operator_env(mesh)
    async with Clients(mesh).session() as clients:
        sku = await clients.put_product(3)
        await mesh.kill("payment_svc")
        order = await clients.create_order([(sku, 1, 700)])
        await clients.wait_order(order.order_id, statuses("AWAITING_PAYMENT"))

        def held(t: Trace) -> bool:
            w = t.waiting
            return w is not None and w.durable == "payment_svc-inventory" and (w.pending or 0) >= 1

        found: Trace = await eventually(lambda: trace(env, order.order_id), held, 20, "the charge waiting")
        assert not found.final and found.order.status in (OrderStatus.AWAITING_PAYMENT, OrderStatus.PENDING)
        w = found.waiting
        assert w is not None
        assert (w.service, w.event, w.state) == ("payment_svc", "inventory.reserved", "not delivered yet"), w
        reserved = published(found, "inventory.reserved")
        assert w.what.startswith("payment_svc to charge") and w.event_id == reserved.detail["event_id"], w
        assert w.since == reserved.at and w.last_error is None, w
        # payment_svc was dead before order.placed too: that is said beside it.
        placed_id = published(found, "order.placed").detail["event_id"]
        assert w.also == (f"payment_svc has not applied order.placed {placed_id} either (durable payment_svc-order)",)
        assert set(found.as_json()["waiting"]) == WAITING_KEYS
        assert applied_by(reserved) == {"order_svc-inventory"}
        assert not any(e.kind == "charge" for e in found.entries)

        status, out, err = await paymesh(env, "trace", order.order_id)
        assert (status, err) == (0, ""), err
        assert "AWAITING_PAYMENT, not final: waits for payment_svc to charge" in out, out
        assert "durable payment_svc-inventory, inventory.reserved" in out and " pending, " in out, out
        assert "not applied by payment_svc-inventory: not delivered yet" in out, out

        waiting_orders = await stuck(env, 0)
        assert [s.order.order_id for s in waiting_orders] == [order.order_id]
        assert waiting_orders[0].waiting is not None and waiting_orders[0].waiting.durable == "payment_svc-inventory"
        status, out, err = await paymesh(env, "stuck", "--older-than", "0s")
        assert (status, err) == (1, ""), (out, err)
        assert out.splitlines()[0].startswith(f"{order.order_id}  AWAITING_PAYMENT  unchanged "), out
        assert "waits for payment_svc to charge: durable payment_svc-inventory" in out, out
        status, out, err = await paymesh(env, "stuck", "--older-than", "0s", "--json")
        report = json.loads(out)
        assert status == 1 and report["count"] == 1 and report["older_than_s"] == 0.0, report
        assert report["orders"][0]["order_id"] == order.order_id
        assert report["orders"][0]["waiting"]["durable"] == "payment_svc-inventory"

        # Followed while payment_svc comes back: the new lines appear, and it ends when the order is final.
        follow = asyncio.create_task(paymesh(env, "trace", order.order_id, "--follow", "--timeout", "45"))
        await mesh.restart("payment_svc")
        await clients.wait_order(order.order_id, statuses("CONFIRMED"))
        status, out, err = await follow
        assert (status, err) == (0, ""), (out, err)
        lines = out.splitlines()
        assert lines[-1] == "CONFIRMED: final" and any("published payment.succeeded" in line for line in lines), out
        assert len(lines) == len(set(lines)), out  # each line printed once

        await eventually(lambda: stuck(env, 0), lambda s: s == [], 10, "nothing stuck")
        status, out, err = await paymesh(env, "stuck", "--older-than", "0s")
        assert (status, out.strip(), err) == (0, "no order waits longer than 0s", "")
        after = await trace(env, order.order_id)
        assert after.final and after.waiting is None


@pytest.mark.timeout(120)
async def test_an_order_older_than_the_streams_keep_says_its_events_aged_out(new_mesh) -> None:  # type: ignore[no-untyped-def]
    mesh: Mesh = await new_mesh(PAYMESH_STREAM_MAX_AGE="2s")
    env = operator_env(mesh)
    async with Clients(mesh).session() as clients:
        sku = await clients.put_product(1)
        order = await clients.create_order([(sku, 1, 250)])
        await clients.wait_order(order.order_id, statuses("CONFIRMED"))

    def all_gone(t: Trace) -> bool:
        return not any(e.kind in ("published", "applied") for e in t.entries)

    gone: Trace = await eventually(lambda: trace(env, order.order_id), all_gone, 20, "its events gone")
    assert (gone.aged_out, gone.retention_s, gone.final, gone.waiting) == (True, 2.0, True, None)
    assert {"rpc", "audit", "charge"} <= {e.kind for e in gone.entries}  # what the stores keep is still there
    status, out, err = await paymesh(env, "trace", order.order_id)
    assert (status, err) == (0, ""), err
    assert "its events aged out of the streams (they keep 2s, PAYMESH_STREAM_MAX_AGE)" in out, out
    assert out.splitlines()[-1] == "CONFIRMED: final", out


@pytest.mark.timeout(120)
async def test_stuck_finds_nothing_on_a_healthy_mesh(mesh: Mesh, clients: Clients) -> None:
    sku = await clients.put_product(2)
    order = await clients.create_order([(sku, 1, 300)])
    await clients.wait_order(order.order_id, statuses("CONFIRMED"))
    env = operator_env(mesh)
    assert await stuck(env, 30) == []
    status, out, err = await paymesh(env, "stuck")
    assert (status, out.strip(), err) == (0, "no order waits longer than 30s", "")


@pytest.mark.timeout(120)
async def test_an_unknown_order_and_no_mesh_are_one_line_each(mesh: Mesh, tmp_path: Path) -> None:
    status, out, err = await paymesh(operator_env(mesh), "trace", "ord_0000000000000000000000000000dead")
    assert (status, out, err) == (1, "", "paymesh: order ord_0000000000000000000000000000dead not found in order_svc\n")

    empty = tmp_path / "no-mesh"
    empty.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_PREFIXES)}
    nothing_answers = {**clean, "PAYMESH_DATA_DIR": str(empty), "PAYMESH_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    nothing_there = {**clean, "PAYMESH_DATA_DIR": str(empty)}
    # The mesh's NATS answers, but the data dir holds no store: nothing opens (or makes) an empty SQLite file.
    no_store = {**nothing_answers, "PAYMESH_NATS_URL": mesh.nats_url,
                "PAYMESH_NATS_CREDS": str(mesh.nats_creds.path) if mesh.nats_creds else ""}
    for env in (nothing_answers, nothing_there, no_store):
        for argv in (["trace", "ord_x"], ["trace", "ord_x", "--json"], ["stuck"]):
            status, out, err = await paymesh(env, *argv)
            assert status == 2 and out == "", (argv, status, out, err)
            assert len(err.splitlines()) == 1 and err.startswith("paymesh: no mesh running: "), (argv, err)
        with pytest.raises(NoMesh):
            await trace(env, "ord_x")
    assert list(empty.iterdir()) == []
    started = datetime.now()
    with pytest.raises(NoMesh):
        await stuck(nothing_answers, 0)
    assert (datetime.now() - started).total_seconds() < 15
