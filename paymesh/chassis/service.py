"""Runs one service: gRPC server with health and reflection, its database, outbox relay and consumers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy import Table

from paymesh.chassis import jetstream, migrations, outbox
from paymesh.chassis.auth import AuthInterceptor, KeyRegistry, Principal, RateLimiter, UndeclaredScopes, scopes_of
from paymesh.chassis.auth.keys import TrustedKey
from paymesh.chassis.auth.pepper import PEPPER_ENV, load_pepper
from paymesh.chassis.auth.scopes import Scope
from paymesh.chassis.config import ConfigError, Settings, db_url, event_loop
from paymesh.chassis.consumer import Consumer, ConsumerSpec
from paymesh.chassis.db import Database, DatabaseConfigError, UnitOfWork
from paymesh.chassis.errors import Unavailable
from paymesh.chassis.events import OutboundEvent
from paymesh.chassis.idempotency import RequestLog, requests_table
from paymesh.chassis.inbox import inbox_table
from paymesh.chassis.metrics import Metrics, MetricsServer
from paymesh.chassis.observability import CallInterceptor, configure_logging, log_steps
from paymesh.chassis.page_tokens import PageTokens
from paymesh.chassis.periodic import every
from paymesh.chassis.spec import ServiceSpec
from paymesh.chassis.tls import PeerInterceptor, ServerTls
from paymesh.chassis.tracing import Tracing

S = TypeVar("S")

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The service cannot start; the message says why and what to change."""


@dataclass(frozen=True)
class GrpcService:
    """A servicer and how to register it: `add` is the generated `add_XServicer_to_server`."""

    full_name: str
    servicer: Any
    add: Callable[[Any, grpc.aio.Server], None]


@dataclass
class Wiring:
    """What a service plugs into the chassis."""

    services: list[GrpcService] = field(default_factory=list)
    consumers: list[ConsumerSpec] = field(default_factory=list)
    # Long-running loops of the service (a deadline sweeper, a recovery scan): each is
    # started as a task once the service is ready and cancelled first at shutdown.
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # Resources a service opens once NATS and the database are up and before its consumers
    # start (a client channel to a peer), and closes after its consumers have stopped.
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Keys the service trusts from its own settings beside the bucket's (the bank's platform key).
    trusted_keys: list[TrustedKey] = field(default_factory=list)


class Runtime:
    """The shared parts a service's code receives: database, request log, outbox, JetStream, metrics, tracer."""

    def __init__(self, spec: ServiceSpec[Any], settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        metadata = migrations.service_metadata(spec)
        self.metadata = metadata
        self.outbox: Table = outbox.outbox_table(metadata)
        self.inbox: Table = inbox_table(metadata)
        self.db = Database(settings.db_url, metadata, pool_size=settings.db_pool_size)
        self.requests = RequestLog(self.db, requests_table(metadata))
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.relay: outbox.OutboxRelay | None = None
        self.metrics = Metrics(spec.name)
        # Recording only with OTEL_EXPORTER_OTLP_ENDPOINT; a test may hand it an exporter before wiring.
        self.tracing = Tracing.from_env(spec.name)
        # Set when shutdown begins, so long-lived calls (server streams) can end at once.
        self.stopping = asyncio.Event()
        self._page_tokens: PageTokens | None = None

    @property
    def page_tokens(self) -> PageTokens:
        """The signer of the List RPCs' page tokens, keyed from the pepper the host loads before SERVING."""
        if self._page_tokens is None:
            raise Unavailable("the service is starting and has not loaded its keys yet; retry shortly",
                              reason="STARTING")
        return self._page_tokens

    @page_tokens.setter
    def page_tokens(self, tokens: PageTokens) -> None:
        self._page_tokens = tokens

    async def publish(self, uow: UnitOfWork, events: Sequence[OutboundEvent]) -> None:
        """Put events in the outbox inside `uow`; when it commits, each is a saga step logged and counted, and
        the relay is woken."""
        if not events:
            return
        await outbox.add(uow.conn, self.outbox, events)
        uow.after_commit(lambda: self._committed(events))
        if self.relay is not None:
            uow.after_commit(self.relay.wake)

    def _committed(self, events: Sequence[OutboundEvent]) -> None:
        published = self.metrics.events_published
        for event in events:
            published.labels(event.subject.rpartition(".")[0]).inc()
        log_steps(events)


# Who makes the DLQ stream, for the message when it never appears (paymesh.ops.nats_setup).
DLQ_OWNER = "the operator (`paymesh up`, or `python -m paymesh.ops.nats_setup`)"


async def start_nats(runtime: Runtime) -> None:
    """Connect as the service's own NATS user and create or update its own stream: the one stream it may
    create (DESIGN.md, least privilege on the bus)."""
    settings = runtime.settings
    runtime.nc = await jetstream.connect(settings.nats_urls, name=settings.service, credentials=settings.nats_creds)
    runtime.js = runtime.nc.jetstream()
    if settings.stream:
        subjects = jetstream.stream_subjects(settings.stream)
        await jetstream.ensure_stream(runtime.js, settings.stream, subjects, settings.stream_replicas,
                                      max_age_s=settings.stream_max_age_s)


async def bind_streams(runtime: Runtime, consumers: Sequence[ConsumerSpec]) -> None:
    """Wait for the streams others make that the consumers need: the peers' they read and the DLQ they
    dead-letter to. None is created here: the bus lets a service create only its own stream."""
    assert runtime.js is not None
    if not consumers:
        return
    try:
        await jetstream.bind_stream(runtime.js, jetstream.DLQ_STREAM, DLQ_OWNER)
        for stream in sorted({spec.stream for spec in consumers} - {runtime.settings.stream}):
            await jetstream.bind_stream(runtime.js, stream, f"the service owning {stream}")
    except jetstream.StreamMissing as exc:
        raise StartupError(str(exc)) from exc


def check_consumes(spec: ServiceSpec[Any], consumers: Sequence[ConsumerSpec]) -> None:
    """The wiring's durables are those the spec declares, which the bus's authorization is written from."""
    wired = sorted((c.stream, c.durable) for c in consumers)
    declared = sorted((d.stream, d.name) for d in spec.consumes)
    if wired != declared:
        raise StartupError(f"{spec.name} consumes through {wired} but its ServiceSpec.consumes declares {declared}: "
                           "declare each durable there (the NATS users' permissions are written from it)")


class HostKeys:
    """The interceptor's view of the key registry, which exists once NATS is up: until then every call
    is refused UNAVAILABLE (the service is not SERVING yet either)."""

    def __init__(self) -> None:
        self.registry: KeyRegistry | None = None

    def lookup(self, secret: str | None) -> Principal:
        if self.registry is None:
            raise Unavailable("the service is starting and has not loaded its API keys yet; retry shortly",
                              reason="STARTING")
        return self.registry.lookup(secret)


def declared_scopes(services: Sequence[GrpcService]) -> dict[str, Scope]:
    """Every RPC's scope, or StartupError naming the RPCs that declare none."""
    scopes: dict[str, Scope] = {}
    for svc in services:
        try:
            scopes |= scopes_of(svc.servicer, svc.full_name)
        except UndeclaredScopes as exc:
            raise StartupError(str(exc)) from exc
    return scopes


def bind(server: grpc.aio.Server, addr: str, env_prefix: str, tls: ServerTls | None = None) -> None:
    """Listen on `addr`: TLS only when the service has a certificate, else plaintext."""
    try:
        port = server.add_secure_port(addr, tls.credentials()) if tls else server.add_insecure_port(addr)
    except RuntimeError as exc:
        raise StartupError(
            f"cannot listen on {addr} ({exc}); is it in use? set {env_prefix}_GRPC_ADDR"
        ) from exc
    if port == 0:
        raise StartupError(f"cannot listen on {addr}; is it in use? set {env_prefix}_GRPC_ADDR")


class ServiceHost:
    """Starts and stops one service in the order STYLE.md gives."""

    def __init__(self, runtime: Runtime, wiring: Wiring, *, migrate: bool = True) -> None:
        self.runtime = runtime
        self.wiring = wiring
        # False when an operator runs `python -m <service> migrate` as its own deploy step.
        self.migrate = migrate
        self.keys = HostKeys()
        check_consumes(runtime.spec, wiring.consumers)
        settings = runtime.settings
        auth = AuthInterceptor(self.keys, declared_scopes(wiring.services),
                               limiter=RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst))
        # ConfigError naming the variable when a certificate, key or CA file is missing or unreadable.
        self.tls = ServerTls(settings.tls) if settings.tls.serves_tls else None
        # Under mTLS the caller's certificate name is current_peer() (outermost: the call log sees it too).
        peers = [PeerInterceptor()] if settings.tls.require_client_auth else []
        # so_reuseport off: a second process on a taken port must fail, not share it. The key check
        # comes after the call log, so a refusal is logged like any answer.
        self.server = grpc.aio.server(interceptors=[*peers, CallInterceptor(runtime), auth],
                                      options=[("grpc.so_reuseport", 0)])
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs 1.53 lacks health.aio
        self.metrics_server = MetricsServer(runtime.metrics)
        self.consumers: list[Consumer] = []
        self.tasks: list[asyncio.Task[None]] = []
        # Names of the consumers and loops that ended while serving (see `supervise`).
        self.lost: list[str] = []
        self._lost_health: asyncio.Task[None] | None = None

    async def start(self) -> None:
        rt, settings = self.runtime, self.runtime.settings
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for svc in self.wiring.services:
            svc.add(svc.servicer, self.server)
        names = [svc.full_name for svc in self.wiring.services]
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        bind(self.server, settings.grpc_addr, settings.env_prefix, self.tls)
        await self.server.start()
        log.info("%s listening on %s%s (NOT_SERVING until ready)", settings.service, settings.grpc_addr,
                 " (TLS, client certificates required)" if settings.tls.require_client_auth
                 else " (TLS)" if self.tls else "")
        await self._serve_metrics()

        if self.migrate:
            await migrate_schema(rt)
        await rt.db.ping()
        await start_nats(rt)
        assert rt.nc is not None and rt.js is not None
        await self._load_keys(rt.nc)
        holder = f"{settings.service}@{socket.gethostname()}/{settings.grpc_addr}"
        rt.relay = outbox.OutboxRelay(rt.db, rt.outbox, rt.nc, holder=holder, telemetry=rt)
        rt.relay.start()
        for hook in self.wiring.on_start:
            await hook()
        await bind_streams(rt, self.wiring.consumers)
        for spec in self.wiring.consumers:
            consumer = Consumer(spec, rt.js, rt.db, rt.inbox, settings.service, telemetry=rt)
            await consumer.start()
            self.consumers.append(consumer)
            assert consumer.task is not None
            self.supervise(consumer.task)
        self.tasks.append(asyncio.create_task(
            every(settings.metrics_period_s, self.refresh_gauges, name="metrics gauges"), name="metrics gauges"))
        self.supervise(self.tasks[-1])
        for loop in self.wiring.background:
            self.tasks.append(asyncio.create_task(loop(), name=getattr(loop, "__name__", "background")))
            self.supervise(self.tasks[-1])
        if not self.lost:
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("%s SERVING", settings.service)

    async def _serve_metrics(self) -> None:
        settings = self.runtime.settings
        addr = settings.metrics_addr
        if addr is None:
            return
        try:
            await self.metrics_server.start(addr)
        except OSError as exc:
            message = f"cannot serve metrics on {addr} ({exc}); is it in use? set {settings.env_prefix}_METRICS_ADDR"
            if settings.metrics_addr_explicit:
                raise StartupError(message) from exc
            # The default port (the gRPC port + 1000) is taken: payments go on, unwatched, and say so.
            log.warning("%s: %s (or `off`); serving no metrics", settings.service, message)
            return
        log.info("%s metrics on http://%s/metrics", settings.service, addr)

    async def refresh_gauges(self) -> None:
        """The gauges read from the store and the bus: this outbox's backlog, and the lag of every durable on the
        stream this service owns (its owner reports it, so a durable whose process is down is still seen)."""
        rt = self.runtime
        if rt.relay is not None:
            rt.metrics.outbox_backlog(*await rt.relay.backlog())
        if rt.js is not None and rt.settings.stream:
            rt.metrics.consumer_lag(rt.settings.stream, await rt.js.consumers_info(rt.settings.stream))

    def supervise(self, task: asyncio.Task[None]) -> None:
        """A consumer or loop runs until shutdown; one that ends before is a replica that has silently stopped
        doing part of its work (events fetched and never answered, a sweep never run). That is said loudly,
        and the replica stops SERVING, so its health check fails and whatever runs it restarts it."""

        def ended(done: asyncio.Task[None]) -> None:
            if self.runtime.stopping.is_set():
                return
            error = None if done.cancelled() else done.exception()
            how = "was cancelled" if done.cancelled() else f"raised {error!r}" if error else "returned"
            log.critical("%s: %s %s while serving; NOT_SERVING from now on", self.runtime.settings.service,
                         done.get_name(), how, exc_info=error)
            self.lost.append(done.get_name())
            self._lost_health = asyncio.get_running_loop().create_task(
                self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING))

        task.add_done_callback(ended)

    def reload_tls(self) -> None:
        if self.tls is not None:
            log.info("%s: SIGHUP, reading the TLS files again", self.runtime.settings.service)
            self.tls.request_reload()

    async def _load_keys(self, nc: NATS) -> None:
        settings = self.runtime.settings
        try:
            pepper = load_pepper({PEPPER_ENV: settings.key_pepper} if settings.key_pepper else {}, settings.data_dir)
        except ConfigError as exc:
            raise StartupError(str(exc)) from exc
        # Every replica shares the pepper, so a page token one replica issued reads on any other.
        self.runtime.page_tokens = PageTokens.from_pepper(pepper)
        registry = KeyRegistry(nc, pepper)
        for key in self.wiring.trusted_keys:
            registry.trust(key)
        try:
            await registry.start()  # waits for the bucket, which the operator makes
        except jetstream.StreamMissing as exc:
            raise StartupError(str(exc)) from exc
        self.keys.registry = registry

    async def _set_health(self, status: Any) -> None:
        await self.health.set("", status)
        for svc in self.wiring.services:
            await self.health.set(svc.full_name, status)

    async def stop(self) -> None:
        """Health NOT_SERVING, stop gRPC with a grace period, background loops, consumers and relay,
        drain NATS, dispose the engine."""
        rt = self.runtime
        rt.stopping.set()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(rt.settings.shutdown_grace_s)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for consumer in self.consumers:
            await consumer.stop()
        if self.keys.registry is not None:
            await self.keys.registry.stop()
        for hook in self.wiring.on_stop:
            try:
                await hook()
            except Exception:
                log.exception("%s: a stop hook failed; shutting down the rest", rt.settings.service)
        if rt.relay is not None:
            await rt.relay.stop()
        if rt.nc is not None and not rt.nc.is_closed:
            with contextlib.suppress(Exception):
                await rt.nc.drain()
        await rt.db.dispose()
        await self.metrics_server.stop()
        rt.tracing.shutdown()
        log.info("%s stopped", rt.settings.service)


async def migrate_schema(runtime: Runtime) -> None:
    spec = runtime.spec
    try:
        revisions = await migrations.upgrade(runtime.db.engine, spec)
    except migrations.MigrationError as exc:
        raise StartupError(str(exc)) from exc
    log.info("%s database at revision %s", spec.name, ", ".join(revisions) or "(none)")


async def serve(runtime: Runtime, wiring: Wiring, *, migrate: bool = True) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    host = ServiceHost(runtime, wiring, migrate=migrate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP: read the TLS files again before the next handshake (they are also re-read when they change).
    loop.add_signal_handler(signal.SIGHUP, host.reload_tls)
    try:
        await host.start()
        await stop.wait()
    finally:
        await host.stop()


def parse_args(service: str, argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {service}",
        description=f"Run {service}; settings come from the environment (see DESIGN.md).",
    )
    parser.add_argument(
        "command", nargs="?", choices=["serve", "migrate"], default="serve",
        help="serve (the default): migrate the database, then run; migrate: migrate the database and exit",
    )
    parser.add_argument(
        "--no-migrate", action="store_true",
        help="serve without migrating the database (it must be at this release's revision already)",
    )
    return parser.parse_args(list(argv))


async def migrate_only(spec: ServiceSpec[Any], url: str) -> None:
    try:
        revisions = await migrations.migrate(url, spec)
    except migrations.MigrationError as exc:
        raise StartupError(str(exc)) from exc
    print(f"{spec.name}: database at revision {', '.join(revisions) or '(none)'}")


def run_on_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` to completion on the loop PAYMESH_EVENT_LOOP names (uvloop by default:
    benchmarks/README.md has what it gains; grpc.aio and nats-py run on any asyncio loop)."""
    if event_loop() == "uvloop":
        import uvloop  # only when chosen: PAYMESH_EVENT_LOOP=asyncio runs without it

        uvloop.run(main)
    else:
        asyncio.run(main)


def run_service(spec: ServiceSpec[S], argv: Sequence[str] | None = None) -> int:
    """The body of a service's `__main__`: settings from the environment, run until signalled.
    `argv` (default `sys.argv[1:]`): `migrate` migrates the database and exits; `--no-migrate`
    serves without migrating."""
    args = parse_args(spec.name, sys.argv[1:] if argv is None else argv)
    try:
        configure_logging(spec.name)  # ConfigError for a PAYMESH_LOG_FORMAT it does not know
        if args.command == "migrate":
            # Needs the database only: no NATS, no gRPC port.
            asyncio.run(migrate_only(spec, db_url(spec)))
            return 0
        env = dict(os.environ)
        runtime = Runtime(spec, Settings.from_env(spec, env))
        wiring = spec.wire(runtime, spec.settings(env))
        run_on_loop(serve(runtime, wiring, migrate=not args.no_migrate))
    except (StartupError, ConfigError, DatabaseConfigError, ConnectionError) as exc:
        print(f"{spec.name}: {exc}", file=sys.stderr)
        return 2
    return 0
