"""Every service the protos define and the servicer class that serves it, for the tests built from descriptors."""

from __future__ import annotations

from gateway_mock.api import GatewayApi
from inventory_svc.api import InventoryApi
from order_svc.api import OrderApi
from payment_svc.api import PaymentApi
from paymesh.gateway.v1 import gateway_service_pb2
from paymesh.inventory.v1 import inventory_service_pb2
from paymesh.order.v1 import order_service_pb2
from paymesh.payment.v1 import payment_service_pb2
from paymesh.webhook.v1 import webhook_service_pb2
from webhook_svc.api import WebhookApi

# Every service the protos define, and the servicer that serves it: a new service's proto without
# an entry here fails tests/unit/test_rpc_scopes.py.
SERVED = {
    "paymesh.order.v1.OrderService": OrderApi,
    "paymesh.inventory.v1.InventoryService": InventoryApi,
    "paymesh.payment.v1.PaymentService": PaymentApi,
    "paymesh.gateway.v1.GatewayService": GatewayApi,
    "paymesh.webhook.v1.WebhookService": WebhookApi,
}
PROTO_MODULES = (order_service_pb2, inventory_service_pb2, payment_service_pb2, gateway_service_pb2,
                 webhook_service_pb2)
# The mesh service (paymesh.ops.services) that serves each.
SERVICE_OF = {
    "paymesh.order.v1.OrderService": "order_svc",
    "paymesh.inventory.v1.InventoryService": "inventory_svc",
    "paymesh.payment.v1.PaymentService": "payment_svc",
    "paymesh.gateway.v1.GatewayService": "gateway_mock",
    "paymesh.webhook.v1.WebhookService": "webhook_svc",
}
