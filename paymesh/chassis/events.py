"""The saga event on the wire: a protobuf message, its subject and its JetStream headers."""

from __future__ import annotations

import functools
import os
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from paymesh.chassis.db import as_utc
from paymesh.chassis.schema_steps import LEGACY_MERCHANT_ID

MSG_ID = "Nats-Msg-Id"
TYPE = "Paymesh-Type"
TRACEPARENT = "traceparent"
MERCHANT = "Paymesh-Merchant"


def new_event_id() -> str:
    return str(uuid.uuid4())


def subject(domain: str, event: str, order_id: str) -> str:
    """`<domain>.<event>.<order_id>`, e.g. `payment.refund_failed.<order_id>`."""
    return f"{domain}.{event}.{order_id}"


_WORD_START = re.compile(r"(?<!^)(?=[A-Z])")


def event_name(message_type: type[Message]) -> tuple[str, str]:
    """The (domain, event) a type's subjects start with, from its names: `paymesh.payment.v1.PaymentRefundFailed`
    -> ("payment", "refund_failed"). The one mapping between types and subjects, so none is kept by hand."""
    descriptor = message_type.DESCRIPTOR
    return _event_name(descriptor.file.package, descriptor.name)


@functools.cache  # once per type: every event consumed and published asks
def _event_name(package: str, name: str) -> tuple[str, str]:
    parts = package.split(".")
    domain = parts[1] if len(parts) > 2 else parts[0]
    prefix = domain.title().replace("_", "")
    if name.startswith(prefix) and len(name) > len(prefix):
        name = name[len(prefix) :]
    return domain, _WORD_START.sub("_", name).lower()


def subject_disagrees(subject_name: str, message: Message) -> str | None:
    """Why `message` does not belong on `subject_name` (None when it does): the subject must be its type's
    `<domain>.<event>` and the payload's own order id."""
    domain, event = event_name(type(message))
    head, _, order_id = subject_name.partition(f"{domain}.{event}.")
    if head or not order_id:
        return f"a {message.DESCRIPTOR.full_name} is published on {domain}.{event}.<order_id>"
    if "order_id" in message.DESCRIPTOR.fields_by_name and order_id != getattr(message, "order_id", ""):
        return f"its payload's order_id is {getattr(message, 'order_id', '')!r}, the subject's {order_id!r}"
    return None


def to_timestamp(value: datetime) -> Timestamp:
    """A stored time as a protobuf Timestamp (naive values from SQLite are UTC)."""
    ts = Timestamp()
    ts.FromDatetime(as_utc(value))
    return ts


def now_timestamp() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def new_traceparent() -> str:
    """A W3C traceparent for a saga that starts here (version 00, sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: str | None) -> str:
    """Same trace as `parent`, new span id; a fresh trace when the parent is missing or malformed."""
    parts = (parent or "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        return f"{parts[0]}-{parts[1]}-{os.urandom(8).hex()}-{parts[3]}"
    return new_traceparent()


@dataclass(frozen=True)
class OutboundEvent:
    """An event to publish: what the outbox stores and the relay sends."""

    event_id: str
    subject: str
    type: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, subject: str, message: Message, traceparent: str | None = None) -> OutboundEvent:
        """Wrap a protobuf event; it must carry its own `event_id`, and its `merchant_id` where it has
        the field (every saga event does), which becomes the `Paymesh-Merchant` header too."""
        event_id = getattr(message, "event_id", "")
        if not event_id:
            raise ValueError(f"{message.DESCRIPTOR.full_name} has no event_id")
        # What a consumer would dead-letter is refused here, before it is written to an outbox.
        if (problem := subject_disagrees(subject, message)) is not None:
            raise ValueError(f"{message.DESCRIPTOR.full_name} {event_id} cannot go on {subject}: {problem}")
        headers = {TRACEPARENT: traceparent or new_traceparent()}
        if "merchant_id" in message.DESCRIPTOR.fields_by_name:
            merchant_id = getattr(message, "merchant_id", "")
            if not merchant_id:
                raise ValueError(f"{message.DESCRIPTOR.full_name} {event_id} has no merchant_id")
            headers[MERCHANT] = merchant_id
        return cls(
            event_id=event_id,
            subject=subject,
            type=message.DESCRIPTOR.full_name,
            payload=message.SerializeToString(),
            headers=headers,
        )

    def nats_headers(self) -> dict[str, str]:
        return {**self.headers, MSG_ID: self.event_id, TYPE: self.type}


def message_types(*sources: type[Message] | ModuleType) -> dict[str, type[Message]]:
    """The `Paymesh-Type` -> class map for the given event classes, or every message of the given
    generated modules (`paymesh.order.v1.events_pb2`): the one way a registry of events is made."""
    out: dict[str, type[Message]] = {}
    for source in sources:
        if isinstance(source, ModuleType):
            for name in source.DESCRIPTOR.message_types_by_name:
                cls = getattr(source, name)
                out[cls.DESCRIPTOR.full_name] = cls
        else:
            out[source.DESCRIPTOR.full_name] = source
    return out


class UndecodableEvent(Exception):
    """A message that can never be applied: no type header, an unknown type, bad bytes, or a subject that is
    not its type's and its order's."""


@dataclass
class InboundEvent:
    """A fetched message, decoded; `raw` is the nats-py message to ack, nak or term."""

    event_id: str
    subject: str
    type: str
    message: Any
    traceparent: str | None
    num_delivered: int
    raw: Any
    context: dict[str, Any] = field(default_factory=dict)  # a Prepare step's results

    @property
    def order_id(self) -> str:
        return str(getattr(self.message, "order_id", ""))

    @property
    def merchant_id(self) -> str:
        """The merchant the event is about, from its payload (decode checked the header agrees). An event
        without one was published before paymesh knew merchants: its rows went to the legacy merchant."""
        return str(getattr(self.message, "merchant_id", "")) or LEGACY_MERCHANT_ID


def decode(raw: Any, types: dict[str, type[Message]]) -> InboundEvent:
    """Decode a nats-py message whose `Paymesh-Type` names one of `types`."""
    headers = raw.headers or {}
    type_name = headers.get(TYPE)
    if not type_name:
        raise UndecodableEvent(f"no {TYPE} header on {raw.subject}")
    cls = types.get(type_name)
    if cls is None:
        raise UndecodableEvent(f"unknown event type {type_name!r} on {raw.subject}")
    try:
        message = cls.FromString(raw.data)
    except DecodeError as exc:
        raise UndecodableEvent(f"payload of {raw.subject} is not a {type_name}: {exc}") from exc
    # The payload's id, not the header: a copy republished under a new Nats-Msg-Id
    # is still the same event to the inbox.
    event_id = getattr(message, "event_id", "") or headers.get(MSG_ID, "")
    if not event_id:
        raise UndecodableEvent(f"{type_name} on {raw.subject} has no event id")
    # The subject is what NATS permissions let only the owning service publish, and what consumers filter
    # on; a type header (or a payload's order id) that disagrees with it would be applied as what it claims.
    if (problem := subject_disagrees(raw.subject, message)) is not None:
        raise UndecodableEvent(f"{type_name} {event_id} on {raw.subject}: {problem}")
    # A header that names another merchant than the payload is a forged or broken event: applied, it
    # would act on one merchant's rows for another's.
    merchant_id = getattr(message, "merchant_id", "")
    if MERCHANT in headers and headers[MERCHANT] != merchant_id:
        raise UndecodableEvent(f"{type_name} {event_id} on {raw.subject}: header {MERCHANT} "
                               f"{headers[MERCHANT]!r} differs from its payload's merchant_id {merchant_id!r}")
    return InboundEvent(
        event_id=event_id,
        subject=raw.subject,
        type=type_name,
        message=message,
        traceparent=headers.get(TRACEPARENT),
        num_delivered=raw.metadata.num_delivered,
        raw=raw,
    )
