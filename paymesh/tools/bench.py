"""`paymesh bench`: drive a mesh through gRPC at a fixed rate or concurrency and report sagas/s and latencies
(with `--webhook`, how long the merchant waits for its order.confirmed webhook too)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from paymesh.chassis.config import db_url
from paymesh.chassis.jetstream import consumer_backlog
from paymesh.client import MeshClient
from paymesh.ops.services import SPECS
from paymesh.ops.webhooks_listen import Received, WebhookReceiver, create_endpoint, delete_endpoint
from paymesh.order.v1 import order_pb2

SKU = "bench-sku"
STOCK = 10**12
SETTLED = {
    order_pb2.ORDER_STATUS_CONFIRMED,
    order_pb2.ORDER_STATUS_REJECTED,
    order_pb2.ORDER_STATUS_PAYMENT_FAILED,
    order_pb2.ORDER_STATUS_CANCELLED,
    order_pb2.ORDER_STATUS_REQUIRES_REVIEW,
}
# Open loop: sagas in flight beyond this are counted as refused arrivals, not queued without bound.
MAX_IN_FLIGHT = 5000
SAGA_TIMEOUT_S = 60.0
# --webhook: the one event type the bench subscribes to, and how long after the load its last deliveries may take.
WEBHOOK_EVENT = "order.confirmed"
WEBHOOK_DRAIN_S = 30.0


@dataclass
class Options:
    rate: float = 0.0  # open loop: sagas started per second; 0 = closed loop
    concurrency: int = 1  # closed loop: clients, each one saga at a time
    duration_s: float = 30.0
    warmup_s: float = 5.0
    gateway_latency_ms: int = 0
    json_out: bool = False
    tls: bool = False  # the mesh serves gRPC over TLS only (a local CA, as `paymesh up --tls`)
    webhook: bool = False  # an order.confirmed endpoint to a receiver in this process; its latency reported


@dataclass
class Results:
    create_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    completed: int = 0
    # The measured sagas that ended CONFIRMED: order id -> when its CreateOrder was sent (time.perf_counter()).
    confirmed: dict[str, float] = field(default_factory=dict)


# The load generator runs on the same machine as the mesh: its own CPU is reported beside the mesh's.
CLIENT = "bench-client"


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "count": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 2), "count": len(ordered)}


class ProcessStats:
    """CPU seconds and RSS of the mesh's processes (and of this client), read from /proc (Linux):
    RSS when measuring starts and when it ends, to see whether memory stays flat, and the peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {**pids, CLIENT: os.getpid()}
        self.start_cpu = {name: self.cpu_s(pid) for name, pid in self.pids.items()}
        self.start_rss = {name: self.rss_mb(pid, "VmRSS") for name, pid in self.pids.items()}

    @staticmethod
    def cpu_s(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    @staticmethod
    def rss_mb(pid: int, field: str = "VmHWM") -> float:
        """VmHWM: the peak resident set; VmRSS: the resident set now."""
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return 0.0

    def report(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "cpu_s": round(self.cpu_s(pid) - self.start_cpu[name], 2),
                "peak_rss_mb": self.rss_mb(pid),
                "rss_start_mb": self.start_rss[name],
                "rss_end_mb": self.rss_mb(pid, "VmRSS"),
            }
            for name, pid in self.pids.items()
        }


class Driver:
    """A client of the mesh (`paymesh.client`): sagas placed and watched to their end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.client = MeshClient.from_env(env)

    async def prepare(self, gateway_latency_ms: int) -> None:
        await self.client.put_product(SKU, name="benchmark stock", available=STOCK)
        await self.client.configure_gateway(reset=True)
        await self.client.configure_gateway(latency_ms=gateway_latency_ms)

    async def saga(self, results: Results | None) -> None:
        """One checkout: CreateOrder, then WatchOrder to a settled status; recorded unless warming up."""
        start = time.perf_counter()
        try:
            created = await self.client.create_order(
                customer_id="bench", items=[(SKU, 1, 1999)], currency="USD", payment_method_token="tok_visa"
            )
            created_at = time.perf_counter()
            status = created.status
            if status not in SETTLED:
                async with self.client.watch_order(created.order_id, timeout=SAGA_TIMEOUT_S) as changes:
                    async for order in changes:
                        status = order.status
                        if status in SETTLED:
                            break
        except grpc.aio.AioRpcError as exc:
            if results is not None:
                results.errors[exc.code().name] += 1
            return
        if results is None:
            return
        done = time.perf_counter()
        results.create_ms.append((created_at - start) * 1000)
        results.e2e_ms.append((done - start) * 1000)
        results.outcomes[order_pb2.OrderStatus.Name(status).removeprefix("ORDER_STATUS_")] += 1
        results.completed += 1
        if status == order_pb2.ORDER_STATUS_CONFIRMED:
            results.confirmed[created.order_id] = start

    async def close(self) -> None:
        await self.client.close()


async def closed_loop(driver: Driver, opts: Options, results: Results, measure_from: float, end: float) -> None:
    async def client() -> None:
        while (now := time.perf_counter()) < end:
            await driver.saga(results if now >= measure_from else None)

    await asyncio.gather(*(client() for _ in range(opts.concurrency)))


async def open_loop(driver: Driver, opts: Options, results: Results, measure_from: float, end: float) -> None:
    in_flight: set[asyncio.Task[None]] = set()
    interval = 1.0 / opts.rate
    next_at = time.perf_counter()
    while next_at < end:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # the arrival schedule itself
        measured = next_at >= measure_from
        if len(in_flight) >= MAX_IN_FLIGHT:
            if measured:
                results.errors["CLIENT_OVERLOADED"] += 1
        else:
            task = asyncio.create_task(driver.saga(results if measured else None))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        next_at += interval
    if in_flight:
        await asyncio.wait(in_flight, timeout=SAGA_TIMEOUT_S)


async def progress(results: Results, start: float, measure_from: float, end: float, quiet: bool) -> None:
    while not quiet and time.perf_counter() < end:
        await asyncio.sleep(1.0)  # a progress line per second
        now = time.perf_counter()
        phase = "warm-up" if now < measure_from else "measuring"
        elapsed = max(now - measure_from, 1e-9)
        recent = results.e2e_ms[-500:]
        p50 = statistics.median(recent) if recent else 0.0
        print(
            f"\r[{phase} {now - start:5.1f}s] sagas {results.completed:7d}  "
            f"{results.completed / elapsed if now >= measure_from else 0:7.1f}/s  "
            f"e2e p50 {p50:6.1f} ms  errors {sum(results.errors.values())}",
            end="",
            file=sys.stderr,
            flush=True,
        )
    if not quiet:
        print(file=sys.stderr)


def outbox_lag(env: dict[str, str]) -> dict[str, int]:
    """Unsent outbox rows per service, for SQLite stores (read directly, read-only)."""
    lag: dict[str, int] = {}
    for service in SPECS:
        url = db_url(service, env)
        if not url.startswith("sqlite"):
            continue
        path = url.split("///", 1)[1]
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
                lag[service.name] = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
        except sqlite3.Error:
            continue
    return lag


async def consumer_lag(env: dict[str, str]) -> dict[str, int]:
    import nats

    from paymesh.ops.nats_auth import operator_options

    nc = await nats.connect(env["PAYMESH_NATS_URL"].split(","), connect_timeout=5, **operator_options(env))
    try:
        js = nc.jetstream()
        lag: dict[str, int] = {}
        for stream in ("ORDER", "INVENTORY", "PAYMENT"):
            for info in await js.consumers_info(stream):
                lag[f"{stream}/{info.name}"] = await consumer_backlog(js, stream, info.name)
        return lag
    finally:
        await nc.close()


async def settled_lag(env: dict[str, str], limit_s: float = 10.0) -> dict[str, Any]:
    """Outbox and consumer lag once the load stopped: how long they took to reach zero (bounded),
    and what was left if they did not. A backlog that does not drain is the mesh falling behind."""
    start = time.perf_counter()
    while True:
        outbox, consumers = outbox_lag(env), await consumer_lag(env)
        drained = not any(outbox.values()) and not any(consumers.values())
        elapsed = time.perf_counter() - start
        if drained or elapsed > limit_s:
            return {
                "lag_drained_ms": round(elapsed * 1000, 1) if drained else None,
                "outbox_lag": outbox,
                "consumer_lag": consumers,
            }
        await asyncio.sleep(0.05)  # re-read the lag, under the bound above


async def webhook_report(receiver: WebhookReceiver, results: Results) -> dict[str, Any]:
    """Once the measured sagas' webhooks arrived (or WEBHOOK_DRAIN_S passed): the delivery latency from
    CreateOrder sent to the webhook received (the clock of `e2e_ms`), and from the event's `created`."""
    expected = results.confirmed
    first: dict[str, Received] = {}  # the first verified delivery of each order (a retry repeats one)
    missing = set(expected)
    scanned = 0

    def all_arrived(received: list[Received]) -> bool:
        nonlocal scanned  # each delivery is looked at once, however many arrive while waiting
        for r in received[scanned:]:
            if r.verified and r.type == WEBHOOK_EVENT:
                first.setdefault(r.order_id, r)
                missing.discard(r.order_id)
        scanned = len(received)
        return not missing

    await receiver.wait_for(all_arrived, WEBHOOK_DRAIN_S)
    all_arrived(receiver.received)
    since_create = [(first[o].received_perf - sent) * 1000 for o, sent in expected.items() if o in first]
    since_event = [ms for o in expected if o in first and (ms := first[o].latency_ms) is not None]
    p, e = percentiles(since_create), percentiles(since_event)
    return {
        "event": WEBHOOK_EVENT,
        "measured_from": "CreateOrder sent (the start of e2e_ms) to the webhook received",
        "expected": len(expected),
        "delivered": len(since_create),
        "bad_signatures": sum(1 for r in receiver.received if not r.verified),
        **{f"{k}_ms": p[k] for k in ("p50", "p95", "p99", "max")},
        "after_created_ms": {k: e[k] for k in ("p50", "p95", "p99", "max")},
    }


async def run(opts: Options, env: dict[str, str], pids: dict[str, int]) -> dict[str, Any]:
    driver = Driver(env)
    receiver: WebhookReceiver | None = None
    endpoint_id = ""
    try:
        await driver.prepare(opts.gateway_latency_ms)
        if opts.webhook:
            receiver = WebhookReceiver()
            await receiver.start()
            endpoint_id = (await create_endpoint(driver.client, receiver, [WEBHOOK_EVENT], "paymesh bench")).endpoint_id
        results = Results()
        stats: ProcessStats | None = None
        start = time.perf_counter()
        measure_from = start + opts.warmup_s
        end = measure_from + opts.duration_s

        async def start_stats() -> None:
            nonlocal stats
            await asyncio.sleep(opts.warmup_s)  # CPU is counted from the end of the warm-up
            stats = ProcessStats(pids)

        loop = open_loop if opts.rate > 0 else closed_loop
        await asyncio.gather(
            loop(driver, opts, results, measure_from, end),
            progress(results, start, measure_from, end, opts.json_out),
            start_stats(),
        )
        measured_s = max(time.perf_counter() - measure_from, 1e-9) if opts.rate > 0 else opts.duration_s
        lag = await settled_lag(env)
        webhook = {"webhook": await webhook_report(receiver, results)} if receiver is not None else {}
        return {
            "mode": f"open loop {opts.rate:g}/s" if opts.rate > 0 else f"closed loop x{opts.concurrency}",
            "duration_s": opts.duration_s,
            "warmup_s": opts.warmup_s,
            "gateway_latency_ms": opts.gateway_latency_ms,
            "sagas_completed": results.completed,
            "sagas_per_s": round(results.completed / measured_s, 1),
            "create_ms": percentiles(results.create_ms),
            "e2e_ms": percentiles(results.e2e_ms),
            "outcomes": dict(results.outcomes),
            "errors": dict(results.errors),
            "processes": stats.report() if stats is not None else {},
            **lag,
            **webhook,
        }
    finally:
        if endpoint_id:
            await delete_endpoint(driver.client, endpoint_id)
        if receiver is not None:
            await receiver.stop()
        await driver.close()


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"paymesh bench: {report['mode']}, {report['duration_s']:g}s after {report['warmup_s']:g}s warm-up, "
        f"gateway latency {report['gateway_latency_ms']} ms",
        f"  sagas completed   {report['sagas_completed']}  ({report['sagas_per_s']} sagas/s)",
    ]
    for key, label in (("create_ms", "CreateOrder ms"), ("e2e_ms", "saga e2e ms")):
        p = report[key]
        lines.append(f"  {label:17} p50 {p['p50']:8.2f}  p95 {p['p95']:8.2f}  p99 {p['p99']:8.2f}  max {p['max']:8.2f}")
    if (hook := report.get("webhook")) is not None:
        since = hook["after_created_ms"]
        lines.append(f"  {'webhook ms':17} p50 {hook['p50_ms']:8.2f}  p95 {hook['p95_ms']:8.2f}  "
                     f"p99 {hook['p99_ms']:8.2f}  max {hook['max_ms']:8.2f}  CreateOrder sent -> "
                     f"{hook['event']} received; {hook['delivered']} of {hook['expected']} delivered")
        lines.append(f"  {'  after created':17} p50 {since['p50']:8.2f}  p95 {since['p95']:8.2f}  "
                     f"p99 {since['p99']:8.2f}  max {since['max']:8.2f}  the event's `created` -> received")
    lines.append(f"  outcomes          {report['outcomes']}")
    lines.append(f"  errors            {report['errors'] or 'none'}")
    lines.append("  process           cpu_s   peak_rss_mb   rss_mb start -> end")
    for name, p in report["processes"].items():
        rss = f"{p['rss_start_mb']:8.1f} -> {p['rss_end_mb']:.1f}"
        lines.append(f"    {name:15} {p['cpu_s']:7.2f}   {p['peak_rss_mb']:8.1f}   {rss}")
    drained = report["lag_drained_ms"]
    lines.append(f"  lag drained in    {f'{drained} ms' if drained is not None else 'NOT within 10 s'}")
    lines.append(f"  outbox lag        {report['outbox_lag']}")
    lines.append(f"  consumer lag      {report['consumer_lag']}")
    return "\n".join(lines)


async def bench(opts: Options, data_dir: Path | None) -> dict[str, Any]:
    """Start a mesh on the embedded defaults in a fresh data dir (unless one is given), run, stop it."""
    from paymesh.ops.launcher import Mesh

    quiet = opts.json_out

    def out(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="paymesh-bench-") as tmp:
        env = dict(os.environ)
        if not env.get("PAYMESH_NATS_PORT"):
            from paymesh.ops.natsserver import free_port

            env["PAYMESH_NATS_PORT"] = str(free_port())
        mesh = Mesh(env, (data_dir or Path(tmp)).resolve(), out=out, err=out, tls=opts.tls)
        await mesh.start()
        try:
            pids = {name: child.process.pid for name, child in mesh.children.items()}
            if mesh.nats is not None and mesh.nats.process is not None:
                pids["nats-server"] = mesh.nats.process.pid
            return await run(opts, dict(mesh.env), pids)
        finally:
            await mesh.stop()


def main(opts: Options, data_dir: str | None) -> int:
    report = asyncio.run(bench(opts, Path(data_dir) if data_dir else None))
    print(json.dumps(report, indent=2) if opts.json_out else format_report(report))
    return 0
