"""Two inventory_svc replicas on one PostgreSQL database, their batches racing for the same order."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from google.protobuf.message import Message

from inventory_svc.domain import Product, ReservationStatus
from inventory_svc.handlers import SagaHandlers
from inventory_svc.service import SPEC
from inventory_svc.store import InventoryRepository
from paymesh.chassis.config import Settings
from paymesh.chassis.events import InboundEvent, new_event_id
from paymesh.chassis.service import Runtime, migrate_schema
from paymesh.ops.databases import admin_dsn
from paymesh.order.v1 import events_pb2 as order_events
from paymesh.order.v1 import order_pb2
from tests.conftest import wait_for
from tests.integration.inventory.conftest import rig_env
from tests.keys import MERCHANT_A

pytestmark = pytest.mark.timeout(30)


@dataclass
class Replica:
    """One replica's own engine and handlers, as a second process on the same database has."""

    runtime: Runtime
    inventory: InventoryRepository
    handlers: SagaHandlers

    async def apply(self, *events: InboundEvent) -> None:
        """The order consumer's batch transaction, as the chassis runs it (without the inbox)."""
        async with self.runtime.db.unit_of_work() as uow:
            await self.handlers.on_order_events(uow, list(events))
            await uow.commit()


def replica(db_url: str, data_dir: Path) -> Replica:
    runtime = Runtime(SPEC, Settings.from_env(SPEC, rig_env("nats://127.0.0.1:4222", db_url, data_dir)))
    inventory = InventoryRepository(runtime.metadata)
    return Replica(runtime, inventory, SagaHandlers(runtime, inventory))


def inbound(subject: str, message: Message) -> InboundEvent:
    return InboundEvent(event_id=message.event_id, subject=subject, type=message.DESCRIPTOR.full_name,
                        message=message, traceparent=None, num_delivered=1, raw=None)


def placed(order_id: str, sku: str, quantity: int) -> InboundEvent:
    items = [order_pb2.LineItem(sku=sku, quantity=quantity, unit_price_minor=100)]
    return inbound(f"order.placed.{order_id}", order_events.OrderPlaced(
        event_id=new_event_id(), order_id=order_id, items=items, currency="EUR", payment_method_token="tok_visa",
        merchant_id=MERCHANT_A))


def cancelled(order_id: str) -> InboundEvent:
    return inbound(f"order.cancelled.{order_id}", order_events.OrderCancelled(
        event_id=new_event_id(), order_id=order_id, reason="customer", merchant_id=MERCHANT_A))


async def lock_waits(db_url: str) -> int:
    """How many sessions on the database wait for a lock another holds, as PostgreSQL itself reports."""
    conn = await asyncpg.connect(admin_dsn(db_url), timeout=10)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"))
    finally:
        await conn.close()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_batch_that_waited_for_another_replica_sees_the_reservation_it_committed(
    db_url: str, tmp_path: Path
) -> None:
    """Replica A reserves order X and holds its transaction open; replica B's batch cancels X and places Y on
    the same shelf. B must wait for A and then find A's reservation: reading before the wait, it found none,
    wrote a tombstone for X over A's row, and its whole batch failed on reservations_pkey (a batch of 100
    replayed one by one, each queueing behind A again: past AckWait in the scale test)."""
    a, b = replica(db_url, tmp_path), replica(db_url, tmp_path)
    try:
        await migrate_schema(a.runtime)
        async with a.runtime.db.unit_of_work() as uow:
            mug = Product(MERCHANT_A, "mug")
            mug.put("Mug", 10)
            await a.inventory.add_product(uow.conn, mug, datetime.now(UTC))
            await uow.commit()
        x, y = f"ord_{uuid.uuid4().hex}", f"ord_{uuid.uuid4().hex}"

        async with a.runtime.db.unit_of_work() as uow:
            await a.handlers.on_order_events(uow, [placed(x, "mug", 2)])
            racing = asyncio.create_task(b.apply(cancelled(x), placed(y, "mug", 1)))
            await wait_for(lambda: lock_waits(db_url), timeout=10, message="replica B waiting on replica A")
            assert not racing.done()
            await uow.commit()
        await asyncio.wait_for(racing, 10)

        async with a.runtime.db.read() as conn:
            x_held = await a.inventory.reservation(conn, MERCHANT_A, x)
            y_held = await a.inventory.reservation(conn, MERCHANT_A, y)
            shelf = await a.inventory.product(conn, MERCHANT_A, "mug")
        assert x_held is not None and x_held.value.status == ReservationStatus.RELEASED, "B cancelled A's reservation"
        assert y_held is not None and y_held.value.status == ReservationStatus.RESERVED
        assert shelf is not None
        assert (shelf.value.available, shelf.value.reserved) == (9, 1), "X's 2 units back on the shelf, Y's 1 held"
    finally:
        await a.runtime.db.dispose()
        await b.runtime.db.dispose()
