"""Probes the TLS tests of both tiers share."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paymesh.chassis.tls import ClientTls, channel


async def health(addr: str, tls: ClientTls | None) -> str:
    """SERVING, or the code of the refusal (a failed handshake is UNAVAILABLE at once: no wait_for_ready)."""
    async with channel(addr, tls) as probe:
        try:
            reply = await health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
