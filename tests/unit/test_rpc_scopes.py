"""Every RPC of every paymesh service declares the scope a key needs, read from the protos' descriptors."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool

from paymesh.chassis.auth import Scope, scopes_of
from paymesh.chassis.auth.scopes import MERCHANT_SCOPES, PLATFORM_SCOPES
from tests.served import PROTO_MODULES, SERVED, OrderApi, PaymentApi


def test_every_service_the_protos_define_has_a_servicer_here() -> None:
    defined = {name for m in PROTO_MODULES for name in (s.full_name for s in m.DESCRIPTOR.services_by_name.values())}
    assert defined == set(SERVED)


@pytest.mark.parametrize("service", sorted(SERVED))
def test_every_rpc_declares_its_scope(service: str) -> None:
    scopes = scopes_of(SERVED[service], service)
    methods = descriptor_pool.Default().FindServiceByName(service).methods
    assert set(scopes) == {f"/{service}/{m.name}" for m in methods}


def test_merchant_services_ask_merchant_scopes_and_the_bank_platform_ones() -> None:
    for service, servicer in SERVED.items():
        scopes = set(scopes_of(servicer, service).values())
        if service.startswith("paymesh.gateway."):
            assert scopes <= PLATFORM_SCOPES, service
            assert scopes_of(servicer, service)[f"/{service}/Configure"] is Scope.OPERATOR
        else:
            assert scopes <= MERCHANT_SCOPES, service
    order = scopes_of(OrderApi, "paymesh.order.v1.OrderService")
    assert order["/paymesh.order.v1.OrderService/CreateOrder"] is Scope.ORDERS_WRITE
    assert order["/paymesh.order.v1.OrderService/WatchOrder"] is Scope.ORDERS_READ
    payment = scopes_of(PaymentApi, "paymesh.payment.v1.PaymentService")
    assert payment["/paymesh.payment.v1.PaymentService/RefundPayment"] is Scope.REFUNDS_WRITE
