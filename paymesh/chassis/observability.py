"""Logging setup, and the server interceptor that logs each call, decodes its request and maps service errors."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from paymesh.chassis import redaction
from paymesh.chassis.decoding import request_decoder
from paymesh.chassis.errors import ServiceError, Unimplemented, internal_status, to_status
from paymesh.chassis.tls import current_peer

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
    """Logs method, status and duration of every call; decodes its request (see paymesh.chassis.decoding);
    turns ServiceError into rich status.

    Every kind of handler is rebuilt without a request deserializer, so a body that does not decode reaches
    `_abort` as InvalidArgument like any refusal. The key check (the AuthInterceptor, after this one) still
    comes first: it runs when the handler is looked up, before any byte of the body is read, and a refusal
    it builds takes the body undecoded.
    """

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
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary, decode), response_serializer=serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream, decode),  # type: ignore[arg-type]  # async generator
                response_serializer=serializer,
            )
        # Request streams: each message is decoded as the behaviour reads it from its iterator.
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(method, handler.stream_unary, _each(decode)),
                response_serializer=serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(method, handler.stream_stream, _each(decode)),  # type: ignore[arg-type]  # async on aio
                response_serializer=serializer,
            )
        return handler


def _each(decode: Callable[[Any], Any]) -> Callable[[AsyncIterator[Any]], AsyncIterator[Any]]:
    async def messages(raw: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for body in raw:
            yield decode(body)

    return messages


def _wrap_unary(
    method: str, behavior: Callable[..., Awaitable[Any]], decode: Callable[[Any], Any]
) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: Context) -> Any:
        start = time.perf_counter()
        try:
            return await behavior(decode(request), context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)
        finally:
            _log_call(method, context, start)

    return call


def _wrap_stream(
    method: str, behavior: Callable[..., AsyncIterator[Any]], decode: Callable[[Any], Any]
) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        start = time.perf_counter()
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
    peer = current_peer()  # under mTLS: which service or tool called (its certificate's name)
    elapsed_ms = (time.perf_counter() - start) * 1000
    if peer is None:
        log.log(level, "%s %s %.1fms", method, code, elapsed_ms)
    else:
        log.log(level, "%s %s %.1fms from %s", method, code, elapsed_ms, peer)
