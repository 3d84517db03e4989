"""Wires inventory_svc onto the chassis: its gRPC servicer and the events it consumes."""

from inventory_svc.api import InventoryServiceServicer
from inventory_svc.handlers import SagaHandlers
from inventory_svc.store import Tables
from paymesh.chassis.service import GrpcService, Runtime, Wiring
from paymesh.inventory.v1 import inventory_service_pb2_grpc

SERVICE_NAME = "paymesh.inventory.v1.InventoryService"


def wire(runtime: Runtime) -> Wiring:
    tables = Tables.of(runtime.metadata)
    servicer = InventoryServiceServicer(runtime, tables)
    add_servicer = inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server
    return Wiring(
        services=[GrpcService(SERVICE_NAME, servicer, add_servicer)],
        consumers=SagaHandlers(tables, runtime.publish).consumers(),
    )
