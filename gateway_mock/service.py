"""Wires gateway_mock onto the chassis: its gRPC servicer over its own store. It consumes no events."""

from gateway_mock.api import GatewayServicer
from gateway_mock.gateway import Gateway
from gateway_mock.store import Store, metadata
from paymesh.chassis.service import GrpcService, Runtime, Wiring
from paymesh.chassis.spec import ServiceSpec, no_settings
from paymesh.gateway.v1 import gateway_service_pb2_grpc

SERVICE_NAME = "paymesh.gateway.v1.GatewayService"


def wire(runtime: Runtime, settings: None = None) -> Wiring:
    gateway = Gateway(runtime.db, Store(runtime.metadata))
    servicer = GatewayServicer(gateway)
    add_servicer = gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server
    return Wiring(services=[GrpcService(SERVICE_NAME, servicer, add_servicer)])


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
