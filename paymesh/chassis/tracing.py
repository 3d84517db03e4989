"""Traces: one OpenTelemetry span per RPC, per consumed event, per relay publish and per gateway call, joined
into one trace per saga by the W3C `traceparent` that crosses gRPC in metadata and NATS in each event's headers.

Recording is off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (or a test hands a service an exporter): then no
OpenTelemetry code runs at all, and a span is only a fresh span id under its parent's trace id, so events and
log lines still carry the saga's trace id. On, each service has its own TracerProvider (service.name is the
service), exporting over OTLP/gRPC in batches.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

from paymesh.chassis.events import child_traceparent

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"

# The span the running code is in (an RPC's, an event's): what a call or an event it causes continues.
_current: ContextVar[str | None] = ContextVar("paymesh_traceparent", default=None)

# Span kinds by name, so callers need not import OpenTelemetry (which is not loaded while tracing is off).
SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL = "server", "client", "producer", "consumer", "internal"


def current_traceparent() -> str | None:
    """The traceparent of the span the running code is in, if any."""
    return _current.get()


def trace_id(traceparent: str | None) -> str:
    """The 32-hex trace id of a traceparent, "" when there is none."""
    if traceparent and len(traceparent) >= 35 and traceparent[2] == "-":
        return traceparent[3:35]
    return ""


def _parse(traceparent: str | None) -> tuple[int, int, int] | None:
    parts = (traceparent or "").split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace, span, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    return (trace, span, flags) if trace and span else None


class SpanHandle:
    """A started span: its traceparent (what the work it causes carries) and, when recording, the span."""

    __slots__ = ("traceparent", "span")

    def __init__(self, traceparent: str, span: Span | None = None) -> None:
        self.traceparent = traceparent
        self.span = span

    @property
    def trace_id(self) -> str:
        return trace_id(self.traceparent)

    def set(self, key: str, value: str | int | float | bool) -> None:
        if self.span is not None:
            self.span.set_attribute(key, value)

    def fail(self, description: str) -> None:
        """Mark the span as failed (an RPC answered with an error code, an event that will be retried)."""
        if self.span is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_status(Status(StatusCode.ERROR, description))

    def end(self) -> None:
        if self.span is not None:
            self.span.end()


class Tracing:
    """A service's tracer; `Tracing()` records nothing."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self._tracer: Tracer | None = provider.get_tracer("paymesh") if provider is not None else None

    @property
    def recording(self) -> bool:
        return self._tracer is not None

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> Tracing:
        """Export over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT is set (the exporter reads the standard
        OTEL_EXPORTER_OTLP_* variables itself); otherwise record nothing."""
        env = os.environ if env is None else env
        if not env.get(OTLP_ENDPOINT_ENV):
            return cls()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = _provider(service)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("%s: exporting traces over OTLP to %s", service, env[OTLP_ENDPOINT_ENV])
        return cls(provider)

    @classmethod
    def to(cls, service: str, exporter: SpanExporter) -> Tracing:
        """Every span handed to `exporter` as it ends (tests: an InMemorySpanExporter per service)."""
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider = _provider(service)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return cls(provider)

    def start(self, name: str, kind: str, parent: str | None = None,
              attributes: Mapping[str, str | int | float | bool] | None = None) -> SpanHandle:
        """A span under `parent` (else the current span, else a new trace); the caller ends it."""
        parent = parent or _current.get()
        if self._tracer is None:
            return SpanHandle(child_traceparent(parent))
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

        context = None
        parsed = _parse(parent)
        if parsed is not None:
            remote = SpanContext(parsed[0], parsed[1], is_remote=True, trace_flags=TraceFlags(parsed[2]))
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        span = self._tracer.start_span(name, context=context, kind=SpanKind[kind.upper()],
                                       attributes=dict(attributes or {}))
        ctx = span.get_span_context()
        return SpanHandle(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}", span)

    @contextlib.contextmanager
    def span(self, name: str, kind: str, parent: str | None = None,
             attributes: Mapping[str, str | int | float | bool] | None = None) -> Iterator[SpanHandle]:
        """A span around a block, the current one inside it; an exception out of the block fails it."""
        handle = self.start(name, kind, parent, attributes)
        token = _current.set(handle.traceparent)
        try:
            yield handle
        except BaseException as exc:
            handle.fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            _current.reset(token)
            handle.end()

    def shutdown(self) -> None:
        """Export what is buffered and stop (the host's last step)."""
        if self.provider is not None:
            self.provider.shutdown()


def enter(traceparent: str | None) -> Token[str | None]:
    """Make `traceparent` the current span until `leave` (for code that cannot use a `with` block)."""
    return _current.set(traceparent)


def leave(token: Token[str | None]) -> None:
    try:
        _current.reset(token)
    except ValueError:  # an async generator closed from another context: that context never had the span
        pass


@contextlib.contextmanager
def within(traceparent: str | None) -> Iterator[None]:
    """Run a block as part of the span `traceparent` names (work a span's owner does for it, e.g. an event's
    gateway call in a batch)."""
    token = _current.set(traceparent)
    try:
        yield
    finally:
        _current.reset(token)


def _provider(service: str) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    return TracerProvider(resource=Resource.create({"service.name": service}))

