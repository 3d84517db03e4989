"""The key check of the running mesh, for every RPC the protos define: no key, the wrong scope, another
merchant's objects; built from the descriptors, so a new RPC is in the matrix the day it is added."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory

from paymesh.chassis.auth import MERCHANT_SCOPES, Scope, scopes_of
from paymesh.chassis.auth.bearer import bearer
from paymesh.chassis.tls import channel as tls_channel
from paymesh.ops.launcher import Mesh
from tests.e2e.harness import RpcError, merchant_key
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
    """The method called with an empty request of its input type (the key check comes first)."""
    full_name, method_name = path.strip("/").split("/")
    method = descriptor_pool.Default().FindServiceByName(full_name).methods_by_name[method_name]
    request = message_factory.GetMessageClass(method.input_type)()
    async with tls_channel(mesh.addr(service), mesh.client_tls, interceptors=bearer(key)) as channel:
        try:
            if method.server_streaming:
                stream = channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                              response_deserializer=lambda raw: raw)
                async for _ in stream(request, timeout=5):
                    break
            else:
                unary = channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                            response_deserializer=lambda raw: raw)
                await unary(request, timeout=5)
        except grpc.aio.AioRpcError as err:
            return RpcError.of(err)
    return None


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
