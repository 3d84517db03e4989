"""An event is applied only on its own subject: `<domain>.<event>` from its type's name, then its payload's
order id. Anything else is undecodable (dead-lettered by the consumer), and cannot be published at all."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from google.protobuf.message import Message

from paymesh.chassis.events import OutboundEvent, UndecodableEvent, decode, event_name, message_types
from paymesh.inventory.v1 import events_pb2 as inventory_events
from paymesh.order.v1 import events_pb2 as order_events
from paymesh.payment.v1 import events_pb2 as payment_events

pytestmark = pytest.mark.timeout(10)

TYPES = message_types(order_events, inventory_events, payment_events)
# What DESIGN.md's event table names; derived, not listed, in the code.
SUBJECTS = {
    "paymesh.order.v1.OrderPlaced": "order.placed",
    "paymesh.order.v1.OrderConfirmed": "order.confirmed",
    "paymesh.order.v1.OrderCancelled": "order.cancelled",
    # For webhook_svc only (the merchant's order.<status> webhooks); no saga service consumes it.
    "paymesh.order.v1.OrderStatusChanged": "order.status_changed",
    "paymesh.inventory.v1.InventoryReserved": "inventory.reserved",
    "paymesh.inventory.v1.InventoryRejected": "inventory.rejected",
    "paymesh.inventory.v1.InventoryCommitted": "inventory.committed",
    "paymesh.inventory.v1.InventoryReleased": "inventory.released",
    "paymesh.payment.v1.PaymentSucceeded": "payment.succeeded",
    "paymesh.payment.v1.PaymentFailed": "payment.failed",
    "paymesh.payment.v1.PaymentRefunded": "payment.refunded",
    "paymesh.payment.v1.PaymentVoided": "payment.voided",
    "paymesh.payment.v1.PaymentRefundFailed": "payment.refund_failed",
}


def event(cls: type[Message], order_id: str = "ord_1") -> Message:
    return cls(event_id=f"e-{cls.__name__}", order_id=order_id, merchant_id="mer_a")  # type: ignore[call-arg]


def raw(subject: str, type_name: str, data: bytes) -> SimpleNamespace:
    headers = {"Paymesh-Type": type_name, "Paymesh-Merchant": "mer_a"}
    return SimpleNamespace(subject=subject, data=data, headers=headers, metadata=SimpleNamespace(num_delivered=1))


def test_every_event_type_names_its_subject() -> None:
    assert {name: ".".join(event_name(cls)) for name, cls in TYPES.items()} == SUBJECTS


@pytest.mark.parametrize("type_name", sorted(TYPES))
@pytest.mark.parametrize("subject", sorted(SUBJECTS.values()))
def test_a_type_is_decoded_on_its_own_subject_only(type_name: str, subject: str) -> None:
    message = event(TYPES[type_name])
    delivered = raw(f"{subject}.ord_1", type_name, message.SerializeToString())
    if SUBJECTS[type_name] == subject:
        assert decode(delivered, TYPES).message == message
    else:
        with pytest.raises(UndecodableEvent, match=re.escape(f"is published on {SUBJECTS[type_name]}.<order_id>")):
            decode(delivered, TYPES)


def test_bytes_of_one_event_under_another_type_header_are_refused() -> None:
    # What was seen: an OrderCancelled for an order never placed, sent as OrderPlaced, became a payment.
    cancelled = event(order_events.OrderCancelled, "ord_never")
    forged = raw("order.cancelled.ord_never", "paymesh.order.v1.OrderPlaced", cancelled.SerializeToString())
    with pytest.raises(UndecodableEvent, match="on order.cancelled.ord_never: a paymesh.order.v1.OrderPlaced is"):
        decode(forged, TYPES)


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        ("order.placed.ord_2", "its payload's order_id is 'ord_1', the subject's 'ord_2'"),
        ("order.placed.ord_1.x", "its payload's order_id is 'ord_1', the subject's 'ord_1.x'"),
        ("order.placed.", "is published on order.placed.<order_id>"),
        ("order.placed", "is published on order.placed.<order_id>"),
        ("x.order.placed.ord_1", "is published on order.placed.<order_id>"),
    ],
)
def test_the_subject_must_name_the_payloads_order(subject: str, why: str) -> None:
    placed = event(order_events.OrderPlaced)
    with pytest.raises(UndecodableEvent, match=re.escape(why)):
        decode(raw(subject, "paymesh.order.v1.OrderPlaced", placed.SerializeToString()), TYPES)


def test_an_event_cannot_be_published_on_a_subject_a_consumer_would_refuse() -> None:
    placed = event(order_events.OrderPlaced)
    assert OutboundEvent.of("order.placed.ord_1", placed).subject == "order.placed.ord_1"
    for subject in ("order.cancelled.ord_1", "order.placed.ord_2", "payment.placed.ord_1"):
        with pytest.raises(ValueError, match=f"cannot go on {subject}"):
            OutboundEvent.of(subject, placed)
