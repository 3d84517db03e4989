"""Wires gateway_mock onto the chassis: its gRPC servicer over its own store. It consumes no events (no handlers.py)."""

from gateway_mock.api import GatewayApi
from gateway_mock.store import GatewayRepository, metadata
from paymesh.chassis.service import GrpcService, Runtime, Wiring
from paymesh.chassis.spec import ServiceSpec, no_settings
from paymesh.gateway.v1 import gateway_service_pb2_grpc

SERVICE_NAME = "paymesh.gateway.v1.GatewayService"


def wire(runtime: Runtime, settings: None = None) -> Wiring:
    api = GatewayApi(runtime, GatewayRepository(runtime.metadata))
    add_servicer = gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server
    return Wiring(services=[GrpcService(SERVICE_NAME, api, add_servicer)])


SPEC = ServiceSpec(
    name="gateway_mock",
    env_prefix="GATEWAY_MOCK",
    grpc_port=50054,
    stream=None,
    metadata=metadata,
    migrations="gateway_mock.migrations",
    wire=wire,
    settings=no_settings,
)
