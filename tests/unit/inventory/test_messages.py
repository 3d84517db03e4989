"""inventory_svc's wire forms: each domain event as the outbox row it becomes, traced under its cause."""

from __future__ import annotations

import pytest

from inventory_svc.domain import CAUSE_ORDER_CANCELLED, Committed, Event, Line, Rejected, Released, Reserved
from inventory_svc.messages import outbound
from paymesh.chassis.events import MERCHANT, TRACEPARENT, message_types, new_traceparent
from paymesh.inventory.v1 import events_pb2

pytestmark = pytest.mark.timeout(5)

TYPES = message_types(events_pb2)
LINES = (Line("mug", 2),)
M = "mer_aaaaaaaaaaaaaaaa"


@pytest.mark.parametrize(
    ("event", "name"),
    [
        (Reserved(M, "ord_1", LINES), "reserved"),
        (Rejected(M, "ord_1", "OUT_OF_STOCK", "mug", 3, 1), "rejected"),
        (Committed(M, "ord_1", LINES), "committed"),
        (Released(M, "ord_1", (), held=False, cause=CAUSE_ORDER_CANCELLED), "released"),
    ],
)
def test_outbound_names_the_event_and_continues_the_trace(event: Event, name: str) -> None:
    cause = new_traceparent()
    out = outbound(event, cause)
    assert out.subject == f"inventory.{name}.ord_1"
    message = TYPES[out.type].FromString(out.payload)
    assert (message.order_id, message.event_id != "", message.occurred_at.seconds > 0) == ("ord_1", True, True)
    assert (message.merchant_id, out.headers[MERCHANT]) == (M, M), "the order's merchant, in payload and header"
    assert out.headers[TRACEPARENT] == cause, "the span it was written in: the consumer's span of the cause"
