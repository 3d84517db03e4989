"""Saga events as an e2e test sees them: followed per order from the three streams, or published into them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from paymesh.inventory.v1 import events_pb2 as inventory_events
from paymesh.order.v1 import events_pb2 as order_events
from paymesh.payment.v1 import events_pb2 as payment_events
from tests.e2e.harness import eventually

STREAMS = {"order": "ORDER", "inventory": "INVENTORY", "payment": "PAYMENT"}
EVENT_TYPES: dict[str, Any] = {
    cls.DESCRIPTOR.full_name: cls
    for module in (order_events, inventory_events, payment_events)
    for cls in vars(module).values()
    if isinstance(cls, type) and hasattr(cls, "DESCRIPTOR") and hasattr(cls.DESCRIPTOR, "fields_by_name")
}


@dataclass
class Event:
    """One saga event as JetStream holds it: subject, headers, decoded payload, stream sequence."""

    subject: str
    headers: dict[str, str]
    message: Any
    seq: int

    @property
    def name(self) -> str:
        """`order.placed`: the subject without its order id."""
        return self.subject.rsplit(".", 1)[0]


class Trail:
    """Every event of one order, from the three streams, as they arrive."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        self.events: list[Event] = []
        self.changed = asyncio.Condition()

    async def add(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        cls = EVENT_TYPES.get(headers.get("Paymesh-Type", ""))
        message = cls.FromString(msg.data) if cls is not None else msg.data
        async with self.changed:
            self.events.append(Event(msg.subject, headers, message, msg.metadata.sequence.stream))
            self.changed.notify_all()

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    async def wait_until(self, done: Callable[[list[Event]], bool], what: str, timeout: float = 15.0) -> None:
        try:
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(lambda: done(self.events))
        except TimeoutError:
            raise AssertionError(f"{self.order_id}: no {what} within {timeout}s; got {self.names()}") from None

    async def wait_for(self, *names: str, timeout: float = 15.0) -> list[Event]:
        """The first event of each name, once all have arrived."""
        try:
            async with asyncio.timeout(timeout), self.changed:
                await self.changed.wait_for(lambda: all(self.named(n) for n in names))
        except TimeoutError:
            raise AssertionError(f"events of {self.order_id}: wanted {names}, got {self.names()}") from None
        return [self.named(n)[0] for n in names]


class Bus:
    """A nats-py connection for following saga events and publishing into the streams."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.subs: list[Any] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, **options: Any) -> AsyncIterator[Bus]:
        """`options`: how to sign in (the mesh's operator user: `Mesh.nats_options()`)."""
        nc = await nats.connect(url.split(","), name="e2e-tests", connect_timeout=5, **options)
        bus = cls(nc)
        try:
            yield bus
        finally:
            for sub in bus.subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await nc.close()

    async def follow(self, order_id: str) -> Trail:
        """Collect `*.*.<order_id>` from each stream, from the first message on (ordered consumers)."""
        trail = Trail(order_id)
        for domain, stream in STREAMS.items():
            sub = await self.js.subscribe(f"{domain}.*.{order_id}", stream=stream, ordered_consumer=True, cb=trail.add)
            self.subs.append(sub)
        return trail

    async def watch(self, stream: str, subject: str) -> Trail:
        """Collect what `stream` receives on `subject` from now on."""
        trail = Trail(subject)
        sub = await self.js.subscribe(
            subject, stream=stream, ordered_consumer=True, cb=trail.add, deliver_policy=DeliverPolicy.NEW
        )
        self.subs.append(sub)
        return trail

    async def stream_events(self, stream: str, subject: str) -> list[Event]:
        """What `stream` holds on `subject` right now (read up to its last sequence)."""
        info = await self.js.stream_info(stream, subjects_filter=subject)
        count = sum((info.state.subjects or {}).values()) if info.state.subjects else 0
        trail = Trail(subject)
        if count == 0:
            return []
        sub = await self.js.subscribe(subject, stream=stream, ordered_consumer=True, cb=trail.add)
        try:
            async with asyncio.timeout(10), trail.changed:
                await trail.changed.wait_for(lambda: len(trail.events) >= count)
        finally:
            await sub.unsubscribe()
        return trail.events

    async def wait_consumed(self, stream: str, durables: Iterable[str], seq: int, timeout: float = 15.0) -> None:
        """Until each durable consumer has acknowledged every message of `stream` up to `seq`."""

        async def floors() -> dict[str, int]:
            out = {}
            for durable in durables:
                info = await self.js.consumer_info(stream, durable)
                out[durable] = info.ack_floor.stream_seq if info.ack_floor else 0
            return out

        await eventually(floors, lambda f: all(v >= seq for v in f.values()), timeout, f"{stream} acked to {seq}")
