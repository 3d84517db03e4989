"""order_svc as the chassis runs it: its ServiceSpec, and its wiring (servicer, consumers, deadline sweeper)."""

from __future__ import annotations

from order_svc.api import OrderApi
from order_svc.handlers import SagaAnswers
from order_svc.store import OrderRepository, metadata, orders_table
from order_svc.sweeper import DeadlineSweeper
from order_svc.watch import OrderWatch
from paymesh.chassis.service import GrpcService, Runtime, Wiring
from paymesh.chassis.spec import Durable, ServiceSpec, no_settings
from paymesh.order.v1 import order_service_pb2_grpc


def wire(runtime: Runtime, settings: None) -> Wiring:
    """The servicer, the answers' consumers and the sweeper share one repository and one watch hub."""
    orders = OrderRepository(orders_table(runtime.metadata))
    watch = OrderWatch()
    answers = SagaAnswers(runtime, orders, watch)
    sweeper = DeadlineSweeper(runtime, orders, watch)
    api = OrderApi(runtime, orders, watch)
    return Wiring(
        services=[
            GrpcService("paymesh.order.v1.OrderService", api, order_service_pb2_grpc.add_OrderServiceServicer_to_server)
        ],
        consumers=answers.consumers(),
        background=[sweeper.run],
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
    consumes=(Durable("INVENTORY", "order_svc-inventory"), Durable("PAYMENT", "order_svc-payment")),
)
