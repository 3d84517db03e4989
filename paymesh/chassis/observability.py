"""Logging setup, and the server interceptor that logs each call and maps service errors."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from paymesh.chassis import redaction
from paymesh.chassis.errors import ServiceError, Unimplemented, internal_status, to_status

log = logging.getLogger("paymesh.rpc")


def configure_logging(service: str, level: str | None = None) -> None:
    """One line per record on stderr, every line through the redaction (paymesh.chassis.redaction); the level
    is `level`, else PAYMESH_LOG_LEVEL, else INFO."""
    handler = logging.StreamHandler(sys.stderr)
    redaction.install(handler, f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
    logging.basicConfig(level=level or os.environ.get("PAYMESH_LOG_LEVEL") or "INFO", handlers=[handler])


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


class CallInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in grpc-stubs
    """Logs method, status and duration of every call; turns ServiceError into rich status."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream),  # type: ignore[arg-type]  # an async generator on aio
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _wrap_unary(method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: Context) -> Any:
        start = time.perf_counter()
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)
        finally:
            _log_call(method, context, start)

    return call


def _wrap_stream(
    method: str, behavior: Callable[..., AsyncIterator[Any]]
) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        start = time.perf_counter()
        try:
            async for item in behavior(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)
        finally:
            _log_call(method, context, start)

    return call


def _log_call(method: str, context: Context, start: float) -> None:
    if method.startswith("/grpc.health.v1.Health/"):
        return  # probes every few seconds would drown the log
    code = _code(context)
    level = (
        logging.INFO
        if code
        in {"OK", "NOT_FOUND", "INVALID_ARGUMENT", "ALREADY_EXISTS", "FAILED_PRECONDITION", "CANCELLED"}
        else logging.WARNING
    )
    log.log(level, "%s %s %.1fms", method, code, (time.perf_counter() - start) * 1000)
