"""`paymesh dlq`: a dead-lettered event is listed with its error and, once replayed, applied once."""

from __future__ import annotations

import pytest

from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.events import InboundEvent
from paymesh.ops.dlq import format_table, list_dead_letters, replay
from tests.conftest import wait_for
from tests.integration.chassis_harness import Rig, all_acked, consumer_for, placed, publish

pytestmark = pytest.mark.timeout(60)


async def test_list_then_replay_applies_the_event_once(rig: Rig) -> None:
    broken = True

    async def handler(uow: UnitOfWork, events: list[InboundEvent]) -> None:
        if broken and any(e.order_id == "o-fixme" for e in events):
            raise ValueError("ledger has no account for o-fixme")
        await rig.store.credit(uow, events)

    await publish(rig.nc, placed(order_id="o-fixme"))
    await publish(rig.nc, placed(order_id="o-fine"))
    consumer = consumer_for(rig, handler, max_deliver=2)
    await consumer.start()
    try:
        await wait_for(lambda: consumer.dead_lettered == 1, message="dead-lettered")
        letters = await list_dead_letters(rig.nc)
        assert [(d.consumer, d.original_subject, d.reason) for d in letters] == [
            ("ledger", "order.placed.o-fixme", "MAX_DELIVER")
        ]
        assert "ledger has no account for o-fixme" in format_table(letters)
        assert await list_dead_letters(rig.nc, "dlq.other_svc.>") == []

        broken = False  # the bug is fixed; replay
        await replay(rig.nc, letters[0])
        await wait_for(lambda: all_acked(rig.nc), message="replayed event handled")
        await wait_for(lambda: rig.store.credits(), message="credits")
        assert await rig.store.credits() == {"o-fixme": 1, "o-fine": 1}
        assert await list_dead_letters(rig.nc) == [], "a replayed event leaves the DLQ"

        # Replaying the same event again (say, from an old copy) is skipped by the inbox.
        await publish(rig.nc, placed(order_id="o-fixme", event_id=_payload_event_id(letters[0].data)),
                      msg_id="yet-another-copy")
        await wait_for(lambda: all_acked(rig.nc), message="copy acked")
        assert await rig.store.credits() == {"o-fixme": 1, "o-fine": 1}
    finally:
        await consumer.stop()


def _payload_event_id(data: bytes) -> str:
    from paymesh.order.v1 import events_pb2

    return events_pb2.OrderPlaced.FromString(data).event_id
