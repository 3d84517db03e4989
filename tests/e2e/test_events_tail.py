"""`paymesh events tail` as a process against the session's mesh: an order's events replayed from the streams'
start and decoded, in stream order, leaving no consumer behind; a live tail showing an event published after it
started; Ctrl-C ends it with 0; with no mesh, or an event type the saga does not have, one line and exit 2."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from paymesh.ops.launcher import Mesh
from paymesh.ops.natsserver import free_port
from tests.e2e.events import Bus, Event
from tests.e2e.harness import Clients, statuses

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
CONFIRMED = statuses("CONFIRMED")
# The command as cli.py will register it: a parser of its own with `add_events`, its handler's exit status.
COMMAND = (
    "import argparse, sys\n"
    "from paymesh.ops.events_tail import add_events\n"
    "parser = argparse.ArgumentParser(prog='paymesh')\n"
    "sub = parser.add_subparsers(dest='command')\n"
    "add_events(sub)\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.handler(args))\n"
)
SAGA = ["order.placed", "inventory.reserved", "payment.succeeded", "order.confirmed", "inventory.committed"]
SCHEMA = {"time", "stream", "seq", "subject", "event", "type", "order_id", "merchant_id", "event_id", "trace_id",
          "delivered", "payload", "error"}
STREAM_OF = {"order": "ORDER", "inventory": "INVENTORY", "payment": "PAYMENT"}
# Starting the command imports the mesh's wiring before it subscribes: slow on a loaded machine.
READY_S = 30.0
RUN_S = 40.0


def tail_env(mesh: Mesh, data_dir: Path) -> dict[str, str]:
    """This process's environment without any PAYMESH_ setting, signed in as the mesh's operator (the seed
    `paymesh up` keeps in its data dir), and a data dir of no running mesh: --nats-url says where the NATS is."""
    assert mesh.nats_creds is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYMESH_")}
    return env | {"PAYMESH_NATS_CREDS": str(mesh.nats_creds.path), "PAYMESH_DATA_DIR": str(data_dir)}


@contextlib.asynccontextmanager
async def tailing(env: dict[str, str], *flags: str) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", COMMAND, "events", "tail", *flags, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:  # a failed test: stop this test's own child, by its handle
            process.kill()
            await process.wait()


async def ready(process: asyncio.subprocess.Process) -> str:
    """The line the tail writes to stderr once its consumers are in place."""
    assert process.stderr is not None
    line = (await asyncio.wait_for(process.stderr.readline(), READY_S)).decode()
    assert line.startswith("paymesh: following "), line
    return line


async def finished(process: asyncio.subprocess.Process) -> tuple[int, list[str], str]:
    out, err = await asyncio.wait_for(process.communicate(), RUN_S)
    assert process.returncode is not None
    return process.returncode, out.decode().splitlines(), err.decode()


async def run_tail(env: dict[str, str], *flags: str) -> tuple[int, list[str], str]:
    async with tailing(env, *flags) as process:
        return await finished(process)


async def confirmed_order(clients: Clients, bus: Bus) -> tuple[str, str]:
    """A new order of 2 x 750, confirmed, with every event of its saga in the streams; (order id, sku)."""
    sku = await clients.put_product(5)
    order = await clients.create_order([(sku, 2, 750)])
    trail = await bus.follow(order.order_id)
    await clients.wait_order(order.order_id, CONFIRMED)
    await trail.wait_for(*SAGA)
    return order.order_id, sku


async def stream_history(bus: Bus, order_id: str) -> list[Event]:
    """What the three streams hold for the order, as the tests' own ordered consumers read it."""
    return [e for domain, stream in STREAM_OF.items()
            for e in await bus.stream_events(stream, f"{domain}.*.{order_id}")]


async def tail_consumers(bus: Bus, order_id: str) -> set[str]:
    """Consumers of the saga's streams filtering on the order: what a tail of it would leave behind (beside the
    tests' own)."""
    left = set()
    for stream in STREAM_OF.values():
        for info in await bus.js.consumers_info(stream):
            filters = [info.config.filter_subject or "", *(info.config.filter_subjects or [])]
            if any(order_id in f for f in filters):
                left.add(f"{stream}/{info.name}")
    return left


async def test_an_orders_events_from_the_start_decoded_in_stream_order(
        mesh: Mesh, clients: Clients, bus: Bus, tmp_path: Path) -> None:
    order_id, sku = await confirmed_order(clients, bus)
    held = {e.name: e for e in await stream_history(bus, order_id)}
    ours = await tail_consumers(bus, order_id)  # the test's own ordered consumers of the order
    env = tail_env(mesh, tmp_path)

    # Six asked for, five in the saga: the tail shows them all and ends on --timeout, the sixth never came.
    status, lines, err = await run_tail(env, "--order", order_id, "--from-start", "--json", "--count", "6",
                                        "--timeout", "3", "--nats-url", mesh.nats_url)
    assert status == 1, (lines, err)
    records = [json.loads(line) for line in lines]
    assert sorted(r["event"] for r in records) == sorted(SAGA), lines
    for r in records:
        assert set(r) == SCHEMA, r
        domain, event, subject_order = r["subject"].split(".")
        assert (r["event"], r["order_id"], subject_order) == (f"{domain}.{event}", order_id, order_id), r
        assert r["stream"] == STREAM_OF[domain] and r["seq"] == held[r["event"]].seq, r  # what JetStream holds
        assert r["type"] == held[r["event"]].headers["Paymesh-Type"], r
        assert r["merchant_id"] == clients.merchant_id == r["payload"]["merchant_id"], r
        assert r["event_id"] == r["payload"]["event_id"] == held[r["event"]].headers["Nats-Msg-Id"], r
        assert re.fullmatch(r"[0-9a-f]{32}", r["trace_id"]) and r["delivered"] == 1 and r["error"] is None, r
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r["time"]), r
    for stream in STREAM_OF.values():
        seqs = [r["seq"] for r in records if r["stream"] == stream]
        assert seqs == sorted(seqs), (stream, seqs)  # each stream in its own order
    assert [r["time"] for r in records] == sorted(r["time"] for r in records), "the streams merged by time"
    assert records[0]["event"] == "order.placed", lines
    assert [r["event"] for r in records if r["stream"] == "ORDER"] == ["order.placed", "order.confirmed"]
    assert [r["event"] for r in records if r["stream"] == "INVENTORY"] == ["inventory.reserved",
                                                                           "inventory.committed"]

    by_event = {r["event"]: r["payload"] for r in records}
    placed = by_event["order.placed"]
    assert (placed["amount_minor"], placed["currency"]) == ("1500", "USD"), placed
    assert placed["items"] == [{"sku": sku, "quantity": "2", "unit_price_minor": "750"}], placed
    assert placed["payment_method_token"] == "[redacted]", placed
    assert by_event["inventory.reserved"]["lines"] == [{"sku": sku, "quantity": "2"}]
    paid = by_event["payment.succeeded"]
    assert (paid["amount_minor"], paid["currency"], paid["order_id"]) == ("1500", "USD", order_id), paid
    assert paid["payment_id"] and paid["charge_id"], paid
    assert by_event["order.confirmed"]["payment_id"] == paid["payment_id"]
    assert await tail_consumers(bus, order_id) <= ours, "the tail deleted its consumers"

    # The same as text: one line per event, time, stream#seq, subject, type, order, merchant, payload fields.
    status, lines, err = await run_tail(env, "--order", order_id, "--from-start", "--count", "5",
                                        "--nats-url", mesh.nats_url)
    assert status == 0 and len(lines) == 5, (lines, err)
    for line in lines:
        stamp, where, subject, type_name, order, merchant, *_ = line.split()
        record = next(r for r in records if r["subject"] == subject)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), line
        assert (where, type_name) == (f"{record['stream']}#{record['seq']}", record["type"]), line
        assert (order, merchant) == (f"order={order_id}", f"merchant={clients.merchant_id}"), line
    paid_line = next(line for line in lines if "payment.succeeded." in line)
    assert "amount_minor=1500 currency=USD" in paid_line and f"charge_id={paid['charge_id']}" in paid_line
    assert f"items=[{sku}x2@750]" in next(line for line in lines if "order.placed." in line)
    assert "tok_" not in "\n".join(lines), "no payment token printed"
    assert await tail_consumers(bus, order_id) <= ours


async def test_a_live_tail_shows_an_event_published_after_it_started(
        mesh: Mesh, clients: Clients, tmp_path: Path) -> None:
    sku = await clients.put_product(5)
    async with tailing(tail_env(mesh, tmp_path), "--type", "payment.succeeded", "--timeout", "10", "--count", "1",
                       "--nats-url", mesh.nats_url) as process:
        started = await ready(process)
        assert "PAYMENT (payment.succeeded.*)" in started and "new events only" in started, started
        assert "ORDER" not in started, "a stream with no wanted type is not read"
        order = await clients.create_order([(sku, 1, 1250)])
        status, lines, err = await finished(process)
    assert status == 0 and len(lines) == 1, (lines, err)
    line = lines[0]
    assert f" payment.succeeded.{order.order_id} " in line and " paymesh.payment.v1.PaymentSucceeded " in line, line
    assert f"order={order.order_id} merchant={clients.merchant_id}" in line and "amount_minor=1250" in line, line
    assert re.search(r" PAYMENT#\d+ ", line), line


async def test_ctrl_c_ends_a_tail_with_0_and_leaves_no_consumer(
        mesh: Mesh, bus: Bus, tmp_path: Path) -> None:
    order_id = f"ord_tail_{os.getpid()}_{free_port()}"  # an order that never was: the tail waits
    async with tailing(tail_env(mesh, tmp_path), "--order", order_id, "--nats-url", mesh.nats_url) as process:
        await ready(process)
        assert len(await tail_consumers(bus, order_id)) == 3, "one consumer per stream while it runs"
        process.send_signal(signal.SIGINT)
        status, lines, err = await finished(process)
    assert (status, lines) == (0, []), err
    assert await tail_consumers(bus, order_id) == set()


async def test_an_undecodable_message_is_shown_as_such_and_the_tail_goes_on(
        new_mesh: Callable[..., Awaitable[Mesh]], tmp_path: Path) -> None:
    mesh = await new_mesh()  # its own: the services dead-letter what is published here
    order_id = f"ord_garbage_{os.getpid()}"
    async with Bus.connect(mesh.nats_url, **mesh.nats_options()) as bus:
        await bus.js.publish(f"payment.succeeded.{order_id}", b"\xff\xff\xff",
                             headers={"Paymesh-Type": "paymesh.payment.v1.PaymentSucceeded", "Nats-Msg-Id": "bad-1"})
        await bus.js.publish(f"payment.failed.{order_id}", b"no type header", headers={"Nats-Msg-Id": "bad-2"})
    env = tail_env(mesh, tmp_path)
    flags = ("--order", order_id, "--from-start", "--count", "2", "--nats-url", mesh.nats_url)

    status, lines, err = await run_tail(env, *flags, "--json")
    assert status == 0 and len(lines) == 2, (lines, err)
    bad, untyped = (json.loads(line) for line in lines)
    assert (bad["event"], bad["type"], bad["payload"], bad["event_id"]) == (
        "payment.succeeded", "paymesh.payment.v1.PaymentSucceeded", None, "bad-1"), bad
    assert "is not a paymesh.payment.v1.PaymentSucceeded" in bad["error"], bad
    assert (untyped["event"], untyped["type"], untyped["payload"]) == ("payment.failed", "", None), untyped
    assert "no Paymesh-Type header" in untyped["error"] and set(untyped) == SCHEMA, untyped

    status, lines, err = await run_tail(env, *flags)
    assert status == 0 and len(lines) == 2, (lines, err)
    assert all(" UNDECODABLE: " in line for line in lines), lines


async def test_no_running_mesh_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYMESH_")}
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    for flags in (["--nats-url", url], ["--data-dir", str(tmp_path / "never-up")]):
        status, lines, err = await run_tail(env, *flags)
        assert status == 2 and lines == [], (flags, lines, err)
        assert len(err.splitlines()) == 1 and err.startswith("paymesh: no mesh running: "), err
        assert "`paymesh up`" in err and (url in err if "--nats-url" in flags else "never-up" in err), err


async def test_an_unknown_event_type_is_refused_naming_the_known_ones() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYMESH_")}
    status, lines, err = await run_tail(env, "--type", "payment.teleported")
    assert status == 2 and lines == [], (lines, err)
    assert len(err.splitlines()) == 1 and "'payment.teleported'" in err, err
    for known in SAGA + ["payment.refund_failed", "order.cancelled"]:
        assert known in err, err
