"""The driver of a `paymesh chaos` run: places the planned orders, cancels and refunds some, injects the faults."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from paymesh.chassis.auth import ApiKey
from paymesh.chassis.backoff import Backoff
from paymesh.chassis.jetstream import consumer_backlog
from paymesh.client import MeshClient, Retry, every
from paymesh.order.v1 import order_pb2
from paymesh.payment.v1 import payment_pb2
from paymesh.tools.chaos.facts import order_fact
from paymesh.tools.chaos.plan import Plan, PlannedOrder
from paymesh.tools.invariants import IN_FLIGHT_PAYMENTS, TERMINAL

CALL_TIMEOUT_S = 5.0
# Through a SIGKILL and restart, a nats-server restart and the gateway's faults, a call is asked again
# (the same request, so the same request_id) while its answer may still change, for up to a minute.
THROUGH_FAULTS = Retry(
    attempts=10_000,
    codes=frozenset(
        {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        }
    ),
    backoff=Backoff(base_s=0.1, cap_s=0.5),
    within_s=60.0,
)


def client_of(env: dict[str, str], api_key: ApiKey | None = None) -> MeshClient:
    """A client of the run's mesh that rides out its faults; a merchant's own if `api_key` is given, else
    the development merchant's."""
    keys = {} if api_key is None else {"api_key": api_key}
    return MeshClient.from_env(env, retry=THROUGH_FAULTS, timeout_s=CALL_TIMEOUT_S, **keys)


@dataclass
class Options:
    orders: int = 300
    seed: int = 1
    kills: int = 3
    nats_restarts: int = 1
    rate: float = 40.0  # orders placed per second, at most
    concurrency: int = 16  # requests in flight, at most
    saga_timeout_s: float = 30.0
    settle_grace_s: float = 30.0
    data_dir: Path | None = None
    merchants: int = 2  # whose orders interleave; the checks hold for each on its own


@dataclass
class Tally:
    """What the driver did and what was refused, for the report."""

    placed: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)


class Driver:
    """Places the planned orders at a bounded rate, follows some to cancel or refund, injects the faults.

    Order i is merchant i mod n's, through that merchant's client: the merchants sell the same skus,
    each from its own stock. `client` (the first) also drives the gateway's faults."""

    def __init__(
        self, mesh: Any, clients: Sequence[MeshClient], plan: Plan, opts: Options, say: Callable[[str], None]
    ) -> None:
        self.mesh = mesh
        self.clients = list(clients)
        self.client = self.clients[0]
        self.owner: dict[str, MeshClient] = {}  # order id -> the client of the merchant that placed it
        self.plan = plan
        self.opts = opts
        self.say = say
        self.tally = Tally()
        self.customer = f"cus_chaos_{opts.seed}_{uuid.uuid4().hex[:8]}"
        self.gate = asyncio.Semaphore(opts.concurrency)  # cancels and refunds
        self.slots = asyncio.Semaphore(opts.concurrency)  # order creation
        self.follow_ups: asyncio.Queue[tuple[PlannedOrder, str]] = asyncio.Queue()
        self.placing_done = asyncio.Event()
        self.give_up_at = float("inf")  # set when the faults stop: no follow-up waits past it

    async def stock(self) -> None:
        for client in self.clients:
            for sku, units in self.plan.stock.items():
                await client.put_product(sku, name=sku, available=units)

    async def place_all(self) -> None:
        start = time.monotonic()
        tasks = []
        try:
            for planned in self.plan.orders:
                delay = start + planned.index / self.opts.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # the arrival schedule
                await self.slots.acquire()  # bounded: no new arrival while `concurrency` creates are in flight
                tasks.append(asyncio.create_task(self.place(planned)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:  # pending only when interrupted
                task.cancel()
        self.placing_done.set()

    async def place(self, planned: PlannedOrder) -> None:
        client = self.clients[planned.index % len(self.clients)]
        try:
            order = await client.create_order(
                customer_id=self.customer, items=planned.lines, currency="USD", payment_method_token=planned.token
            )
        except grpc.aio.AioRpcError as err:
            self.tally.counts[f"CreateOrder {err.code().name}"] += 1
            return
        finally:
            self.slots.release()
        self.tally.placed.append(order.order_id)
        self.owner[order.order_id] = client
        if planned.action == "cancel_at_once":
            await self.cancel(order.order_id)
        elif planned.action != "none":
            self.follow_ups.put_nowait((planned, order.order_id))

    async def cancel(self, order_id: str) -> None:
        async with self.gate:
            try:
                await self.owner[order_id].cancel_order(order_id, reason="chaos")
                self.tally.counts["cancelled"] += 1
            except grpc.aio.AioRpcError as err:  # FAILED_PRECONDITION: it ended first (REJECTED, ...)
                self.tally.counts[f"CancelOrder {err.code().name}"] += 1

    async def refund_part(self, order: order_pb2.Order) -> None:
        async with self.gate:
            try:
                await self.owner[order.order_id].refund_payment(
                    order.payment_id, amount_minor=max(1, order.amount_minor // 3), reason="chaos: partial refund"
                )
                self.tally.counts["partially refunded"] += 1
            except grpc.aio.AioRpcError as err:  # FAILED_PRECONDITION: refund declined, or already refunding
                self.tally.counts[f"RefundPayment {err.code().name}"] += 1

    async def follow(self) -> None:
        """A worker: waits for each queued order to end, then cancels it, refunds part of it, or both."""
        while not (self.placing_done.is_set() and self.follow_ups.empty()):
            try:
                planned, order_id = await asyncio.wait_for(self.follow_ups.get(), timeout=0.5)
            except TimeoutError:
                continue
            order = await self.wait_terminal(order_id, deadline_s=self.opts.saga_timeout_s + 60)
            if order is None or order.status != order_pb2.ORDER_STATUS_CONFIRMED:
                continue
            if planned.action in ("partial_refund", "both"):
                await self.refund_part(order)
            if planned.action in ("cancel_after_confirm", "both"):
                await self.cancel(order_id)

    async def wait_terminal(self, order_id: str, deadline_s: float) -> order_pb2.Order | None:
        give_up = time.monotonic() + deadline_s
        while time.monotonic() < min(give_up, self.give_up_at):
            try:
                order: order_pb2.Order | None = await self.owner[order_id].get_order(order_id)
            except grpc.aio.AioRpcError:
                order = None
            if order is not None and order_fact(order).status in TERMINAL:
                return order
            await asyncio.sleep(0.25)  # re-reading the order under a deadline
        return None

    async def inject(self) -> None:
        start = time.monotonic()
        for fault in self.plan.faults:
            delay = start + fault.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the fault schedule
            t = time.monotonic() - start
            if fault.kind == "gateway_on":
                await self.client.configure_gateway(
                    seed=self.opts.seed, transient_error_rate=0.2, lost_response_rate=0.1, latency_ms=20
                )
                self.note(f"{t:5.1f}s gateway faults on: transient 0.2, lost response 0.1, latency 20 ms")
            elif fault.kind == "gateway_off":
                await self.client.configure_gateway(reset=True)
                self.note(f"{t:5.1f}s gateway faults off")
            elif fault.kind == "kill":
                await self.mesh.kill(fault.target)
                await asyncio.sleep(fault.down_s)  # the outage itself
                await self.mesh.restart(fault.target)
                self.note(f"{t:5.1f}s SIGKILL {fault.target}, down {fault.down_s}s, restarted")
            else:
                nats = self.mesh.nats
                await asyncio.to_thread(nats.stop)
                await asyncio.sleep(fault.down_s)  # the outage itself
                await asyncio.to_thread(nats.start)  # same port, same store
                self.note(f"{t:5.1f}s nats-server stopped, down {fault.down_s}s, started on port {nats.port}")

    def note(self, line: str) -> None:
        self.tally.faults.append(line)
        self.say(f"chaos: {line}")

    async def orders_of(self, client: MeshClient) -> list[order_pb2.Order]:
        """One merchant's orders of this run, as it lists them."""
        return await every(
            lambda token: client.list_orders(customer_id=self.customer, page_size=500, page_token=token)
        )

    async def orders_of_run(self) -> list[order_pb2.Order]:
        return [order for client in self.clients for order in await self.orders_of(client)]

    async def order_ids(self) -> list[str]:
        """Every order of this run: those placed, and any whose CreateOrder answer was lost for good."""
        return sorted(set(self.tally.placed) | {o.order_id for o in await self.orders_of_run()})

    async def order_ids_by_merchant(self) -> list[tuple[MeshClient, list[str]]]:
        """Each merchant's client and its orders of this run (listed by that merchant: a lost CreateOrder answer
        is found too), so the checks run per merchant on what that merchant can see."""
        out = []
        for client in self.clients:
            listed = {o.order_id for o in await self.orders_of(client)}
            placed = {order_id for order_id, owner in self.owner.items() if owner is client}
            out.append((client, sorted(listed | placed)))
        return out

    async def all_terminal(self) -> bool:
        """One look: has every order of this run ended?"""
        orders = await self.orders_of_run()
        ended = {o.order_id for o in orders if order_fact(o).status in TERMINAL}
        return len(ended) == len(orders) and set(self.tally.placed) <= ended

    async def quiet(self, js: Any) -> bool:
        """One look: no payment waits for the gateway and every consumer has acked all it was given.

        An order can end before the other services have applied its last events (inventory commits the
        sale on the same payment.succeeded that confirms the order): the checks run once this holds.
        """
        for status in IN_FLIGHT_PAYMENTS:
            value = getattr(payment_pb2, f"PAYMENT_STATUS_{status}")
            for client in self.clients:
                if (await client.list_payments(status=value, page_size=1)).items:
                    return False
        for stream in ("ORDER", "INVENTORY", "PAYMENT"):
            for info in await js.consumers_info(stream):
                if await consumer_backlog(js, stream, info.name):
                    return False
        return True

    async def wait_until(self, probe: Callable[[], Awaitable[bool]], limit_s: float) -> float | None:
        """Seconds until `probe` holds; None if it does not within `limit_s`."""
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) <= limit_s:
            try:
                if await probe():
                    return elapsed
            except (grpc.aio.AioRpcError, OSError, TimeoutError):
                pass  # asked again below
            await asyncio.sleep(0.5)  # re-reading the state under a deadline
        return None
