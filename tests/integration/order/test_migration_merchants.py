"""The `merchants` revision on a database the previous release filled: its orders and request ids become the
legacy merchant's, readable (and still moving through the saga) as that merchant, and a request id is per
merchant from then on."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, Boolean, DateTime, LargeBinary, bindparam, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from order_svc.domain import Line, Order, OrderStatus
from order_svc.service import SPEC
from order_svc.store import OrderRepository, metadata, orders_table
from paymesh.chassis import migrations
from paymesh.chassis.db import create_engine
from paymesh.chassis.events import OutboundEvent, new_event_id, new_traceparent
from paymesh.chassis.idempotency import fingerprint
from paymesh.chassis.schema_steps import LEGACY_MERCHANT_ID
from paymesh.ops.natsserver import NatsServer
from paymesh.order.v1 import order_pb2
from paymesh.order.v1 import order_service_pb2 as pb
from paymesh.payment.v1 import events_pb2 as payment_events
from tests.conftest import wait_for
from tests.integration.chassis_harness import publish
from tests.integration.order.conftest import S, create_request, running
from tests.keys import MERCHANT_A

pytestmark = pytest.mark.timeout(60)

INITIAL = "8347d7ab6af9"
CREATE = "OrderService.CreateOrder"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
FAR = datetime(2099, 1, 1, tzinfo=UTC)

# As the initial release's repository wrote an order: every column, no merchant.
INSERT_ORDER = text(
    "INSERT INTO orders (order_id, customer_id, currency, amount_minor, status, failure_reason, payment_id, "
    "payment_method_token, items, deadline, create_time, update_time, inventory_answered, payment_answered, "
    "refund_failed, version) VALUES (:order_id, :customer_id, 'USD', :amount_minor, :status, '', :payment_id, "
    "'tok_visa', :items, :deadline, :create_time, :create_time, :false, :false, :false, :version)"
).bindparams(
    bindparam("items", type_=JSON),
    bindparam("deadline", type_=DateTime(timezone=True)),
    bindparam("create_time", type_=DateTime(timezone=True)),
    bindparam("false", value=False, type_=Boolean),
)
INSERT_REQUEST = text(
    "INSERT INTO idempotent_requests (request_id, method, fingerprint, response) "
    "VALUES (:request_id, :method, :fingerprint, :response)"
).bindparams(bindparam("response", type_=LargeBinary))


def old_order(customer_id: str, minutes: int, **fields: Any) -> dict[str, Any]:
    row = {
        "order_id": f"ord_{uuid.uuid4().hex}",
        "customer_id": customer_id,
        "amount_minor": 2599,
        "status": "PENDING",
        "payment_id": "",
        "items": [["sku-1", 2, 1250], ["sku-2", 1, 99]],
        "deadline": FAR,
        "create_time": T0 + timedelta(minutes=minutes),
        "version": 1,
    }
    row.update(fields)
    return row


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


async def at_initial_revision(
    engine: AsyncEngine, orders: list[dict[str, Any]], requests: list[dict[str, Any]]
) -> None:
    """A database as the release before merchants left it."""
    assert await migrations.upgrade(engine, SPEC, destination=INITIAL) == (INITIAL,)
    async with engine.begin() as conn:
        for row in orders:
            await conn.execute(INSERT_ORDER, row)
        for row in requests:
            await conn.execute(INSERT_REQUEST, row)


async def test_rows_of_the_previous_release_become_the_legacy_merchants(engine: AsyncEngine) -> None:
    first = old_order("cus_1", 0)
    confirmed = old_order("cus_1", 1, status="CONFIRMED", payment_id="pay_9", version=3)
    other = old_order("cus_2", 2)
    request_id = str(uuid.uuid4())
    await at_initial_revision(
        engine,
        [first, confirmed, other],
        [{"request_id": request_id, "method": CREATE, "fingerprint": "f" * 64, "response": b"\x0a\x00"}],
    )

    assert await migrations.upgrade(engine, SPEC) == (migrations.head(SPEC),)

    async with engine.connect() as conn:
        merchants = (await conn.execute(text("SELECT DISTINCT merchant_id FROM orders"))).scalars().all()
        requests = (await conn.execute(text("SELECT merchant_id, request_id FROM idempotent_requests"))).all()
    assert merchants == [LEGACY_MERCHANT_ID]
    assert [tuple(r) for r in requests] == [(LEGACY_MERCHANT_ID, request_id)]

    repo = OrderRepository(orders_table(metadata()))
    async with engine.connect() as conn:
        read = await repo.get(conn, LEGACY_MERCHANT_ID, confirmed["order_id"])
        assert read == Order(
            order_id=confirmed["order_id"],
            merchant_id=LEGACY_MERCHANT_ID,
            customer_id="cus_1",
            lines=(Line("sku-1", 2, 1250), Line("sku-2", 1, 99)),
            currency="USD",
            amount_minor=2599,
            payment_method_token="tok_visa",
            status=OrderStatus.CONFIRMED,
            create_time=confirmed["create_time"],
            update_time=confirmed["create_time"],
            deadline=FAR,
            payment_id="pay_9",
            version=3,
        )
        assert await repo.get(conn, MERCHANT_A, confirmed["order_id"]) is None
        everything = await repo.page(conn, LEGACY_MERCHANT_ID, status=None, customer_id="", after=None, limit=10)
        assert [o.order_id for o in everything] == [other["order_id"], confirmed["order_id"], first["order_id"]]
        of_cus_1 = await repo.page(conn, LEGACY_MERCHANT_ID, status=None, customer_id="cus_1", after=None, limit=10)
        assert [o.order_id for o in of_cus_1] == [confirmed["order_id"], first["order_id"]]
        assert await repo.page(conn, MERCHANT_A, status=None, customer_id="", after=None, limit=10) == []

    # The request id is the legacy merchant's now: another merchant may use it, the same merchant may not twice.
    insert = text(
        "INSERT INTO idempotent_requests (merchant_id, request_id, method, fingerprint) VALUES (:m, :r, :method, :f)"
    )
    async with engine.begin() as conn:
        await conn.execute(insert, {"m": MERCHANT_A, "r": request_id, "method": CREATE, "f": "a" * 64})
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(insert, {"m": LEGACY_MERCHANT_ID, "r": request_id, "method": CREATE, "f": "b" * 64})

    # And an order of a new merchant sits beside them.
    async with engine.begin() as conn:
        new = Order.place(
            merchant_id=MERCHANT_A,
            customer_id="cus_1",
            lines=[Line("sku-1", 1, 100)],
            currency="USD",
            payment_method_token="tok_visa",
            now=T0,
            timeout=timedelta(seconds=30),
        )
        await repo.add(conn, new)
        locked = await repo.lock(conn, [(MERCHANT_A, new.order_id), (MERCHANT_A, first["order_id"])])
    assert list(locked) == [(MERCHANT_A, new.order_id)]


async def test_the_upgraded_service_serves_old_orders_to_the_legacy_merchant(
    engine: AsyncEngine, nats_server: NatsServer, db_url: str, tmp_path: Path
) -> None:
    pending = old_order("cus_1", 0)
    overdue = old_order("cus_1", 1, deadline=T0)  # its saga's deadline passed while the old release ran
    request = create_request()
    answered = pb.CreateOrderResponse(order=order_pb2.Order(order_id=pending["order_id"], customer_id="cus_1"))
    stored = {
        "request_id": request.request_id,
        "method": CREATE,
        "fingerprint": fingerprint(CREATE, request),
        "response": answered.SerializeToString(),
    }
    await at_initial_revision(engine, [pending, overdue], [stored])
    await engine.dispose()

    # The service migrates at start.
    async with running(nats_server.url, db_url, tmp_path, merchants=(LEGACY_MERCHANT_ID, MERCHANT_A)) as rig:
        legacy = rig.stubs[LEGACY_MERCHANT_ID]
        order = (await legacy.GetOrder(pb.GetOrderRequest(order_id=pending["order_id"]))).order
        assert (order.merchant_id, order.status) == (LEGACY_MERCHANT_ID, S.ORDER_STATUS_PENDING)
        a_orders = await rig.orders.ListOrders(pb.ListOrdersRequest())
        assert list(a_orders.orders) == []

        # The old request id replays its first answer for its merchant; for another it is a new request.
        assert await legacy.CreateOrder(request) == answered
        mine = await rig.orders.CreateOrder(request)
        assert mine.order.order_id != pending["order_id"] and mine.order.merchant_id == MERCHANT_A

        # An answer payment_svc published before it knew merchants speaks for the legacy merchant.
        message = payment_events.PaymentSucceeded(
            event_id=new_event_id(), order_id=pending["order_id"], payment_id="pay_old", amount_minor=2599
        )
        old_event = OutboundEvent(
            event_id=message.event_id,
            subject=f"payment.succeeded.{pending['order_id']}",
            type=message.DESCRIPTOR.full_name,
            payload=message.SerializeToString(),
            headers={"traceparent": new_traceparent()},  # no Paymesh-Merchant
        )
        await publish(rig.nc, old_event)
        confirmed = await rig.wait_status(pending["order_id"], S.ORDER_STATUS_CONFIRMED, merchant=LEGACY_MERCHANT_ID)
        assert confirmed.payment_id == "pay_old"

        # The sweeper times out the overdue one; every event names the legacy merchant.
        await rig.wait_status(overdue["order_id"], S.ORDER_STATUS_CANCELLING, merchant=LEGACY_MERCHANT_ID)
        for order_id, names in ((pending["order_id"], ["confirmed"]), (overdue["order_id"], ["cancelled"])):
            assert await rig.published_names(order_id, 1) == names
            [event] = await rig.published(order_id)
            assert (event.message.merchant_id, event.headers["Paymesh-Merchant"]) == (LEGACY_MERCHANT_ID,) * 2
        await wait_for(lambda: rig.sweeper.timed_out == 1, message="the overdue order swept")
