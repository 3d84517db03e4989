"""The key check of the running mesh, for every RPC the protos define: no key, the wrong scope, another
merchant's objects; built from the descriptors, so a new RPC is in the matrix the day it is added."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from paymesh.chassis.auth import MERCHANT_SCOPES, Scope, scopes_of
from paymesh.ops.launcher import Mesh
from tests.e2e.harness import RpcError, call_empty, merchant_key
from tests.served import SERVED, SERVICE_OF

pytestmark = pytest.mark.timeout(120)


def matrix() -> list[tuple[str, str, Scope]]:
    """(service, method path, the scope it declares) for every RPC of every served service."""
    rows = []
    for full_name, servicer in SERVED.items():
        for path, scope in sorted(scopes_of(servicer, full_name).items()):
            rows.append((SERVICE_OF[full_name], path, scope))
    return rows


async def call(mesh: Mesh, service: str, path: str, key: Any) -> RpcError | None:
    return await call_empty(mesh.addr(service), mesh.client_tls, path, key)


async def test_every_rpc_refuses_a_call_without_a_key(mesh: Mesh) -> None:
    for service, path, _ in matrix():
        err = await call(mesh, service, path, None)
        assert err is not None and (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING"), path
        assert "authorization: Bearer" in err.message, path


async def test_every_rpc_refuses_a_key_without_its_scope(mesh: Mesh) -> None:
    keys: dict[Scope, Any] = {}
    for service, path, scope in matrix():
        # A merchant key with every merchant scope but this one (for the bank's RPCs: with all of them).
        if scope not in keys:
            _, keys[scope] = await merchant_key(mesh, f"lacks {scope.value}", (MERCHANT_SCOPES - {scope}))
        err = await call(mesh, service, path, keys[scope])
        assert err is not None and (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING"), path
        assert err.metadata["scope"] == scope.value, path


async def test_an_unknown_key_is_invalid_everywhere(mesh: Mesh) -> None:
    forged = "sk_mesh_" + "A" * 43
    for service, path, _ in matrix():
        err = await call(mesh, service, path, forged)
        assert err is not None and (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID"), path
        assert forged not in err.message
