"""Logging setup, and the server interceptor that logs, counts and traces each call, decodes its request and
maps service errors."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc

from paymesh.chassis import redaction, tracing
from paymesh.chassis.config import ConfigError
from paymesh.chassis.decoding import request_decoder
from paymesh.chassis.errors import ServiceError, Unimplemented, internal_status, to_status
from paymesh.chassis.events import MERCHANT, TRACEPARENT, OutboundEvent
from paymesh.chassis.metrics import Metrics
from paymesh.chassis.tls import current_peer
from paymesh.chassis.tracing import SpanHandle, Tracing

log = logging.getLogger("paymesh.rpc")
# One line per saga step a service takes: each event it commits to its outbox (`inventory.reserved`, ...).
steps = logging.getLogger("paymesh.saga")

LOG_FORMAT_ENV = "PAYMESH_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
# What a line says of the saga it belongs to, where known (`extra=` of a log call).
CONTEXT_FIELDS = ("order_id", "merchant_id", "event_id", "trace_id")


class LogFormatter(logging.Formatter):
    """`text` (a terminal's: time, service, level, logger, message, then `key=value` for each context field)
    or `json` (one object per line: time, level, service, logger, message, the context fields, error); the
    whole line goes through the redaction either way (paymesh.chassis.redaction)."""

    def __init__(self, service: str, fmt: str = "text") -> None:
        super().__init__(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
        self.service = service
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        context = {k: v for k in CONTEXT_FIELDS if (v := getattr(record, k, None))}
        if not self.json:
            line = super().format(record)
            if context:
                line += " " + " ".join(f"{k}={v}" for k, v in context.items())
            return redaction.redact(line)
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            **context,
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return redaction.redact(json.dumps(entry, ensure_ascii=False))


def log_format(env: dict[str, str] | None = None) -> str:
    value = ((os.environ if env is None else env).get(LOG_FORMAT_ENV) or "text").strip().lower()
    if value not in LOG_FORMATS:
        raise ConfigError(f"{LOG_FORMAT_ENV}={value!r}: use one of {', '.join(LOG_FORMATS)}")
    return value


def configure_logging(service: str, level: str | None = None) -> None:
    """One line per record on stderr in PAYMESH_LOG_FORMAT (text, the default, or json), every line through
    the redaction; the level is `level`, else PAYMESH_LOG_LEVEL, else INFO."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(service, log_format()))
    logging.basicConfig(level=level or os.environ.get("PAYMESH_LOG_LEVEL") or "INFO", handlers=[handler])


def saga_context(order_id: str, merchant_id: str, event_id: str = "") -> dict[str, str]:
    """The `extra=` of a line about one order's saga, with the current span's trace id."""
    return {"order_id": order_id, "merchant_id": merchant_id, "event_id": event_id,
            "trace_id": tracing.trace_id(tracing.current_traceparent())}


def log_steps(events: Sequence[OutboundEvent]) -> None:
    """The saga steps committed: one line per event, with its order, merchant, event and trace ids."""
    if not steps.isEnabledFor(logging.INFO):
        return
    for event in events:
        step, _, order_id = event.subject.rpartition(".")
        steps.info("%s", step, extra={"order_id": order_id, "merchant_id": event.headers.get(MERCHANT, ""),
                                      "event_id": event.event_id,
                                      "trace_id": tracing.trace_id(event.headers.get(TRACEPARENT))})


Context = grpc.aio.ServicerContext[Any, Any]


async def _abort(context: Context, exc: BaseException, method: str) -> None:
    """The one place a raised error becomes a gRPC status."""
    if isinstance(exc, ServiceError):
        status = to_status(exc)
    elif isinstance(exc, NotImplementedError):  # what a generated base servicer raises
        status = to_status(Unimplemented(f"{method} is not implemented yet"))
    else:
        log.exception("unhandled error", exc_info=exc)
        status = internal_status()
    await context.abort_with_status(status)  # type: ignore[attr-defined]  # grpc-stubs 1.53 lacks it on aio


def _code(context: Context) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


# Codes that say the server failed (OpenTelemetry's rule for a server span's error status); the others are
# answers the caller must act on.
SERVER_FAULTS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})
QUIET_CODES = frozenset({"OK", "NOT_FOUND", "INVALID_ARGUMENT", "ALREADY_EXISTS", "FAILED_PRECONDITION",
                         "CANCELLED"})


@functools.cache
def _names(method: str) -> tuple[str, str]:
    """`/paymesh.order.v1.OrderService/CreateOrder` -> (`paymesh.order.v1.OrderService`, `CreateOrder`)."""
    service, _, name = method.strip("/").rpartition("/")
    return service, name


class Call:
    """One call's telemetry: its span (under the caller's traceparent), then on `finish` its status counted,
    its time observed and its log line written."""

    __slots__ = ("method", "start", "span", "_token", "_telemetry")

    def __init__(self, telemetry: Telemetry, method: str, context: Context) -> None:
        self._telemetry = telemetry
        self.method = method
        self.start = time.perf_counter()
        parent = None
        for key, value in context.invocation_metadata() or ():
            if key == TRACEPARENT:
                parent = value if isinstance(value, str) else None
                break
        service, name = _names(method)
        self.span: SpanHandle = telemetry.tracing.start(
            method.strip("/"), tracing.SERVER, parent,
            {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name})
        self._token = tracing.enter(self.span.traceparent)

    def finish(self, context: Context) -> None:
        tracing.leave(self._token)
        elapsed = time.perf_counter() - self.start
        code = _code(context)
        service, name = _names(self.method)
        metrics = self._telemetry.metrics
        metrics.rpc_handled.labels(service, name, code).inc()
        metrics.rpc_seconds.labels(service, name).observe(elapsed)
        self.span.set("rpc.grpc.status_code", code)
        if code in SERVER_FAULTS:
            self.span.fail(code)
        self.span.end()
        if self.method.startswith("/grpc.health.v1.Health/"):
            return  # probes every few seconds would drown the log
        level = logging.INFO if code in QUIET_CODES else logging.WARNING
        peer = current_peer()  # under mTLS: which service or tool called (its certificate's name)
        extra = {"trace_id": self.span.trace_id}
        if peer is None:
            log.log(level, "%s %s %.1fms", self.method, code, elapsed * 1000, extra=extra)
        else:
            log.log(level, "%s %s %.1fms from %s", self.method, code, elapsed * 1000, peer, extra=extra)


class Telemetry(Protocol):
    """What the chassis records into (the service's Runtime): its metrics and its tracer."""

    metrics: Metrics
    tracing: Tracing


class CallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in grpc-stubs
    """Logs, counts (grpc_server_handled_total, grpc_server_handling_seconds) and traces every call (a server
    span under the caller's `traceparent` metadata); decodes its request (see paymesh.chassis.decoding);
    turns ServiceError into rich status.

    Every kind of handler is rebuilt without a request deserializer, so a body that does not decode reaches
    `_abort` as InvalidArgument like any refusal. The key check (the AuthInterceptor, after this one) still
    comes first: it runs when the handler is looked up, before any byte of the body is read, and a refusal
    it builds takes the body undecoded.
    """

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        decode = request_decoder(method, handler.request_deserializer)
        serializer = handler.response_serializer
        t = self.telemetry
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(t, method, handler.unary_unary, decode), response_serializer=serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(t, method, handler.unary_stream, decode),  # type: ignore[arg-type]  # async generator
                response_serializer=serializer,
            )
        # Request streams: each message is decoded as the behaviour reads it from its iterator.
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(t, method, handler.stream_unary, _each(decode)),
                response_serializer=serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(t, method, handler.stream_stream, _each(decode)),  # type: ignore[arg-type]  # async on aio
                response_serializer=serializer,
            )
        return handler


def _each(decode: Callable[[Any], Any]) -> Callable[[AsyncIterator[Any]], AsyncIterator[Any]]:
    async def messages(raw: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for body in raw:
            yield decode(body)

    return messages


def _wrap_unary(
    telemetry: Telemetry, method: str, behavior: Callable[..., Awaitable[Any]], decode: Callable[[Any], Any]
) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: Context) -> Any:
        record = Call(telemetry, method, context)
        try:
            return await behavior(decode(request), context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)
        finally:
            record.finish(context)

    return call


def _wrap_stream(
    telemetry: Telemetry, method: str, behavior: Callable[..., AsyncIterator[Any]], decode: Callable[[Any], Any]
) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        record = Call(telemetry, method, context)
        try:
            result = behavior(decode(request), context)
            if inspect.isawaitable(result):  # a behaviour that sends with context.write (grpc_health's Watch)
                await result
                return
            async for item in result:
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)
        finally:
            record.finish(context)

    return call
