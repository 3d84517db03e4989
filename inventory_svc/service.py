"""Wires inventory_svc onto the chassis: its gRPC servicer and the events it consumes."""

from inventory_svc.api import InventoryServiceServicer
from inventory_svc.handlers import SagaHandlers
from inventory_svc.store import Tables, metadata
from paymesh.chassis.service import GrpcService, Runtime, Wiring
from paymesh.chassis.spec import ServiceSpec, no_settings
from paymesh.inventory.v1 import inventory_service_pb2_grpc

SERVICE_NAME = "paymesh.inventory.v1.InventoryService"


def wire(runtime: Runtime, settings: None = None) -> Wiring:
    tables = Tables.of(runtime.metadata)
    servicer = InventoryServiceServicer(runtime, tables)
    add_servicer = inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server
    return Wiring(
        services=[GrpcService(SERVICE_NAME, servicer, add_servicer)],
        consumers=SagaHandlers(tables, runtime.publish).consumers(),
    )


SPEC = ServiceSpec(
    name="inventory_svc",
    env_prefix="INVENTORY_SVC",
    grpc_port=50052,
    stream="INVENTORY",
    metadata=metadata,
    migrations="inventory_svc.migrations",
    wire=wire,
    settings=no_settings,
)
