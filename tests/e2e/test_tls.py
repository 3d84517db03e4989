"""End to end on TLS (`Mesh(tls=True)`, as `paymesh up --tls`), then on mTLS: every hop (the tests' client, the
launcher's health checks, payment_svc -> gateway) verified against the mesh's CA; a confirmed order, a decline
and a cancel after confirmation with its refund; plaintext, another CA, and under mTLS no certificate, refused."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from paymesh.chassis.tls import ClientTls
from paymesh.ops.launcher import Mesh
from paymesh.ops.services import NAMES
from paymesh.ops.tls import ensure_mesh_tls
from tests.e2e.harness import CS, Clients, statuses
from tests.probes import health


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
async def test_orders_confirm_decline_and_cancel_with_tls_on_every_hop(
    new_mesh: Callable[..., Awaitable[Mesh]], mutual: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    mesh = await new_mesh(tls=True, **({"PAYMESH_TLS_CLIENT_AUTH": "require"} if mutual else {}))
    assert mesh.tls_files is not None and mesh.client_tls is not None
    assert mesh.client_tls.cert is not None  # the tools' certificate, shown where one is asked for
    async with Clients(mesh).session() as clients:
        sku = await clients.put_product(10)
        paid = await clients.create_order([(sku, 2, 1250)])
        declined = await clients.create_order([(sku, 1, 700)], token="tok_chargeDeclined")
        await clients.wait_order(paid.order_id, statuses("CONFIRMED"))
        failed = await clients.wait_order(declined.order_id, statuses("PAYMENT_FAILED"))
        assert "card_declined" in failed.failure_reason
        await clients.cancel(paid.order_id, reason="changed mind")
        await clients.wait_order(paid.order_id, statuses("CANCELLED"))
        charge = await clients.one_charge(paid.order_id)
        assert (charge.status, charge.refunded_minor) == (CS.CHARGE_STATUS_REFUNDED, 2500)
        await clients.wait_stock(sku, (10, 0, 0))

    other = ensure_mesh_tls(tmp_path_factory.mktemp("other-ca"), {})
    only_ca = ClientTls.load(mesh.tls_files.ca)
    for service in NAMES:
        addr = mesh.addr(service)
        assert await health(addr, mesh.client_tls) == "SERVING"
        assert await health(addr, None) == "UNAVAILABLE", f"{service} refuses a plaintext client"
        assert await health(addr, ClientTls.load(other.ca)) == "UNAVAILABLE", f"{service} is not another CA's"
        assert await health(addr, only_ca) == ("UNAVAILABLE" if mutual else "SERVING"), service
    gateway_log = mesh.child("gateway_mock").log_path.read_text()
    if mutual:  # the bank knows which service called: payment_svc shows its own certificate
        assert "GatewayService/Charge called by payment_svc" in gateway_log
        assert "GatewayService/Refund called by payment_svc" in gateway_log
