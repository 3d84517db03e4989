"""inventory_svc's merchants revision on a database the previous release filled: every row becomes the legacy
merchant's, stays readable as that merchant, and skus, order ids and request ids become per merchant."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from inventory_svc.domain import Line, Product, Reservation, ReservationStatus
from inventory_svc.service import SPEC
from inventory_svc.store import InventoryRepository, metadata
from paymesh.chassis import migrations
from paymesh.chassis.db import create_engine
from paymesh.chassis.events import MERCHANT, TRACEPARENT, OutboundEvent, new_event_id, new_traceparent
from paymesh.chassis.idempotency import fingerprint
from paymesh.chassis.schema_steps import LEGACY_MERCHANT_ID as LEGACY
from paymesh.inventory.v1 import inventory_pb2
from paymesh.inventory.v1 import inventory_service_pb2 as pb
from paymesh.ops.natsserver import NatsServer
from paymesh.order.v1 import events_pb2 as order_events
from paymesh.order.v1 import order_pb2
from paymesh.payment.v1 import events_pb2 as payment_events
from tests.integration.chassis_harness import publish
from tests.integration.inventory.conftest import Rig, running
from tests.keys import MERCHANT_A as A
from tests.keys import MERCHANT_B as B

pytestmark = pytest.mark.timeout(60)

INITIAL = "6701599ec39e"
MERCHANTS = "8858be37446f"
OLD_REQUEST_ID = "0b7c9f3e-5d2a-4c1e-9a8b-6f4e3d2c1b0a"
OLD_PUT = pb.PutProductRequest(request_id=OLD_REQUEST_ID, sku="cap", name="Cap", available=9)
OLD_ANSWER = pb.PutProductResponse(product=inventory_pb2.Product(sku="cap", name="Cap", available=9))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


def written_at(engine: AsyncEngine) -> Any:
    """A time as the old release's SQLAlchemy wrote it: a naive UTC string on SQLite, a timestamptz on PostgreSQL."""
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S.%f") if engine.dialect.name == "sqlite" else at


async def old_release(engine: AsyncEngine) -> None:
    """The schema of the release before merchants, with what it would have written: two products, a
    reservation held and one sold, and a PutProduct request id with its answer."""
    assert await migrations.upgrade(engine, SPEC, destination=INITIAL) == (INITIAL,)
    at = written_at(engine)
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO products (sku, name, available, reserved, sold, create_time, update_time) "
                 "VALUES (:sku, :name, :available, :reserved, :sold, :at, :at)"),
            [
                {"sku": "mug", "name": "Mug", "available": 7, "reserved": 2, "sold": 1, "at": at},
                {"sku": "tee", "name": "Tee", "available": 4, "reserved": 0, "sold": 0, "at": at},
            ],
        )
        await conn.execute(
            text("INSERT INTO reservations (order_id, status, lines, reason, sku, cancel_answered, create_time, "
                 "update_time) VALUES (:order_id, :status, :lines, '', '', :cancelled, :at, :at)"),
            [
                {"order_id": "ord_held", "status": "RESERVED", "lines": '[{"sku": "mug", "quantity": 2}]',
                 "cancelled": False, "at": at},
                {"order_id": "ord_sold", "status": "COMMITTED", "lines": '[{"sku": "mug", "quantity": 1}]',
                 "cancelled": False, "at": at},
            ],
        )
        await conn.execute(
            text("INSERT INTO idempotent_requests (request_id, method, fingerprint, response) "
                 "VALUES (:request_id, 'PutProduct', :fingerprint, :response)"),
            {"request_id": OLD_REQUEST_ID, "fingerprint": fingerprint("PutProduct", OLD_PUT),
             "response": OLD_ANSWER.SerializeToString()},
        )


async def merchants_of(engine: AsyncEngine, table: str) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(f"SELECT merchant_id FROM {table}"))).scalars())


async def test_old_rows_become_the_legacy_merchants_and_keys_become_per_merchant(engine: AsyncEngine) -> None:
    await old_release(engine)
    assert await migrations.upgrade(engine, SPEC) == (MERCHANTS,)
    for table, count in (("products", 2), ("reservations", 2), ("idempotent_requests", 1)):
        assert await merchants_of(engine, table) == [LEGACY] * count, table

    inventory = InventoryRepository(metadata())
    async with engine.connect() as conn:
        mug = await inventory.product(conn, LEGACY, "mug")
        assert mug is not None and mug.value == Product(LEGACY, "mug", "Mug", 7, 2, 1)
        assert [p.value.sku for p in await inventory.product_page(conn, LEGACY, None, 10)] == ["mug", "tee"]
        held = await inventory.reservation(conn, LEGACY, "ord_held")
        assert held is not None
        assert held.value == Reservation(LEGACY, "ord_held", ReservationStatus.RESERVED, (Line("mug", 2),))
        assert await inventory.product(conn, A, "mug") is None, "the legacy rows are nobody else's"
        assert await inventory.reservation(conn, A, "ord_held") is None
        assert await inventory.product_page(conn, A, None, 10) == []

    now = datetime.now(UTC)
    async with engine.begin() as conn:
        # What was one global key is now one per merchant: A and B may sell `mug` too, and own `ord_held`.
        await inventory.add_product(conn, Product(A, "mug", "A's mug", 10), now)
        await inventory.add_product(conn, Product(B, "mug", "B's mug", 3), now)
        await inventory.add_reservations(conn, [Reservation(A, "ord_held", ReservationStatus.CANCELLED)], now)
        await conn.execute(
            text("INSERT INTO idempotent_requests (merchant_id, request_id, method, fingerprint) "
                 "VALUES (:m, :r, 'AdjustStock', 'x')"), {"m": A, "r": OLD_REQUEST_ID})
        locked = await inventory.lock_products(conn, [(LEGACY, "mug"), (A, "mug"), (B, "mug")])
    assert {key: (p.name, p.available) for key, p in locked.items()} == {
        (LEGACY, "mug"): ("Mug", 7), (A, "mug"): ("A's mug", 10), (B, "mug"): ("B's mug", 3)}
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await inventory.add_product(conn, Product(LEGACY, "mug", "again"), now)


async def test_downgrade_keeps_legacy_rows_and_refuses_a_sku_two_merchants_hold(engine: AsyncEngine) -> None:
    await old_release(engine)
    await migrations.upgrade(engine, SPEC)
    assert await migrations.downgrade(engine, SPEC, INITIAL) == (INITIAL,)
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT sku, available FROM products ORDER BY sku"))).all()
        assert [tuple(r) for r in rows] == [("mug", 7), ("tee", 4)]
        assert (await conn.execute(text("SELECT count(*) FROM reservations"))).scalar() == 2

    await migrations.upgrade(engine, SPEC)
    async with engine.begin() as conn:
        await InventoryRepository(metadata()).add_product(conn, Product(A, "mug", "A's mug", 1), datetime.now(UTC))
    with pytest.raises(RuntimeError, match="products.sku 'mug' belongs to more than one merchant"):
        await migrations.downgrade(engine, SPEC, INITIAL)
    assert await migrations.current(engine, SPEC) == (MERCHANTS,), "refused before anything changed"
    assert sorted(await merchants_of(engine, "products")) == sorted([A, LEGACY, LEGACY])


def legacy_event(subject: str, message: Any) -> OutboundEvent:
    """An event as the release before merchants published it: no merchant_id, no Paymesh-Merchant header."""
    return OutboundEvent(message.event_id, subject, message.DESCRIPTOR.full_name, message.SerializeToString(),
                         {TRACEPARENT: new_traceparent()})


async def test_the_upgraded_service_carries_on_the_legacy_merchants_sagas(
    engine: AsyncEngine, nats_server: NatsServer, db_url: str, tmp_path: Path
) -> None:
    await old_release(engine)
    async with running(nats_server.url, db_url, tmp_path, merchants=(LEGACY, A)) as rig:  # migrates at start
        legacy = rig.stubs[LEGACY]
        mug = (await legacy.GetProduct(pb.GetProductRequest(sku="mug"))).product
        assert (mug.merchant_id, mug.available, mug.reserved, mug.sold) == (LEGACY, 7, 2, 1)
        assert (await rig.reservation("ord_held", merchant=LEGACY)).merchant_id == LEGACY
        assert list((await rig.stub.ListProducts(pb.ListProductsRequest())).products) == []
        # The old release's answer is replayed to its merchant, and the id is free for another one.
        assert await legacy.PutProduct(OLD_PUT) == OLD_ANSWER
        assert (await rig.stub.PutProduct(OLD_PUT)).product.merchant_id == A

        # Events published before the upgrade, without a merchant, go on acting for the legacy merchant.
        paid = payment_events.PaymentSucceeded(event_id=new_event_id(), order_id="ord_held", payment_id="pay_1")
        await publish(rig.nc, legacy_event("payment.succeeded.ord_held", paid))
        new_order = f"ord_{uuid.uuid4().hex}"
        placed = order_events.OrderPlaced(event_id=new_event_id(), order_id=new_order, currency="EUR",
                                          items=[order_pb2.LineItem(sku="mug", quantity=3, unit_price_minor=100)])
        await publish(rig.nc, legacy_event(f"order.placed.{new_order}", placed))
        await rig.settle()
        await assert_answered_for_legacy(rig, new_order)


async def assert_answered_for_legacy(rig: Rig, new_order: str) -> None:
    answers = [(o.name, o.message.merchant_id, o.headers[MERCHANT]) for o in await rig.outputs()]
    assert sorted(answers) == [("committed", LEGACY, LEGACY), ("reserved", LEGACY, LEGACY)]
    legacy_mug = await rig.product("mug", merchant=LEGACY)
    assert (legacy_mug.available, legacy_mug.reserved, legacy_mug.sold) == (4, 3, 3)
    assert sum((legacy_mug.available, legacy_mug.reserved, legacy_mug.sold)) == 10, "stock conserved"
    assert (await rig.reservation(new_order, merchant=LEGACY)).status == inventory_pb2.RESERVATION_STATUS_RESERVED
