"""What an API key may do: the scopes of DESIGN.md's "Merchants and access"."""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    """One permission an RPC declares and a key holds; the value is what keys store and print."""

    ORDERS_READ = "orders:read"
    ORDERS_WRITE = "orders:write"
    CATALOG_READ = "catalog:read"
    CATALOG_WRITE = "catalog:write"
    PAYMENTS_READ = "payments:read"
    REFUNDS_WRITE = "refunds:write"
    WEBHOOKS_READ = "webhooks:read"
    WEBHOOKS_WRITE = "webhooks:write"
    # Gateway `Configure`, key management: held by operator keys only, never by a merchant's.
    OPERATOR = "operator"
    # The bank's charge and refund calls: held by the platform's own key (payment_svc's), never a merchant's.
    PLATFORM = "platform"


# Scopes that are never a merchant's.
PLATFORM_SCOPES: frozenset[Scope] = frozenset({Scope.OPERATOR, Scope.PLATFORM})
MERCHANT_SCOPES: frozenset[Scope] = frozenset(s for s in Scope if s not in PLATFORM_SCOPES)


def parse_scopes(values: list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[Scope]:
    """Scopes named by a person (`--scope orders:read`); an unknown name is a ValueError naming the choices."""
    unknown = sorted(v for v in values if v not in Scope._value2member_map_)
    if unknown:
        choices = ", ".join(s.value for s in Scope)
        raise ValueError(f"unknown scope {', '.join(unknown)}: use one of {choices}")
    return frozenset(Scope(v) for v in values)
