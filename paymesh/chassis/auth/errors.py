"""The refusals of the key check, each with the reason DESIGN.md gives it; no message holds a secret."""

from __future__ import annotations

from paymesh.chassis.auth.scopes import Scope
from paymesh.chassis.errors import PermissionDenied, ResourceExhausted, Unauthenticated


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


class RateLimited(ResourceExhausted):
    """Over the merchant's rate; `retry_after_s` goes to the client as google.rpc.RetryInfo."""

    def __init__(self, merchant_id: str, retry_after_s: float) -> None:
        super().__init__(
            f"merchant {merchant_id} is over its request rate: retry after {retry_after_s:.3f}s",
            reason="RATE_LIMITED",
            metadata={"merchant_id": merchant_id},
            retry_after_s=retry_after_s,
        )
