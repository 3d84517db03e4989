"""`paymesh status`: one screen of a running mesh: health, consumer lag, outboxes, dead letters, breaker, webhooks.

Each part is read from where it lives, all at once: every replica's gRPC health (grpc.health.v1 Check, TLS as the
environment says) and its /metrics (its release from `paymesh_build_info`, its outbox backlog, payment_svc's
`paymesh_breaker_state`); every durable of every saga stream from JetStream's consumer info, and the DLQ's count per
subject (`dlq.<service>.<durable>`), as the operator's NATS user; webhook_svc's pending deliveries from its store,
read-only. A part that does not answer is shown as such (a replica DOWN, a figure `-`), never a crash. The outbox
figures are the gauges each replica refreshes every PAYMESH_METRICS_PERIOD_S (5 s): a few seconds old at most.

`--json` prints one object (one a line under `--watch`), keys always present:

    {"healthy": bool,                    # what exit status 0 says
     "attention": [str, ...],            # why not, one line each
     "nats": {"servers": str | null, "error": str | null},
     "services": [{"service": str, "replica": int (1 first), "addr": str,
                   "health": "SERVING" | "NOT_SERVING" | "UNKNOWN" | "SERVICE_UNKNOWN" | "DOWN" | a gRPC code,
                   "version": str | null, "metrics_addr": str | null}],
     "consumers": [{"stream": str, "durable": str, "pending": int, "ack_pending": int, "redelivered": int}],
     "outboxes": [{"service": str, "unsent": int | null, "oldest_s": float | null}],
     "dlq": [{"service": str, "durable": str, "count": int}],   # every declared durable, 0 included
     "breaker": [{"replica": int, "state": "closed" | "open" | "half-open" | null}],   # payment_svc's replicas
     "webhooks": {"pending": int | null}}

Exit status: 0 when every replica is SERVING, NATS answers, the DLQ is empty and no breaker is open or half-open;
1 when something needs attention; 2, one line on stderr, when no mesh answers at all (neither its NATS nor any
replica). Nothing heavy is imported until the command runs, so `paymesh --help` stays quick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paymesh.ops.addresses import dial_addr
from paymesh.ops.mesh_file import MeshFile, data_dir_of, running_env

if TYPE_CHECKING:
    from paymesh.chassis.tls import ClientTls

DOWN = "DOWN"  # nothing answered the health check: not listening, or no answer within the timeout
PROBE_TIMEOUT_S = 2.0
WEBHOOK_TIMEOUT_S = 5.0
DEFAULT_WATCH_S = 2.0
BREAKER_ALARMS = ("open", "half-open")  # half-open: just back from open, the gateway not yet trusted again
CLEAR_SCREEN = "\033[H\033[2J"


@dataclass(frozen=True)
class ReplicaStatus:
    service: str
    replica: int
    addr: str
    health: str
    version: str | None
    metrics_addr: str | None

    @property
    def name(self) -> str:
        """As `paymesh up` names it: `order_svc`, `order_svc#2`."""
        return self.service if self.replica == 1 else f"{self.service}#{self.replica}"


@dataclass(frozen=True)
class ConsumerLag:
    stream: str
    durable: str
    pending: int
    ack_pending: int
    redelivered: int


@dataclass(frozen=True)
class Outbox:
    service: str
    unsent: int | None  # None: no replica of the service served its metrics
    oldest_s: float | None


@dataclass(frozen=True)
class DeadLetters:
    service: str
    durable: str
    count: int


@dataclass(frozen=True)
class BreakerState:
    replica: int
    state: str | None  # None: the replica's metrics did not answer


@dataclass(frozen=True)
class Status:
    services: list[ReplicaStatus]
    consumers: list[ConsumerLag] = field(default_factory=list)
    outboxes: list[Outbox] = field(default_factory=list)
    dlq: list[DeadLetters] = field(default_factory=list)
    breaker: list[BreakerState] = field(default_factory=list)
    webhooks_pending: int | None = None
    nats_servers: str | None = None
    nats_error: str | None = None  # None: NATS answered and JetStream with it

    @property
    def running(self) -> bool:
        """Some part of a mesh answered: its NATS or any replica."""
        return self.nats_error is None or any(r.health != DOWN for r in self.services)

    def attention(self) -> list[str]:
        """What an operator should look at, one line each; empty when all is well."""
        lines = [f"{r.name} {r.health} at {r.addr}" for r in self.services if r.health != "SERVING"]
        if self.nats_error is not None:
            lines.append(f"NATS: {self.nats_error}")
        lines += [f"DLQ: {d.count} dead-lettered by {d.durable}" for d in self.dlq if d.count]
        lines += [f"breaker of payment_svc replica {b.replica} {b.state}" for b in self.breaker
                  if b.state in BREAKER_ALARMS]
        return lines

    @property
    def healthy(self) -> bool:
        return not self.attention()

    def exit_status(self) -> int:
        return 0 if self.healthy else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "attention": self.attention(),
            "nats": {"servers": self.nats_servers, "error": self.nats_error},
            "services": [asdict(r) for r in self.services],
            "consumers": [asdict(c) for c in self.consumers],
            "outboxes": [asdict(o) for o in self.outboxes],
            "dlq": [asdict(d) for d in self.dlq],
            "breaker": [asdict(b) for b in self.breaker],
            "webhooks": {"pending": self.webhooks_pending},
        }


@dataclass(frozen=True)
class Scrape:
    """What `paymesh status` reads of one replica's /metrics."""

    version: str | None = None
    unsent: int | None = None
    oldest_s: float | None = None
    breaker: str | None = None


def read_metrics(text: str) -> Scrape:
    """The release, outbox backlog and gateway breaker state in Prometheus text (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "paymesh_build_info":
                found["version"] = sample.labels.get("version")
            elif sample.name == "paymesh_outbox_unsent_rows":
                found["unsent"] = int(sample.value)
            elif sample.name == "paymesh_outbox_oldest_unsent_seconds":
                found["oldest_s"] = round(sample.value, 3)
            elif sample.name == "paymesh_breaker_state" and sample.value == 1 and \
                    sample.labels.get("breaker") == "gateway":
                found["breaker"] = sample.labels.get("paymesh_breaker_state")
    return Scrape(**found)


async def probe_health(addr: str, tls: ClientTls | None) -> str:
    """The overall ("") health of the server at `addr`, DOWN when nothing answers in time."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from paymesh.chassis.tls import channel

    # An operator's probe dials the mesh directly, never through an http_proxy from the environment.
    async with channel(dial_addr(addr), tls, options=[("grpc.enable_http_proxy", 0)]) as probe:
        try:
            reply = await health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(service=""),
                                                                  timeout=PROBE_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            unanswered = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            return DOWN if err.code() in unanswered else err.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def scrape(addr: str | None) -> Scrape | None:
    """One replica's /metrics, read; None when there is no address or it does not answer."""
    if addr is None:
        return None
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as http, \
                http.get(f"http://{dial_addr(addr)}/metrics") as response:
            if response.status != 200:
                return None
            return read_metrics(await response.text())
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class Bus:
    """What JetStream says: the durables' lag and the DLQ's count per subject."""

    servers: str | None
    error: str | None = None
    consumers: list[ConsumerLag] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)


def reason(exc: Exception) -> str:
    """A MeshNotFound's message without its lead, which `no mesh running:` says already."""
    return str(exc).removeprefix("no mesh found: ").removeprefix("no mesh reachable: ")


async def read_bus(env: Mapping[str, str], streams: Sequence[str]) -> Bus:
    """Every durable of `streams` and the DLQ's subjects, as the operator's NATS user (as `paymesh dlq` finds it)."""
    import nats.errors
    from nats.js.errors import NotFoundError

    from paymesh.chassis.jetstream import DLQ_STREAM
    from paymesh.ops.mesh_nats import MeshNotFound, connect, find_nats

    try:
        address = find_nats(None, env, data_dir_of(env))
    except MeshNotFound as exc:
        return Bus(None, reason(exc))
    try:
        nc = await connect(address, "paymesh-status")
    except MeshNotFound as exc:
        return Bus(address.shown(), reason(exc))
    try:
        js = nc.jetstream(timeout=PROBE_TIMEOUT_S)
        consumers = []
        for stream in streams:
            try:
                infos = await js.consumers_info(stream)
            except NotFoundError:
                continue  # not made yet: its owner never started
            consumers += [ConsumerLag(stream, i.name, i.num_pending or 0, i.num_ack_pending or 0,
                                      i.num_redelivered or 0) for i in infos]
        try:
            dlq = (await js.stream_info(DLQ_STREAM, subjects_filter="dlq.>")).state.subjects or {}
        except NotFoundError:
            dlq = {}
        return Bus(address.shown(), None, sorted(consumers, key=lambda c: (c.stream, c.durable)), dict(dlq))
    except (nats.errors.Error, TimeoutError) as exc:
        return Bus(address.shown(), f"JetStream at {address.shown()} did not answer ({type(exc).__name__}); are "
                                    "these the operator's credentials (PAYMESH_NATS_CREDS)?")
    finally:
        await nc.close()


def webhook_store(env: Mapping[str, str]) -> str | None:
    """The URL of webhook_svc's store, None when it names a SQLite file that is not there (opening it would make
    an empty one)."""
    from sqlalchemy.engine import make_url

    from paymesh.chassis.config import db_url
    from paymesh.ops.services import spec

    url = db_url(spec("webhook_svc"), env)
    try:
        parsed = make_url(url)
    except ValueError:
        return None
    if parsed.drivername.startswith("sqlite") and not Path(parsed.database or "").is_file():
        return None
    return url


async def webhook_backlog(env: Mapping[str, str]) -> int | None:
    """webhook_svc's PENDING deliveries, read from its store; None when the store cannot be read."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from paymesh.chassis.db import Database
    from paymesh.chassis.migrations import service_metadata
    from paymesh.ops.services import spec
    from webhook_svc.domain import DeliveryStatus
    from webhook_svc.store import tables

    url = webhook_store(env)
    if url is None:
        return None
    try:
        db = Database(url, service_metadata(spec("webhook_svc")))
    except ValueError:  # a driver paymesh does not run on
        return None
    deliveries = tables(db.metadata).deliveries
    query = select(func.count()).select_from(deliveries).where(deliveries.c.status == DeliveryStatus.PENDING.value)
    try:
        async with asyncio.timeout(WEBHOOK_TIMEOUT_S), db.read() as conn:
            return int((await conn.execute(query)).scalar_one())
    except (SQLAlchemyError, OSError, TimeoutError):
        return None
    finally:
        await db.dispose()


async def collect(env: Mapping[str, str], services: dict[str, list[str]], metrics: dict[str, list[str]]) -> Status:
    """The mesh's status: `services` maps each service to its replicas' gRPC addresses, `metrics` to their /metrics
    addresses (first replica first, as mesh.json holds them); `env` names its NATS, data dir, TLS and stores."""
    from paymesh.chassis.tls import ClientTls
    from paymesh.ops.services import SPECS

    tls = ClientTls.from_env(env)
    replicas = [(name, number, addr, nth(metrics.get(name, []), number))
                for name, addrs in services.items() for number, addr in enumerate(addrs, start=1)]
    streams = [s.stream for s in SPECS if s.stream]
    healths, scrapes, bus, pending = await asyncio.gather(
        asyncio.gather(*(probe_health(addr, tls) for _, _, addr, _ in replicas)),
        asyncio.gather(*(scrape(m) for _, _, _, m in replicas)),
        read_bus(env, streams),
        webhook_backlog(env),
    )
    rows = [ReplicaStatus(name, number, addr, health, s.version if s else None, m)
            for (name, number, addr, m), health, s in zip(replicas, healths, scrapes, strict=True)]
    outboxes = []
    for name in services:
        # Replicas share their service's store, so each reports the same backlog: the freshest (largest) counts.
        seen = [s for (svc, _, _, _), s in zip(replicas, scrapes, strict=True) if svc == name and s is not None]
        unsent = [s.unsent for s in seen if s.unsent is not None]
        oldest = [s.oldest_s for s in seen if s.oldest_s is not None]
        outboxes.append(Outbox(name, max(unsent) if unsent else None, max(oldest) if oldest else None))
    breaker = [BreakerState(number, s.breaker if s else None)
               for (name, number, _, _), s in zip(replicas, scrapes, strict=True) if name == "payment_svc"]
    return Status(rows, bus.consumers, outboxes, dead_letters(bus.dead_letters, SPECS), breaker, pending,
                  bus.servers, bus.error)


def nth(addrs: Sequence[str], number: int) -> str | None:
    """Replica `number`'s address (1 first); None when the list has none for it (metrics `off`)."""
    return addrs[number - 1] if 0 < number <= len(addrs) else None


def dead_letters(subjects: Mapping[str, int], specs: Sequence[Any]) -> list[DeadLetters]:
    """Every declared durable's DLQ count (`dlq.<service>.<durable>`), 0 included, then any other subject's."""
    counts = dict(subjects)
    out = []
    for s in specs:
        for durable in s.consumes:
            out.append(DeadLetters(s.name, durable.name, counts.pop(f"dlq.{s.name}.{durable.name}", 0)))
    for subject, count in sorted(counts.items()):
        _, service, durable = (subject.split(".", 2) + ["", ""])[:3]
        out.append(DeadLetters(service, durable, count))
    return out


def table(rows: Sequence[Sequence[str]], numeric: frozenset[int] = frozenset()) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]


def shown(value: object) -> str:
    return "-" if value is None else str(value)


def format_text(status: Status) -> str:
    lines = ["services"]
    lines += table([("replica", "address", "health", "version", "metrics")] + [
        (r.name, r.addr, r.health, shown(r.version), shown(r.metrics_addr)) for r in status.services])
    lines.append("consumers")
    if status.consumers:
        lines += table([("stream", "durable", "pending", "ack pending", "redelivered")] + [
            (c.stream, c.durable, str(c.pending), str(c.ack_pending), str(c.redelivered)) for c in status.consumers],
            frozenset({2, 3, 4}))
    else:
        lines.append("  - (NATS did not answer)" if status.nats_error else "  none")
    lines.append("outboxes")
    lines += table([("service", "unsent", "oldest")] + [
        (o.service, shown(o.unsent), "-" if o.oldest_s is None else f"{o.oldest_s:.1f}s") for o in status.outboxes],
        frozenset({1, 2}))
    lines.append("DLQ")
    if full := [d for d in status.dlq if d.count]:
        lines += table([("service", "durable", "count")] + [(d.service, d.durable, str(d.count)) for d in full],
                       frozenset({2}))
    else:
        lines.append("  - (NATS did not answer)" if status.nats_error else "  empty")
    lines.append("breaker")
    lines += table([("replica", "gateway breaker")] + [
        ("payment_svc" if b.replica == 1 else f"payment_svc#{b.replica}", shown(b.state)) for b in status.breaker])
    lines.append("webhooks")
    lines.append(f"  pending deliveries  {shown(status.webhooks_pending)}")
    lines.append(f"NATS  {shown(status.nats_servers)}" + (f"  ({status.nats_error})" if status.nats_error else ""))
    attention = status.attention()
    lines.append("healthy" if not attention else "needs attention: " + "; ".join(attention))
    return "\n".join(lines)


def no_mesh_line(status: Status) -> str:
    tried = ", ".join(f"{r.name} {r.addr}" for r in status.services) or "none named"
    return f"paymesh: no mesh running: no service answers ({tried}), and {status.nats_error}"


def addresses(env: Mapping[str, str], found: MeshFile | None) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each service's replicas' gRPC and metrics addresses: mesh.json's, else the first replica's from `env`."""
    if found is not None:
        return found.services, found.metrics
    from paymesh.chassis.config import grpc_addr, metrics_addr
    from paymesh.ops.services import SPECS

    grpc = {s.name: [dial_addr(grpc_addr(s, env))] for s in SPECS}
    served = {s.name: metrics_addr(s, env)[0] for s in SPECS}
    return grpc, {name: [dial_addr(addr)] if addr else [] for name, addr in served.items()}


async def show(env: Mapping[str, str], services: dict[str, list[str]], metrics: dict[str, list[str]],
               as_json: bool, clear: bool) -> int:
    """One refresh: collect and print; the exit status it makes."""
    status = await collect(env, services, metrics)
    if not status.running:
        print(no_mesh_line(status), file=sys.stderr, flush=True)
        return 2
    out = json.dumps(status.to_json()) if as_json else format_text(status)
    print((CLEAR_SCREEN if clear else "") + out, flush=True)
    return status.exit_status()


async def watch(env: Mapping[str, str], services: dict[str, list[str]], metrics: dict[str, list[str]],
                as_json: bool, every_s: float | None, count: int | None) -> int:
    """Show once, or every `every_s` until Ctrl-C (or `count` refreshes): the last refresh's exit status."""
    from paymesh.chassis.periodic import pause

    if every_s is None and count is None:
        return await show(env, services, metrics, as_json, clear=False)
    clear = not as_json and sys.stdout.isatty()
    shown_n, last = 0, 0
    while count is None or shown_n < count:
        if shown_n:
            await pause(every_s or DEFAULT_WATCH_S)  # the refresh period itself
        last = await show(env, services, metrics, as_json, clear)
        shown_n += 1
    return last


def main(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    env, found = running_env(environ, args.data_dir)
    if args.data_dir:  # the flag wins over PAYMESH_DATA_DIR: its NATS, operator's credentials and stores
        env["PAYMESH_DATA_DIR"] = str(data_dir_of(environ, args.data_dir))
    if args.nats_url:  # and over PAYMESH_NATS_URL, as in `paymesh dlq`
        env["PAYMESH_NATS_URL"] = args.nats_url
    from paymesh.chassis.config import ConfigError

    try:
        services, metrics = addresses(env, found)
        return asyncio.run(watch(env, services, metrics, args.json, args.watch, args.count))
    except KeyboardInterrupt:
        return 0
    except (ConfigError, ValueError) as exc:  # TLS files that cannot be read, an address that is not host:port
        print(f"paymesh: {exc}", file=sys.stderr)
        return 2


def run_status(args: argparse.Namespace) -> int:
    return main(args, os.environ)


def add_status(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from paymesh.ops.cli import at_least_one, positive_seconds  # loaded by now: it is what calls this

    parser = subcommands.add_parser(
        "status",
        help="one screen of a running mesh: health, versions, consumer lag, outboxes, DLQ, breaker, webhooks",
        description=(
            "Every service replica's gRPC health and release, every durable consumer's pending, unacknowledged "
            "and redelivered messages (JetStream's consumer info), each service's unsent outbox rows and the "
            "oldest one's age, the DLQ's count per consumer, payment_svc's gateway breaker and webhook_svc's "
            "pending deliveries. The mesh is found by the mesh.json of `paymesh up` in the data dir, else the "
            "environment (..._GRPC_ADDR, PAYMESH_NATS_URL). Exits 0 when every replica is SERVING and the DLQ is "
            "empty, 1 when something needs attention (a replica down or not serving, dead letters, the breaker "
            "open), 2 when no mesh answers."
        ),
    )
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (one a line under --watch); its keys are documented in "
                             "paymesh/ops/status.py")
    parser.add_argument("--watch", nargs="?", type=positive_seconds, const=DEFAULT_WATCH_S, metavar="SECONDS",
                        help=f"refresh every SECONDS (default {DEFAULT_WATCH_S:g}) until Ctrl-C")
    parser.add_argument("--count", type=at_least_one, metavar="N",
                        help="stop after N refreshes (watching every --watch SECONDS, default "
                             f"{DEFAULT_WATCH_S:g}), exiting as the last one says")
    parser.add_argument("--nats-url", help="the mesh's NATS (default: $PAYMESH_NATS_URL, else the NATS `paymesh up` "
                                           "runs with the data dir)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="the data dir of `paymesh up`: its mesh.json, NATS and the operator's NATS user "
                             "(default: $PAYMESH_DATA_DIR, else ./.paymesh)")
    parser.set_defaults(handler=run_status)
