"""The caller's side of the key check: client interceptors that send `authorization: Bearer <key>` on every call."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import grpc

from paymesh.chassis.auth.keys import ApiKey

METADATA_KEY = "authorization"


def _with_key(details: grpc.aio.ClientCallDetails, value: str) -> grpc.aio.ClientCallDetails:
    """The call's details with the channel's key, unless the call names its own (an operator's call)."""
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if METADATA_KEY in metadata:
        return details
    metadata[METADATA_KEY] = value
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                      details.wait_for_ready)


class _Unary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]  # generic only in grpc-stubs
    def __init__(self, value: str) -> None:
        self._value = value

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        return await continuation(_with_key(details, self._value), request)


class _Stream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]  # generic only in grpc-stubs
    def __init__(self, value: str) -> None:
        self._value = value

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        return await continuation(_with_key(details, self._value), request)


def bearer(api_key: str | ApiKey | None) -> list[Any]:  # grpc-stubs leaves ClientInterceptor a placeholder
    """Interceptors for `grpc.aio.*_channel(..., interceptors=bearer(key))`; none for no key (the call then
    meets API_KEY_MISSING, which says what to do)."""
    metadata = key_metadata(api_key)
    if not metadata:
        return []
    ((_, value),) = metadata
    return [_Unary(value), _Stream(value)]


def key_metadata(api_key: str | ApiKey | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries `api_key` (none for no key)."""
    if api_key is None or api_key == "":
        return ()
    secret = api_key.reveal() if isinstance(api_key, ApiKey) else api_key
    return ((METADATA_KEY, f"Bearer {secret}"),)


S = TypeVar("S")


class _KeyedStub:
    def __init__(self, stub: object, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if not self._metadata:
            return method
        bound = functools.partial(method, metadata=self._metadata)  # a call's own metadata= still wins
        setattr(self, name, bound)  # made once per method
        return bound


def keyed(stub: S, api_key: str | ApiKey | None) -> S:
    """`stub` (a generated stub) whose every method sends `api_key` as call metadata: what `bearer` does for a
    whole channel, without a channel interceptor, which puts each of its calls on grpc's slower path."""
    return cast(S, _KeyedStub(stub, key_metadata(api_key)))
