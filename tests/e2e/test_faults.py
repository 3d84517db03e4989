"""End to end, faults: the gateway down, payment_svc killed mid-charge, a duplicated event, a stampede on one sku."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import grpc
import pytest

from paymesh.ops.launcher import Mesh
from paymesh.tools.chaos import collect
from paymesh.tools.invariants import format_report, run_checks
from tests.e2e.events import Bus
from tests.e2e.harness import CS, PS, TERMINAL, Clients, by_status, new_id, statuses


@pytest.mark.timeout(120)
async def test_orders_wait_out_a_gateway_outage_and_are_charged_once(mesh: Mesh, clients: Clients) -> None:
    sku = await clients.put_product(10)
    await mesh.kill("gateway_mock")

    orders = [await clients.create_order([(sku, 1, 1000 + i)]) for i in range(3)]
    for order in orders:
        await clients.wait_order(order.order_id, statuses("AWAITING_PAYMENT"))
    await clients.wait_stock(sku, (7, 3, 0))
    await mesh.restart("gateway_mock")

    for order in orders:
        await clients.wait_order(order.order_id, statuses("CONFIRMED"), timeout=60)
    for order in orders:
        charge = await clients.one_charge(order.order_id)
        assert (charge.status, charge.amount_minor) == (CS.CHARGE_STATUS_SUCCEEDED, order.amount_minor)
    await clients.wait_stock(sku, (7, 0, 3))


@pytest.mark.timeout(150)
async def test_payment_svc_killed_mid_charge_completes_with_one_charge(
    new_mesh: Callable[..., Awaitable[Mesh]],
) -> None:
    """SIGKILL while the gateway holds the charge; the restarted payment_svc asks again with the same key.

    Its own mesh with a long saga timeout: the unacked inventory.reserved comes back only through
    JetStream's redelivery (measured: about 60 s, twice the consumers' 30 s ack wait), and the order
    must not time out meanwhile. SQLite only: a minute is too long to spend twice.
    """
    mesh = await new_mesh(PAYMESH_SAGA_TIMEOUT_S="120")
    async with Clients(mesh).session() as clients:
        sku = await clients.put_product(3)
        await clients.configure_gateway(latency_ms=1500)
        order = await clients.create_order([(sku, 1, 3100)])
        await clients.wait_payment(order.order_id, [PS.PAYMENT_STATUS_PROCESSING])

        await mesh.kill("payment_svc")
        await mesh.restart("payment_svc")

        await clients.wait_order(order.order_id, statuses("CONFIRMED"), timeout=90)
        charge = await clients.one_charge(order.order_id)
        assert (charge.status, charge.amount_minor) == (CS.CHARGE_STATUS_SUCCEEDED, 3100)
        payment = await clients.payment_of(order.order_id)
        assert (payment.status, payment.charge_id) == (PS.PAYMENT_STATUS_SUCCEEDED, charge.charge_id)
        await clients.wait_stock(sku, (2, 0, 1))


@pytest.mark.both_backends
@pytest.mark.timeout(60)
async def test_an_event_republished_under_a_new_msg_id_is_applied_once(clients: Clients, bus: Bus) -> None:
    """The server's dedupe cannot catch a copy with another Nats-Msg-Id; the consumers' inbox must."""
    sku = await clients.put_product(5)
    order = await clients.create_order([(sku, 2, 450)])
    await clients.wait_order(order.order_id, statuses("CONFIRMED"))
    await clients.wait_stock(sku, (3, 0, 2))

    original = await bus.js.get_last_msg("ORDER", f"order.placed.{order.order_id}")
    headers = {**(original.headers or {}), "Nats-Msg-Id": new_id()}
    ack = await bus.js.publish(original.subject, original.data, stream="ORDER", headers=headers)
    assert not ack.duplicate and ack.seq > original.seq

    await bus.wait_consumed("ORDER", ["inventory_svc-order", "payment_svc-order"], ack.seq)
    assert await clients.stock(sku) == (3, 0, 2)
    assert len(await clients.payments_of(order.order_id)) == 1
    assert len(await clients.charges(order.order_id)) == 1
    reserved = await bus.stream_events("INVENTORY", f"inventory.reserved.{order.order_id}")
    assert len(reserved) == 1, [e.headers for e in reserved]
    assert (await clients.get_order(order.order_id)).status in statuses("CONFIRMED")


@pytest.mark.both_backends
@pytest.mark.timeout(120)
async def test_fifty_orders_for_ten_units_confirm_exactly_ten(clients: Clients) -> None:
    sku = await clients.put_product(10)
    stop = asyncio.Event()
    seen: list[tuple[int, int, int]] = []

    async def watch_stock() -> None:
        while not stop.is_set():  # bounded: stopped below, and by the test's timeout
            seen.append(await clients.stock(sku))
            await asyncio.sleep(0.05)  # sampling the stock, not waiting for it

    watcher = asyncio.create_task(watch_stock())
    try:
        orders = await asyncio.gather(*(clients.create_order([(sku, 1, 999)]) for _ in range(50)))
        finals = [await clients.wait_order(o.order_id, TERMINAL, timeout=60) for o in orders]
    finally:
        stop.set()
        await watcher

    assert by_status(finals) == {"CONFIRMED": 10, "REJECTED": 40}
    await clients.wait_stock(sku, (0, 0, 10))
    assert all(min(s) >= 0 for s in seen), [s for s in seen if min(s) < 0]
    assert all(sum(s) == 10 for s in seen), [s for s in seen if sum(s) != 10]
    charged = [len(await clients.charges(o.order_id)) for o in finals]
    assert sum(charged) == 10 and max(charged) == 1


@pytest.mark.timeout(150)
async def test_invariants_hold_over_many_orders_with_random_faults(clients: Clients) -> None:
    """Seeded gateway faults, a mix of tokens, some cancels; then: every order terminal, stock conserved,
    money at the gateway equal to what confirmed orders owe, never two successful charges for one order."""
    rng = random.Random(20251122)
    skus = {await clients.put_product(stock): stock for stock in (60, 40, 80)}
    await clients.configure_gateway(
        seed=7, decline_rate=0.1, transient_error_rate=0.2, lost_response_rate=0.1, latency_ms=20
    )
    tokens = ["tok_visa"] * 6 + ["tok_chargeDeclined", "tok_flaky", "tok_lostResponse"]

    async def place(i: int) -> str:
        picked = rng.sample(sorted(skus), rng.randint(1, 3))
        lines = [(sku, rng.randint(1, 3), rng.randint(100, 5000)) for sku in picked]
        order = await clients.create_order(lines, token=rng.choice(tokens))
        if i % 5 == 0:  # some cancelled at once, racing the saga; others after they settle
            try:
                await clients.cancel(order.order_id)
            except grpc.aio.AioRpcError as err:  # the saga may have ended first (REJECTED, PAYMENT_FAILED)
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
        return order.order_id

    order_ids = await asyncio.gather(*(place(i) for i in range(40)))
    finals = [await clients.wait_order(o, TERMINAL, timeout=60) for o in order_ids]
    late_cancels = [o.order_id for o in finals if o.status in statuses("CONFIRMED")][:4]
    for order_id in late_cancels:
        await clients.cancel(order_id)
    for order_id in late_cancels:
        await clients.wait_order(order_id, statuses("CANCELLED", "REQUIRES_REVIEW"), timeout=60)
    await clients.configure_gateway(reset=True)

    # The same checks `paymesh chaos` runs: every order terminal, stock conserved and matching the
    # reservations, money at the gateway equal to what the orders owe, at most one charge per order,
    # every payment's audit trail in order. Read again until they hold or the deadline passes: an order
    # ends before inventory has committed its sale from the same payment.succeeded.
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        results = run_checks(await collect(clients.client, order_ids, skus))
        if all(r.ok for r in results) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)  # re-reading the services under a deadline
    assert all(r.ok for r in results), format_report(results)
