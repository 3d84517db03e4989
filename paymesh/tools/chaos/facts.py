"""The facts of a set of orders, read from the four services through `paymesh.client` after a run.

`paymesh chaos` checks them (`paymesh.tools.invariants`), and so does the e2e invariant test in
tests/e2e/test_faults.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import nats

from paymesh.client import MeshClient, every
from paymesh.gateway.v1 import gateway_pb2
from paymesh.inventory.v1 import inventory_pb2
from paymesh.order.v1 import order_pb2
from paymesh.payment.v1 import payment_pb2
from paymesh.tools.invariants import (
    ChargeFact,
    DeadLetterFact,
    Observed,
    OrderFact,
    PaymentFact,
    ProductFact,
    ReservationFact,
    StepFact,
)

T = TypeVar("T")
R = TypeVar("R")


async def bounded(items: Iterable[T], work: Callable[[T], Awaitable[R]], concurrency: int) -> list[R]:
    """`work` over `items`, at most `concurrency` at a time, results in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: T) -> R:
        async with gate:
            return await work(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


def strip(name: str, prefix: str) -> str:
    return "" if name.endswith("_UNSPECIFIED") else name.removeprefix(prefix)


def order_fact(order: order_pb2.Order) -> OrderFact:
    lines = tuple((i.sku, i.quantity) for i in order.items)
    status = strip(order_pb2.OrderStatus.Name(order.status), "ORDER_STATUS_")
    return OrderFact(order.order_id, status, order.amount_minor, lines, order.failure_reason)


def payment_status(value: int) -> str:
    return strip(payment_pb2.PaymentStatus.Name(value), "PAYMENT_STATUS_")


def payment_fact(p: payment_pb2.Payment) -> PaymentFact:
    return PaymentFact(
        p.payment_id, p.order_id, payment_status(p.status), p.amount_minor, p.refunded_minor, p.charge_id,
        p.failure_code,
    )


def step_fact(s: payment_pb2.PaymentEvent) -> StepFact:
    return StepFact(s.sequence, s.type, payment_status(s.from_status), payment_status(s.to_status))


def charge_fact(c: gateway_pb2.Charge) -> ChargeFact:
    status = strip(gateway_pb2.ChargeStatus.Name(c.status), "CHARGE_STATUS_")
    return ChargeFact(c.charge_id, c.order_id, status, c.amount_minor, c.refunded_minor)


def reservation_fact(order_id: str, res: inventory_pb2.Reservation | None) -> ReservationFact:
    if res is None:
        return ReservationFact(order_id, "", ())
    status = strip(inventory_pb2.ReservationStatus.Name(res.status), "RESERVATION_STATUS_")
    return ReservationFact(order_id, status, tuple((line.sku, line.quantity) for line in res.lines))


async def reservation_of(client: MeshClient, order_id: str) -> inventory_pb2.Reservation | None:
    """The order's reservation; None when inventory never saw the order."""
    try:
        return await client.get_reservation(order_id)
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


async def collect(
    client: MeshClient, order_ids: Sequence[str], stocked: Mapping[str, int], concurrency: int = 16
) -> Observed:
    """Read orders, reservations, payments with their trails, charges and products for `order_ids`."""

    async def trail(payment_id: str) -> list[payment_pb2.PaymentEvent]:
        return await every(lambda token: client.list_payment_events(payment_id, page_size=500, page_token=token))

    async def one(order_id: str) -> Observed:
        order = await client.get_order(order_id)
        payments = await every(
            lambda token: client.list_payments(order_id=order_id, page_size=50, page_token=token)
        )
        trails = {p.payment_id: await trail(p.payment_id) for p in payments}
        charges = await every(lambda token: client.list_charges(order_id=order_id, page_size=500, page_token=token))
        reservation = await reservation_of(client, order_id)
        return Observed(
            orders={order.order_id: order_fact(order)},
            products=[],
            payments={order.order_id: [payment_fact(p) for p in payments]},
            charges={order.order_id: [charge_fact(c) for c in charges]},
            reservations={order.order_id: reservation_fact(order.order_id, reservation)},
            trails={payment_id: [step_fact(s) for s in steps] for payment_id, steps in trails.items()},
        )

    obs = Observed(orders={}, products=[])
    for part in await bounded(order_ids, one, concurrency):
        obs.orders.update(part.orders)
        obs.payments.update(part.payments)
        obs.charges.update(part.charges)
        obs.reservations.update(part.reservations)
        obs.trails.update(part.trails)
    for sku, initial in sorted(stocked.items()):
        p = await client.get_product(sku)
        obs.products.append(ProductFact(sku, initial, p.available, p.reserved, p.sold))
    return obs


async def stray_charges(client: MeshClient, mine: set[str], merchant_id: str) -> list[ChargeFact]:
    """Charges the gateway holds for `merchant_id` for no order of `mine` (the merchant's orders of the run):
    on a mesh of the run's own there should be none."""
    charges = await every(
        lambda token: client.list_charges(merchant_id=merchant_id, page_size=500, page_token=token)
    )
    return [charge_fact(c) for c in charges if c.order_id not in mine]


async def foreign_charges(client: MeshClient, merchants: set[str]) -> list[ChargeFact]:
    """Charges tagged with a merchant that is none of `merchants` (on a mesh of the run's own: none)."""
    charges = await every(lambda token: client.list_charges(page_size=500, page_token=token))
    return [charge_fact(c) for c in charges if c.merchant_id not in merchants]


async def dead_letters(nats_url: str, options: dict[str, Any]) -> list[DeadLetterFact]:
    """`options`: how to sign in (the mesh's operator user, `Mesh.nats_options()`)."""
    from paymesh.ops.dlq import list_dead_letters

    nc = await nats.connect(nats_url.split(","), connect_timeout=5, max_reconnect_attempts=1, **options)
    try:
        return [
            DeadLetterFact(d.seq, d.consumer, d.original_subject, d.reason, d.error)
            for d in await list_dead_letters(nc)
        ]
    finally:
        await nc.close()
