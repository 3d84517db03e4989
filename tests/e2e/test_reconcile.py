"""End to end, `paymesh reconcile`: a mesh's payments against its gateway's charges and refunds, read from the
stores of running services; a charge made behind the mesh's back and a payment row altered are named."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from paymesh.chassis.db import create_engine
from paymesh.ops.launcher import Mesh
from paymesh.ops.reconcile import Report, reconcile
from tests.e2e.harness import PS, Clients, paymesh_command, statuses, stores_env


async def paymesh_reconcile(mesh: Mesh | None, *args: str, data_dir: Path | None = None) -> tuple[int, str, str]:
    """The command as an operator runs it, in a process of its own, with only the stores' variables set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAYMESH_", "PAYMENT_SVC_", "GATEWAY_MOCK_"))}
    if mesh is not None:
        env |= stores_env(mesh)
        data_dir = mesh.data_dir
    assert data_dir is not None
    return await paymesh_command(env, "reconcile", "--data-dir", str(data_dir), *args, timeout=30)


async def confirmed_order(clients: Clients, sku: str, price: int = 1500) -> str:
    order = await clients.create_order([(sku, 1, price)])
    await clients.wait_order(order.order_id, statuses("CONFIRMED"))
    await clients.wait_payment(order.order_id, [PS.PAYMENT_STATUS_SUCCEEDED])
    return order.order_id


@pytest.mark.timeout(90)
async def test_a_healthy_mesh_reconciles_with_counts_per_status(mesh: Mesh, clients: Clients) -> None:
    since = datetime.now(UTC)
    sku = await clients.put_product(10)
    await confirmed_order(clients, sku, 1500)
    declined = await clients.create_order([(sku, 1, 700)], token="tok_chargeDeclined")
    cancelled = await confirmed_order(clients, sku, 900)
    await clients.cancel(cancelled)
    await clients.wait_order(declined.order_id, statuses("PAYMENT_FAILED"))
    await clients.wait_order(cancelled, statuses("CANCELLED"))
    await clients.wait_payment(cancelled, [PS.PAYMENT_STATUS_REFUNDED])

    report = await reconcile(stores_env(mesh), since)
    assert report.ok, report.mismatches
    c = report.counts
    assert (c.payments, c.charges, c.refunds) == (3, 3, 1)
    assert c.payments_by_status == {"FAILED": 1, "REFUNDED": 1, "SUCCEEDED": 1}
    assert c.charges_by_status == {"DECLINED": 1, "REFUNDED": 1, "SUCCEEDED": 1}
    assert (c.declines_agreeing, c.in_flight) == (1, 0)

    code, out, err = await paymesh_reconcile(mesh, "--since", since.isoformat())
    assert (code, err) == (0, ""), out
    assert out.splitlines()[0].startswith("reconciled 3 payments and 3 charges, 1 refund created since ")
    assert out.splitlines()[0].endswith(": all agree")
    code, out, _ = await paymesh_reconcile(mesh, "--since", since.isoformat(), "--json")
    assert code == 0
    body = json.loads(out)
    assert body["ok"] is True and body["mismatches"] == []
    assert body["counts"]["charges_by_status"] == {"DECLINED": 1, "REFUNDED": 1, "SUCCEEDED": 1}


@pytest.mark.timeout(90)
async def test_a_charge_made_at_the_gateway_with_no_payment_is_named(
    new_mesh: Callable[..., Awaitable[Mesh]],
) -> None:
    mesh = await new_mesh()
    async with Clients(mesh).session() as clients:
        await confirmed_order(clients, await clients.put_product(5))
        stray_order = f"ord_stray_{uuid.uuid4().hex[:8]}"
        stray = await clients.client.charge(merchant_id=clients.merchant_id, amount_minor=4200, currency="USD",
                                            payment_method_token="tok_visa", order_id=stray_order)

    report = await reconcile(stores_env(mesh))
    assert [m.kind for m in report.mismatches] == ["charge_without_payment"], report.mismatches
    m = report.mismatches[0]
    assert (m.merchant_id, m.order_id, m.payment_id, m.charge_id) == (clients.merchant_id, stray_order, "",
                                                                      stray.charge_id)
    assert (m.ours, m.theirs) == (None, "SUCCEEDED 4200 USD")
    assert (report.counts.payments, report.counts.charges) == (1, 2)

    code, out, err = await paymesh_reconcile(mesh)
    assert (code, err) == (1, ""), out
    assert out.startswith(f"charge_without_payment: merchant {clients.merchant_id}, order {stray_order}, payment -, "
                          f"charge {stray.charge_id}: ours none, theirs SUCCEEDED 4200 USD")
    assert "reconciled 1 payment and 2 charges, 0 refunds: 1 mismatch (charge_without_payment 1)" in out


async def alter_payment(url: str, order_id: str, change: str) -> None:
    """What no service does: a payment's row changed in its database (`change`: the SET clause)."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            changed = await conn.execute(text(f"UPDATE payments SET {change} WHERE order_id = :order_id"),
                                         {"order_id": order_id})
            assert changed.rowcount == 1
    finally:
        await engine.dispose()


@pytest.mark.timeout(90)
async def test_a_payment_altered_in_its_database_is_an_amount_mismatch(
    new_mesh: Callable[..., Awaitable[Mesh]],
) -> None:
    mesh = await new_mesh()
    async with Clients(mesh).session() as clients:
        sku = await clients.put_product(5)
        await confirmed_order(clients, sku, 1200)
        altered = await confirmed_order(clients, sku, 2500)
        payment = await clients.payment_of(altered)
        charge = await clients.one_charge(altered)
    assert (await reconcile(stores_env(mesh))).ok
    # A payment created before --since, its charge after: the window's edge does not split them.
    since = datetime.now(UTC) - timedelta(hours=1)
    await alter_payment(stores_env(mesh)["PAYMENT_SVC_DB_URL"], altered, "create_time = '2000-01-01 00:00:00'")
    report = await reconcile(stores_env(mesh), since)
    assert report.ok, report.mismatches
    assert (report.counts.payments, report.counts.charges) == (2, 2)

    await alter_payment(stores_env(mesh)["PAYMENT_SVC_DB_URL"], altered, "amount_minor = amount_minor + 1")

    report: Report = await reconcile(stores_env(mesh))
    assert [m.kind for m in report.mismatches] == ["amount_mismatch"], report.mismatches
    m = report.mismatches[0]
    assert (m.order_id, m.payment_id, m.charge_id) == (altered, payment.payment_id, charge.charge_id)
    assert (m.ours, m.theirs) == ("2501 USD", "2500 USD")
    code, out, _ = await paymesh_reconcile(mesh, "--json")
    assert code == 1
    body = json.loads(out)
    assert body["ok"] is False
    assert [(m["kind"], m["ours"], m["theirs"]) for m in body["mismatches"]] == [
        ("amount_mismatch", "2501 USD", "2500 USD")]


@pytest.mark.timeout(60)
async def test_with_no_mesh_and_no_store_it_says_so_and_creates_nothing(tmp_path: Path) -> None:
    code, out, err = await paymesh_reconcile(None, data_dir=tmp_path)
    assert (code, out) == (2, "")
    assert err.startswith("paymesh: no mesh running:") and len(err.splitlines()) == 1, err
    assert str(tmp_path / "payment_svc.db") in err
    assert os.listdir(tmp_path) == []  # no empty SQLite file made
