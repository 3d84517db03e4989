"""API keys of the merchants and operators: making, storing, following and checking them on every call."""

from paymesh.chassis.auth.errors import (
    ApiKeyExpired,
    ApiKeyInvalid,
    ApiKeyMissing,
    ApiKeyRevoked,
    RateLimited,
    ScopeMissing,
)
from paymesh.chassis.auth.interceptor import AuthInterceptor, UndeclaredScopes, current_principal, requires, scopes_of
from paymesh.chassis.auth.keys import ApiKey, ApiKeyRecord, Pepper, Principal, check
from paymesh.chassis.auth.pepper import load_pepper
from paymesh.chassis.auth.ratelimit import RateLimiter
from paymesh.chassis.auth.registry import KeyRegistry
from paymesh.chassis.auth.scopes import MERCHANT_SCOPES, Scope
from paymesh.chassis.auth.store import KeyNotFound, KeyStore

__all__ = [
    "MERCHANT_SCOPES",
    "ApiKey",
    "ApiKeyExpired",
    "ApiKeyInvalid",
    "ApiKeyMissing",
    "ApiKeyRecord",
    "ApiKeyRevoked",
    "AuthInterceptor",
    "KeyNotFound",
    "KeyRegistry",
    "KeyStore",
    "Pepper",
    "Principal",
    "RateLimited",
    "RateLimiter",
    "Scope",
    "ScopeMissing",
    "UndeclaredScopes",
    "check",
    "current_principal",
    "load_pepper",
    "requires",
    "scopes_of",
]
