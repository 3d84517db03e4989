"""The refusals of the key check, each with the reason DESIGN.md gives it; no message holds a secret."""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from paymesh.chassis.auth.scopes import Scope
from paymesh.chassis.errors import ERROR_DOMAIN, PermissionDenied, ServiceError, Unauthenticated


class ApiKeyMissing(Unauthenticated):
    def __init__(self) -> None:
        super().__init__(
            "no API key: send metadata `authorization: Bearer <api key>` (`paymesh keys create` makes one)",
            reason="API_KEY_MISSING",
        )


class ApiKeyInvalid(Unauthenticated):
    def __init__(self, why: str = "this API key is not known") -> None:
        super().__init__(
            f"{why}: check it was copied whole, or create one with `paymesh keys create`",
            reason="API_KEY_INVALID",
        )


class ApiKeyExpired(Unauthenticated):
    def __init__(self, key_id: str, expired_at: str) -> None:
        super().__init__(
            f"API key {key_id} expired at {expired_at}: use the key that replaced it, or create a new one",
            reason="API_KEY_EXPIRED",
            metadata={"key_id": key_id, "expired_at": expired_at},
        )


class ApiKeyRevoked(Unauthenticated):
    def __init__(self, key_id: str, revoked_at: str) -> None:
        super().__init__(
            f"API key {key_id} was revoked at {revoked_at}: create a new one with `paymesh keys create`",
            reason="API_KEY_REVOKED",
            metadata={"key_id": key_id, "revoked_at": revoked_at},
        )


class ScopeMissing(PermissionDenied):
    def __init__(self, scope: Scope, key_id: str) -> None:
        super().__init__(
            f"API key {key_id} lacks scope {scope.value}: use a key that holds it, or create one with "
            f"`paymesh keys create --scope {scope.value}`",
            reason="SCOPE_MISSING",
            metadata={"scope": scope.value, "key_id": key_id},
        )


class ScopeUndeclared(PermissionDenied):
    """The interceptor was handed no scope for a method: refused, so nothing unguarded is served."""

    def __init__(self, method: str) -> None:
        super().__init__(f"{method} declares no scope and is refused", reason="SCOPE_UNDECLARED",
                         metadata={"method": method})


class RateLimited(ServiceError):
    """Over the merchant's rate; `retry_after_s` goes to the client as google.rpc.RetryInfo."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, merchant_id: str, retry_after_s: float) -> None:
        super().__init__(
            f"merchant {merchant_id} is over its request rate: retry after {retry_after_s:.3f}s",
            reason="RATE_LIMITED",
            metadata={"merchant_id": merchant_id},
        )
        self.retry_after_s = retry_after_s


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]  # protobuf stubs want Message; the details are
    return packed


def rate_limited_status(err: RateLimited) -> grpc.Status:
    """As `paymesh.chassis.errors.to_status`, plus RetryInfo, which that one does not carry (yet)."""
    millis = max(1, math.ceil(err.retry_after_s * 1000))
    delay = duration_pb2.Duration(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN, metadata=err.metadata)),
        _pack(error_details_pb2.RetryInfo(retry_delay=delay)),
    ]
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=err.message, details=details)
    return rpc_status.to_status(status)
