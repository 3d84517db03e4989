"""The key check of every call: bearer key -> Principal, the scope its method declares, the merchant's rate."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
from google.protobuf import descriptor_pool

from paymesh.chassis.auth.errors import ApiKeyInvalid, RateLimited, ScopeUndeclared
from paymesh.chassis.auth.keys import Principal
from paymesh.chassis.auth.ratelimit import RateLimiter
from paymesh.chassis.auth.scopes import Scope
from paymesh.chassis.errors import ServiceError, to_status

# Probes and `grpcurl list` work without a key; nothing else does.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
SCOPE_ATTR = "__paymesh_scope__"

_principal: ContextVar[Principal] = ContextVar("paymesh_principal")

F = TypeVar("F", bound=Callable[..., Any])


def current_principal() -> Principal:
    """The caller of the RPC being served, as the interceptor admitted it."""
    try:
        return _principal.get()
    except LookupError:
        raise RuntimeError("no authenticated caller here: this runs outside a call the AuthInterceptor admitted"
                           ) from None


def requires(scope: Scope) -> Callable[[F], F]:
    """Declares, next to the handler, the scope a caller's key must hold: `@requires(Scope.ORDERS_WRITE)`."""

    def declare(method: F) -> F:
        setattr(method, SCOPE_ATTR, scope)
        return method

    return declare


class UndeclaredScopes(RuntimeError):
    """A servicer has RPCs that declare no scope: the service must not start (a new RPC cannot ship unguarded)."""


def scopes_of(servicer: object, service_full_name: str) -> dict[str, Scope]:
    """`/pkg.Service/Method` -> scope for every RPC the service's descriptor lists, or UndeclaredScopes.
    `servicer` is the servicer or its class (the declarations are on the class)."""
    servicer_class = servicer if isinstance(servicer, type) else type(servicer)
    try:
        service = descriptor_pool.Default().FindServiceByName(service_full_name)
    except KeyError:
        raise ValueError(f"no service {service_full_name} is known: import its _pb2 module first") from None
    scopes: dict[str, Scope] = {}
    undeclared = []
    for method in service.methods:
        scope = getattr(getattr(servicer_class, method.name, None), SCOPE_ATTR, None)
        if isinstance(scope, Scope):
            scopes[f"/{service.full_name}/{method.name}"] = scope
        else:
            undeclared.append(method.name)
    if undeclared:
        raise UndeclaredScopes(
            f"{servicer_class.__name__} ({service.full_name}) declares no scope for {', '.join(undeclared)}: "
            "decorate each with @requires(Scope....)")
    return scopes


class KeyResolver(Protocol):
    def lookup(self, secret: str | None) -> Principal: ...


def bearer_key(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The key of `authorization: Bearer <key>`; None if there is no such metadata."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise ApiKeyInvalid("the call carries more than one authorization metadata entry")
    raw = values[0].decode(errors="replace") if isinstance(values[0], bytes) else values[0]
    scheme, _, key = raw.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiKeyInvalid("authorization metadata must read `Bearer <api key>`")
    return key.strip()


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in grpc-stubs, so a string
Context = grpc.aio.ServicerContext[Any, Any]


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in grpc-stubs
    """Admits a call whose key is valid, within its merchant's rate, and holds its method's scope.

    Place it after the CallInterceptor, so refusals are logged like any other answer.
    """

    def __init__(
        self,
        keys: KeyResolver,
        scopes: Mapping[str, Scope],
        *,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._scopes = dict(scopes)
        self._limiter = limiter if limiter is not None and limiter.enabled else None
        self._clock = clock

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        try:
            principal = self.admit(details.method, details.invocation_metadata)
        except ServiceError as exc:
            return _rebuilt(handler, _refusal(to_status(exc)))
        # grpc.aio runs each call in a task of its own, interceptors and handler alike: the caller set here
        # is the handler's, and no other call's (tests/integration/test_auth_host.py holds it to that). The
        # handler itself is returned as it is, so an admitted call costs no wrapper.
        _principal.set(principal)
        return handler

    def admit(self, method: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> Principal:
        principal = self._keys.lookup(bearer_key(metadata))
        scope = self._scopes.get(method)
        if scope is None:
            raise ScopeUndeclared(method)  # fail closed: a servicer registered without scopes_of
        if self._limiter is not None:
            wait = self._limiter.allow(principal.merchant_id, self._clock())
            if wait is not None:
                raise RateLimited(principal.merchant_id, wait)
        principal.require(scope)
        return principal


Behavior = Callable[..., Any]


def _rebuilt(handler: Handler, wrap: Callable[[Behavior, bool], Behavior]) -> Handler:
    """The same kind of handler with the same response serializer and no request deserializer, its behaviour
    wrapped; `wrap` is told whether the kind streams its responses. A refusal never reads the request, so the
    body of a caller refused here is never parsed, and a body that does not decode is answered as the refusal
    (the CallInterceptor decodes only for a handler that has a deserializer)."""
    kinds: list[tuple[Behavior | None, bool, Callable[..., Handler]]] = [
        (handler.unary_unary, False, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, True, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, False, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, True, grpc.stream_stream_rpc_method_handler),
    ]
    for behavior, streams, make in kinds:
        if behavior is not None:
            return make(wrap(behavior, streams), response_serializer=handler.response_serializer)
    return handler


def _refusal(status: grpc.Status) -> Callable[[Behavior, bool], Behavior]:
    async def refuse(request: Any, context: Context) -> None:
        await context.abort_with_status(status)  # type: ignore[attr-defined]  # grpc-stubs 1.53 lacks it on aio

    # A streaming refusal is an async generator too: an outer interceptor (the CallInterceptor)
    # iterates what it wraps.
    async def refuse_stream(request: Any, context: Context) -> AsyncIterator[Any]:
        await refuse(request, context)
        yield  # never reached: the abort raises

    return lambda behavior, streams: refuse_stream if streams else refuse
