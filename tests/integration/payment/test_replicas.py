"""Two payment_svc replicas on one PostgreSQL database, their order batches racing for the same order."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from payment_svc.domain import Status
from payment_svc.handlers import SagaHandlers
from payment_svc.ledger import Ledger
from payment_svc.service import SPEC
from payment_svc.store import PaymentRepository
from paymesh.chassis.backoff import Backoff
from paymesh.chassis.config import Settings
from paymesh.chassis.events import new_event_id, to_timestamp
from paymesh.chassis.service import Runtime, migrate_schema
from paymesh.ops.natsserver import free_port
from paymesh.order.v1 import events_pb2 as order_events
from tests.conftest import wait_for
from tests.integration.inventory.test_replicas import inbound, lock_waits
from tests.keys import AUTH_ENV, MERCHANT_A, PLATFORM_ENV

pytestmark = pytest.mark.timeout(30)


def replica(db_url: str, data_dir: Path) -> tuple[Runtime, PaymentRepository, SagaHandlers]:
    env = {"PAYMESH_NATS_URL": "nats://127.0.0.1:4222", "PAYMENT_SVC_GRPC_ADDR": f"127.0.0.1:{free_port()}",
           "PAYMENT_SVC_DB_URL": db_url, "PAYMESH_DATA_DIR": str(data_dir), **AUTH_ENV, **PLATFORM_ENV}
    runtime = Runtime(SPEC, Settings.from_env(SPEC, env))
    payments = PaymentRepository(runtime.metadata)
    # The order stream's handler never calls the gateway (the charge is the inventory stream's prepare step).
    handlers = SagaHandlers(runtime, payments, None, Ledger(runtime, payments), redelivery=Backoff())  # type: ignore[arg-type]
    return runtime, payments, handlers


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_cancel_racing_the_placement_on_another_replica_voids_the_payment_it_made(
    db_url: str, tmp_path: Path
) -> None:
    """Replica A creates order X's payment from order.placed and holds its transaction open; replica B's batch
    takes order.cancelled of X. Both read no payment; unlocked, B wrote a tombstone beside A's row and its whole
    batch failed on uq_payments_merchant_order. B must wait for A, then find A's payment and void it."""
    (a_rt, a_payments, a), (b_rt, _, b) = replica(db_url, tmp_path), replica(db_url, tmp_path)
    try:
        await migrate_schema(a_rt)
        x = f"ord_{uuid.uuid4().hex}"
        placed = order_events.OrderPlaced(
            event_id=new_event_id(), order_id=x, currency="EUR", amount_minor=500, payment_method_token="tok_visa",
            merchant_id=MERCHANT_A, deadline=to_timestamp(datetime.now(UTC) + timedelta(seconds=30)))
        cancelled = order_events.OrderCancelled(event_id=new_event_id(), order_id=x, reason="customer",
                                                merchant_id=MERCHANT_A)

        async def b_batch() -> None:
            async with b_rt.db.unit_of_work() as uow:
                await b.apply_order_events(uow, [inbound(f"order.cancelled.{x}", cancelled)])
                await uow.commit()

        async with a_rt.db.unit_of_work() as uow:
            await a.apply_order_events(uow, [inbound(f"order.placed.{x}", placed)])
            racing = asyncio.create_task(b_batch())
            await wait_for(lambda: lock_waits(db_url), timeout=10, message="replica B waiting on replica A")
            assert not racing.done()
            await uow.commit()
        await asyncio.wait_for(racing, 10)

        async with a_rt.db.read() as conn:
            found = await a_payments.by_orders(conn, [(MERCHANT_A, x)], lock=False)
        assert [p.status for p in found.values()] == [Status.VOIDED], "one payment, A's, voided by B's cancel"
    finally:
        await a_rt.db.dispose()
        await b_rt.db.dispose()
