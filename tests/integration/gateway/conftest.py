"""gateway_mock in-process on a free port, on a real nats-server and each store backend, and its stub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway_mock.service import SPEC
from paymesh.chassis.config import Settings
from paymesh.chassis.service import Runtime, ServiceHost
from paymesh.gateway.v1 import gateway_service_pb2_grpc
from paymesh.ops.natsserver import NatsServer, free_port


@pytest.fixture
async def gateway(nats_server: NatsServer, db_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    """A GatewayServiceStub connected to a running gateway_mock."""
    env = {
        "PAYMESH_NATS_URL": nats_server.url,
        "GATEWAY_MOCK_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "GATEWAY_MOCK_DB_URL": db_url,
        "PAYMESH_DATA_DIR": str(tmp_path),
        "PAYMESH_SHUTDOWN_GRACE_S": "0.5",
    }
    settings = Settings.from_env(SPEC, env)
    runtime = Runtime(SPEC, settings)
    host = ServiceHost(runtime, SPEC.wire(runtime, None))
    await host.start()
    try:
        async with grpc.aio.insecure_channel(settings.grpc_addr) as channel:
            yield gateway_service_pb2_grpc.GatewayServiceStub(channel)
    finally:
        await host.stop()
