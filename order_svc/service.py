"""Wires order_svc onto the chassis: its gRPC servicer, the events it consumes, and its deadline sweeper."""

from __future__ import annotations

from dataclasses import dataclass

from order_svc.api import OrderApi
from order_svc.handlers import SagaAnswers, consumers
from order_svc.store import OrderRepository, metadata, orders_table
from order_svc.sweeper import DeadlineSweeper
from order_svc.watch import OrderWatch
from paymesh.chassis.service import GrpcService, Runtime, Wiring
from paymesh.chassis.spec import ServiceSpec, no_settings
from paymesh.order.v1 import order_service_pb2_grpc

SERVICE_NAME = "paymesh.order.v1.OrderService"


@dataclass
class OrderService:
    """The parts of one order_svc, kept together so tests can reach the sweeper and the watch hub."""

    api: OrderApi
    answers: SagaAnswers
    sweeper: DeadlineSweeper
    watch: OrderWatch


def build(runtime: Runtime) -> OrderService:
    orders = OrderRepository(orders_table(runtime.metadata))
    watch = OrderWatch()
    return OrderService(
        api=OrderApi(runtime, orders, watch),
        answers=SagaAnswers(runtime, orders, watch),
        sweeper=DeadlineSweeper(runtime, orders, watch),
        watch=watch,
    )


def wire(runtime: Runtime, settings: None = None, service: OrderService | None = None) -> Wiring:
    service = service or build(runtime)
    return Wiring(
        services=[GrpcService(SERVICE_NAME, service.api, order_service_pb2_grpc.add_OrderServiceServicer_to_server)],
        consumers=consumers(service.answers),
        background=[service.sweeper.run],
    )


SPEC = ServiceSpec(
    name="order_svc",
    env_prefix="ORDER_SVC",
    grpc_port=50051,
    stream="ORDER",
    metadata=metadata,
    migrations="order_svc.migrations",
    wire=wire,
    settings=no_settings,
)
