"""Wires inventory_svc onto the chassis: its gRPC servicer and the events it consumes."""

from inventory_svc.api import InventoryApi
from inventory_svc.handlers import SagaHandlers
from inventory_svc.store import InventoryRepository, metadata
from paymesh.chassis.service import GrpcService, Runtime, Wiring
from paymesh.chassis.spec import Durable, ServiceSpec, no_settings
from paymesh.inventory.v1 import inventory_service_pb2_grpc

SERVICE_NAME = "paymesh.inventory.v1.InventoryService"


def wire(runtime: Runtime, settings: None = None) -> Wiring:
    inventory = InventoryRepository(runtime.metadata)
    add_servicer = inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server
    return Wiring(
        services=[GrpcService(SERVICE_NAME, InventoryApi(runtime, inventory), add_servicer)],
        consumers=SagaHandlers(runtime, inventory).consumers(),
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
    consumes=(Durable("ORDER", "inventory_svc-order"), Durable("PAYMENT", "inventory_svc-payment")),
)
