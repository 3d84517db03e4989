"""In-process fan-out of committed order states to the WatchOrder streams following them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from order_svc.domain import Order
from order_svc.messages import order_to_proto
from order_svc.store import OrderKey
from paymesh.chassis.db import UnitOfWork
from paymesh.order.v1 import order_pb2


@dataclass(frozen=True)
class Snapshot:
    """One state of an order; `version` orders states of the same order."""

    merchant_id: str
    order_id: str
    version: int
    order: order_pb2.Order

    @property
    def key(self) -> OrderKey:
        return self.merchant_id, self.order_id


class OrderWatch:
    """Streams follow an order here; writers hand over each new state once its transaction commits.

    A stream follows (merchant_id, order_id): a state reaches only the streams of the order's own
    merchant, whatever order id another merchant asks for. Only this process's commits arrive this
    way; a stream also re-reads the order now and then, so changes made by another replica reach it too.
    """

    def __init__(self) -> None:
        self._followers: dict[OrderKey, set[asyncio.Queue[Snapshot]]] = {}

    @contextmanager
    def follow(self, merchant_id: str, order_id: str) -> Iterator[asyncio.Queue[Snapshot]]:
        key = (merchant_id, order_id)
        queue: asyncio.Queue[Snapshot] = asyncio.Queue()
        self._followers.setdefault(key, set()).add(queue)
        try:
            yield queue
        finally:
            followers = self._followers.get(key, set())
            followers.discard(queue)
            if not followers:
                self._followers.pop(key, None)

    def snapshot(self, order: Order) -> Snapshot | None:
        """The order as it is now, if anyone follows it (a batch may move it more than once)."""
        if (order.merchant_id, order.order_id) not in self._followers:
            return None
        return Snapshot(order.merchant_id, order.order_id, order.version, order_to_proto(order))

    def deliver_after_commit(self, uow: UnitOfWork, snapshots: list[Snapshot | None]) -> None:
        states = [s for s in snapshots if s is not None]
        if states:
            uow.after_commit(lambda: self._deliver(states))

    def _deliver(self, states: list[Snapshot]) -> None:
        for state in states:
            for queue in self._followers.get(state.key, ()):
                queue.put_nowait(state)
