"""gateway_mock in-process on a free port, on a real nats-server and each store backend, and its stubs: the
platform's (what payment_svc calls with), an operator's (Configure) and a merchant's (refused everywhere)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway_mock.service import SPEC
from paymesh.chassis.auth.bearer import bearer
from paymesh.chassis.auth.keys import PLATFORM_MERCHANT
from paymesh.chassis.config import Settings
from paymesh.chassis.service import Runtime, ServiceHost
from paymesh.gateway.v1 import gateway_service_pb2_grpc
from paymesh.ops.natsserver import NatsServer, free_port
from tests.keys import AUTH_ENV, MERCHANT_A, PLATFORM_ENV, PLATFORM_KEY, issue


@dataclass
class GatewayRig:
    """A running gateway_mock, the keys the tests call it with, and stubs over channels it closes at the end."""

    host: ServiceHost
    addr: str
    env: dict[str, str]
    operator_key: str
    merchant_key: str
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def stub(self, api_key: str | None) -> Any:
        """A GatewayServiceStub sending `api_key` (None: no key at all)."""
        channel = grpc.aio.insecure_channel(self.addr, interceptors=bearer(api_key))
        self.channels.append(channel)
        return gateway_service_pb2_grpc.GatewayServiceStub(channel)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(None)


def gateway_env(nats_url: str, db_url: str, data_dir: Path) -> dict[str, str]:
    return {
        **AUTH_ENV,
        **PLATFORM_ENV,
        "PAYMESH_NATS_URL": nats_url,
        "GATEWAY_MOCK_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "GATEWAY_MOCK_DB_URL": db_url,
        "PAYMESH_DATA_DIR": str(data_dir),
        "PAYMESH_SHUTDOWN_GRACE_S": "0.5",
    }


@pytest.fixture
async def gateway_rig(nats_server: NatsServer, db_url: str, tmp_path: Path) -> AsyncIterator[GatewayRig]:
    # Keys made before start: the registry loads them at start, so no test waits for its watch.
    _, operator_key = await issue(nats_server.url, PLATFORM_MERCHANT, frozenset(), operator=True)
    _, merchant_key = await issue(nats_server.url, MERCHANT_A)
    env = gateway_env(nats_server.url, db_url, tmp_path)
    settings = Settings.from_env(SPEC, env)
    runtime = Runtime(SPEC, settings)
    host = ServiceHost(runtime, SPEC.wire(runtime, SPEC.settings(env)))
    await host.start()
    rig = GatewayRig(host, settings.grpc_addr, env, operator_key, merchant_key)
    try:
        yield rig
    finally:
        await rig.close()
        await host.stop()


@pytest.fixture
def gateway(gateway_rig: GatewayRig) -> Any:
    """A GatewayServiceStub calling with the platform key, as payment_svc does."""
    return gateway_rig.stub(PLATFORM_KEY)


@pytest.fixture
def operator(gateway_rig: GatewayRig) -> Any:
    """A GatewayServiceStub calling with an operator key from the bucket: what Configure needs."""
    return gateway_rig.stub(gateway_rig.operator_key)
