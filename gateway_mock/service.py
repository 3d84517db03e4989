"""Wires gateway_mock onto the chassis: its settings (the platform key), its gRPC servicer over its own store.
It consumes no events (no handlers.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway_mock.api import GatewayApi
from gateway_mock.store import GatewayRepository, metadata
from paymesh.chassis.auth import ApiKey, Scope
from paymesh.chassis.auth.keys import PLATFORM_PREFIX, TrustedKey, is_platform_key
from paymesh.chassis.config import ConfigError
from paymesh.chassis.service import GrpcService, Runtime, Wiring
from paymesh.chassis.spec import ServiceSpec
from paymesh.gateway.v1 import gateway_service_pb2_grpc

SERVICE_NAME = "paymesh.gateway.v1.GatewayService"
PLATFORM_KEY_ENV = "GATEWAY_MOCK_PLATFORM_KEY"


@dataclass(frozen=True)
class GatewaySettings:
    """What gateway_mock alone reads from the environment: the key the bank knows paymesh by."""

    platform_key: ApiKey  # its repr hides the secret

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewaySettings:
        # Neither refusal repeats the value: it is a secret, or a typo of one.
        raw = (env.get(PLATFORM_KEY_ENV) or "").strip()
        if not raw:
            raise ConfigError(f"{PLATFORM_KEY_ENV} is not set: the bank admits paymesh by its platform key "
                              f"({PLATFORM_PREFIX}...); `paymesh up` makes one and gives it to both sides")
        if not is_platform_key(raw):
            raise ConfigError(f"{PLATFORM_KEY_ENV} is not a platform key (they start {PLATFORM_PREFIX}); "
                              "`paymesh up` makes one and gives it to both sides")
        return cls(platform_key=ApiKey(raw))


def wire(runtime: Runtime, settings: GatewaySettings) -> Wiring:
    api = GatewayApi(runtime, GatewayRepository(runtime.metadata))
    add_servicer = gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server
    # The platform key, trusted from the settings beside the bucket's keys: Charge, Refund and the reads
    # need its scope; Configure needs an operator key from the bucket.
    platform = TrustedKey(name=PLATFORM_KEY_ENV, secret=settings.platform_key, scopes=frozenset({Scope.PLATFORM}))
    return Wiring(services=[GrpcService(SERVICE_NAME, api, add_servicer)], trusted_keys=[platform])


SPEC = ServiceSpec(
    name="gateway_mock",
    env_prefix="GATEWAY_MOCK",
    grpc_port=50054,
    stream=None,
    metadata=metadata,
    migrations="gateway_mock.migrations",
    wire=wire,
    settings=GatewaySettings.from_env,
)
