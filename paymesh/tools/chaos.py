"""`paymesh chaos`: orders under crashes, NATS restarts and gateway faults, then the money invariants checked.

Two parts: `collect` reads the facts of a set of orders from the four services (the e2e invariant test
in tests/e2e/test_faults.py uses it too), and the driver that starts the mesh, places orders at a
bounded rate, injects seeded faults, waits for the orders to end and checks them (`paymesh.tools.invariants`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
import nats

from paymesh.chassis.config import SERVICES
from paymesh.chassis.jetstream import consumer_backlog
from paymesh.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from paymesh.inventory.v1 import inventory_pb2, inventory_service_pb2, inventory_service_pb2_grpc
from paymesh.order.v1 import order_pb2, order_service_pb2, order_service_pb2_grpc
from paymesh.payment.v1 import payment_pb2, payment_service_pb2, payment_service_pb2_grpc
from paymesh.tools.invariants import (
    IN_FLIGHT_PAYMENTS,
    TERMINAL,
    ChargeFact,
    CheckResult,
    DeadLetterFact,
    Observed,
    OrderFact,
    PaymentFact,
    ProductFact,
    ReservationFact,
    StepFact,
    format_report,
    run_checks,
)

T = TypeVar("T")

# -- collection: the facts, read through each service's gRPC API ------------------------------------


class Stubs(Protocol):
    """The four services' stubs (tests/e2e/harness.py `Clients` is one)."""

    order: order_service_pb2_grpc.OrderServiceStub
    inventory: inventory_service_pb2_grpc.InventoryServiceStub
    payment: payment_service_pb2_grpc.PaymentServiceStub
    gateway: gateway_service_pb2_grpc.GatewayServiceStub


RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
CALL_TIMEOUT_S = 5.0


async def call(rpc: Callable[..., Awaitable[T]], request: Any, deadline_s: float = 30.0) -> T:
    """One unary call, retried (same request, so the same request_id) while the answer may still change."""
    give_up = time.monotonic() + deadline_s
    attempt = 0
    while True:
        try:
            return await rpc(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            attempt += 1
            if err.code() not in RETRYABLE or time.monotonic() >= give_up:
                raise
        await asyncio.sleep(min(0.05 * 2**attempt, 0.5))  # backoff before the retry, under the deadline


async def bounded(items: Iterable[T], work: Callable[[T], Awaitable[Any]], concurrency: int) -> list[Any]:
    """`work` over `items`, at most `concurrency` at a time, results in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: T) -> Any:
        async with gate:
            return await work(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


def strip(name: str, prefix: str) -> str:
    return "" if name.endswith("_UNSPECIFIED") else name.removeprefix(prefix)


def order_fact(order: order_pb2.Order) -> OrderFact:
    lines = tuple((i.sku, i.quantity) for i in order.items)
    status = strip(order_pb2.OrderStatus.Name(order.status), "ORDER_STATUS_")
    return OrderFact(order.order_id, status, order.amount_minor, lines, order.failure_reason)


def payment_status(value: int) -> str:
    return strip(payment_pb2.PaymentStatus.Name(value), "PAYMENT_STATUS_")


def charge_fact(c: gateway_pb2.Charge) -> ChargeFact:
    status = strip(gateway_pb2.ChargeStatus.Name(c.status), "CHARGE_STATUS_")
    return ChargeFact(c.charge_id, c.order_id, status, c.amount_minor, c.refunded_minor)


async def paged(rpc: Callable[..., Awaitable[Any]], request: Any, items: str, max_pages: int = 1000) -> list[Any]:
    out: list[Any] = []
    for _ in range(max_pages):
        reply = await call(rpc, request)
        out += list(getattr(reply, items))
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    return out


async def collect(
    stubs: Stubs, order_ids: Sequence[str], stocked: Mapping[str, int], concurrency: int = 16
) -> Observed:
    """Read orders, reservations, payments with their trails, charges and products for `order_ids`."""

    async def one(order_id: str) -> tuple[Any, ...]:
        order = (await call(stubs.order.GetOrder, order_service_pb2.GetOrderRequest(order_id=order_id))).order
        payments = await paged(
            stubs.payment.ListPayments, payment_service_pb2.ListPaymentsRequest(order_id=order_id, page_size=50),
            "payments",
        )
        trails = {
            p.payment_id: await paged(
                stubs.payment.ListPaymentEvents,
                payment_service_pb2.ListPaymentEventsRequest(payment_id=p.payment_id, page_size=500),
                "events",
            )
            for p in payments
        }
        charges = await paged(
            stubs.gateway.ListCharges, gateway_service_pb2.ListChargesRequest(order_id=order_id, page_size=500),
            "charges",
        )
        try:
            request = inventory_service_pb2.GetReservationRequest(order_id=order_id)
            reservation: inventory_pb2.Reservation | None = (
                await call(stubs.inventory.GetReservation, request)
            ).reservation
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            reservation = None
        return order, payments, trails, charges, reservation

    obs = Observed(orders={}, products=[])
    for order, payments, trails, charges, res in await bounded(order_ids, one, concurrency):
        oid = order.order_id
        obs.orders[oid] = order_fact(order)
        obs.payments[oid] = [
            PaymentFact(
                p.payment_id, p.order_id, payment_status(p.status), p.amount_minor, p.refunded_minor, p.charge_id,
                p.failure_code,
            )
            for p in payments
        ]
        for payment_id, steps in trails.items():
            obs.trails[payment_id] = [
                StepFact(s.sequence, s.type, payment_status(s.from_status), payment_status(s.to_status)) for s in steps
            ]
        obs.charges[oid] = [charge_fact(c) for c in charges]
        obs.reservations[oid] = ReservationFact(
            oid,
            strip(inventory_pb2.ReservationStatus.Name(res.status), "RESERVATION_STATUS_") if res else "",
            tuple((line.sku, line.quantity) for line in res.lines) if res else (),
        )
    for sku, initial in sorted(stocked.items()):
        p = (await call(stubs.inventory.GetProduct, inventory_service_pb2.GetProductRequest(sku=sku))).product
        obs.products.append(ProductFact(sku, initial, p.available, p.reserved, p.sold))
    return obs


# -- the run: a seeded plan of orders and faults -------------------------------------------------------


TOKENS = (
    ("tok_visa", 58),
    ("tok_chargeDeclined", 8),
    ("tok_chargeDeclinedInsufficientFunds", 6),
    ("tok_flaky", 14),
    ("tok_lostResponse", 14),
)
# What happens to an order after it is placed, and how often.
ACTIONS = (("none", 62), ("cancel_at_once", 12), ("cancel_after_confirm", 12), ("partial_refund", 9), ("both", 5))
KILLABLE = ("order_svc", "inventory_svc", "payment_svc", "gateway_mock")


@dataclass(frozen=True)
class PlannedOrder:
    index: int
    lines: tuple[tuple[str, int, int], ...]  # (sku, quantity, unit price)
    token: str
    action: str  # one of ACTIONS


@dataclass(frozen=True)
class Fault:
    at_s: float  # after the first order
    kind: str  # "kill" (a service), "nats" (restart the nats-server), "gateway_on", "gateway_off"
    target: str = ""
    down_s: float = 0.0


@dataclass(frozen=True)
class Plan:
    stock: dict[str, int]
    orders: tuple[PlannedOrder, ...]
    faults: tuple[Fault, ...]


def weighted(rng: random.Random, table: Sequence[tuple[str, int]]) -> str:
    return rng.choices([name for name, _ in table], weights=[w for _, w in table])[0]


def make_plan(seed: int, orders: int, kills: int, nats_restarts: int, window_s: float) -> Plan:
    """Every choice of the run, from the seed: the same seed gives the same orders, actions and fault times."""
    rng = random.Random(seed)
    # Enough stock for most orders; the small sku runs out, so some orders are REJECTED.
    stock = {"sku-mug": 2 * orders, "sku-tee": 2 * orders, "sku-poster": max(5, orders // 2)}
    planned = []
    for i in range(orders):
        skus = rng.sample(sorted(stock), rng.randint(1, 2))
        lines = tuple((sku, rng.randint(1, 3), rng.randint(100, 9999)) for sku in skus)
        action = weighted(rng, ACTIONS)
        token = weighted(rng, TOKENS)
        if action != "none" and action != "cancel_at_once" and rng.random() < 0.25:
            token = "tok_refundFails"  # its refund is declined for good: the order ends REQUIRES_REVIEW
        planned.append(PlannedOrder(i, lines, token, action))
    faults = [Fault(round(window_s * rng.uniform(0.05, 0.2), 2), "gateway_on")]
    faults.append(Fault(round(window_s * rng.uniform(0.55, 0.75), 2), "gateway_off"))
    kinds = ["nats"] * nats_restarts + ["kill"] * kills
    for kind in kinds:
        target = rng.choice(KILLABLE) if kind == "kill" else "nats-server"
        faults.append(Fault(round(window_s * rng.uniform(0.1, 0.85), 2), kind, target, round(rng.uniform(0.3, 2.0), 2)))
    return Plan(stock, tuple(planned), tuple(sorted(faults, key=lambda f: f.at_s)))


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


@dataclass
class Tally:
    """What the driver did and what was refused, for the report."""

    placed: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)


class Driver:
    """Places the planned orders at a bounded rate, follows some to cancel or refund, injects the faults."""

    def __init__(self, mesh: Any, stubs: Stubs, plan: Plan, opts: Options, say: Callable[[str], None]) -> None:
        self.mesh = mesh
        self.stubs = stubs
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
        for sku, units in self.plan.stock.items():
            request = inventory_service_pb2.PutProductRequest(
                request_id=str(uuid.uuid4()), sku=sku, name=sku, available=units
            )
            await call(self.stubs.inventory.PutProduct, request)

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
        request = order_service_pb2.CreateOrderRequest(
            request_id=str(uuid.uuid4()),
            customer_id=self.customer,
            items=[order_pb2.LineItem(sku=s, quantity=q, unit_price_minor=p) for s, q, p in planned.lines],
            currency="USD",
            payment_method_token=planned.token,
        )
        try:
            order = (await call(self.stubs.order.CreateOrder, request, deadline_s=60)).order
        except grpc.aio.AioRpcError as err:
            self.tally.counts[f"CreateOrder {err.code().name}"] += 1
            return
        finally:
            self.slots.release()
        self.tally.placed.append(order.order_id)
        if planned.action == "cancel_at_once":
            await self.cancel(order.order_id)
        elif planned.action != "none":
            self.follow_ups.put_nowait((planned, order.order_id))

    async def cancel(self, order_id: str) -> None:
        request = order_service_pb2.CancelOrderRequest(order_id=order_id, request_id=str(uuid.uuid4()), reason="chaos")
        async with self.gate:
            try:
                await call(self.stubs.order.CancelOrder, request, deadline_s=60)
                self.tally.counts["cancelled"] += 1
            except grpc.aio.AioRpcError as err:  # FAILED_PRECONDITION: it ended first (REJECTED, ...)
                self.tally.counts[f"CancelOrder {err.code().name}"] += 1

    async def refund_part(self, order: order_pb2.Order) -> None:
        request = payment_service_pb2.RefundPaymentRequest(
            request_id=str(uuid.uuid4()), payment_id=order.payment_id, amount_minor=max(1, order.amount_minor // 3),
            reason="chaos: partial refund",
        )
        async with self.gate:
            try:
                await call(self.stubs.payment.RefundPayment, request, deadline_s=60)
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
                request = order_service_pb2.GetOrderRequest(order_id=order_id)
                order = (await call(self.stubs.order.GetOrder, request)).order
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
                await self.configure(
                    seed=self.opts.seed, transient_error_rate=0.2, lost_response_rate=0.1, latency_ms=20
                )
                self.note(f"{t:5.1f}s gateway faults on: transient 0.2, lost response 0.1, latency 20 ms")
            elif fault.kind == "gateway_off":
                await self.configure(reset=True)
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

    async def configure(self, **settings: Any) -> None:
        await call(self.stubs.gateway.Configure, gateway_service_pb2.ConfigureRequest(**settings), deadline_s=60)

    async def order_ids(self) -> list[str]:
        """Every order of this run: those placed, and any whose CreateOrder answer was lost for good."""
        request = order_service_pb2.ListOrdersRequest(customer_id=self.customer, page_size=500)
        listed = await paged(self.stubs.order.ListOrders, request, "orders")
        return sorted(set(self.tally.placed) | {o.order_id for o in listed})

    async def all_terminal(self) -> bool:
        """One look: has every order of this run ended?"""
        request = order_service_pb2.ListOrdersRequest(customer_id=self.customer, page_size=500)
        orders = await paged(self.stubs.order.ListOrders, request, "orders")
        ended = {o.order_id for o in orders if order_fact(o).status in TERMINAL}
        return len(ended) == len(orders) and set(self.tally.placed) <= ended

    async def quiet(self, js: Any) -> bool:
        """One look: no payment waits for the gateway and every consumer has acked all it was given.

        An order can end before the other services have applied its last events (inventory commits the
        sale on the same payment.succeeded that confirms the order): the checks run once this holds.
        """
        for status in IN_FLIGHT_PAYMENTS:
            value = payment_pb2.PaymentStatus.Value(f"PAYMENT_STATUS_{status}")
            request = payment_service_pb2.ListPaymentsRequest(status=value, page_size=1)
            if (await call(self.stubs.payment.ListPayments, request)).payments:
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


class Channels:
    """Stubs of the four services of a mesh, on channels that redial a restarted service quickly."""

    def __init__(self, mesh: Any) -> None:
        options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
        self.channels = {s: grpc.aio.insecure_channel(mesh.addr(s), options=options) for s in SERVICES}
        self.order = order_service_pb2_grpc.OrderServiceStub(self.channels["order_svc"])
        self.inventory = inventory_service_pb2_grpc.InventoryServiceStub(self.channels["inventory_svc"])
        self.payment = payment_service_pb2_grpc.PaymentServiceStub(self.channels["payment_svc"])
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(self.channels["gateway_mock"])

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


def mesh_env(data_dir: Path) -> dict[str, str]:
    """This environment without PAYMESH_ or service settings, then loopback ports of our own."""
    from paymesh.ops.natsserver import free_port

    prefixes = tuple(f"{prefix}_" for prefix, _, _ in SERVICES.values()) + ("PAYMESH_",)
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    ports: set[int] = set()
    while len(ports) < len(SERVICES) + 1:
        ports.add(free_port())
    nats_port, *service_ports = sorted(ports)
    env["PAYMESH_DATA_DIR"] = str(data_dir)
    env["PAYMESH_NATS_PORT"] = str(nats_port)
    for (prefix, _, _), port in zip(SERVICES.values(), service_ports, strict=True):
        env[f"{prefix}_GRPC_ADDR"] = f"127.0.0.1:{port}"
    return env


async def dead_letters(nats_url: str) -> list[DeadLetterFact]:
    from paymesh.ops.dlq import list_dead_letters

    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=1)
    try:
        return [
            DeadLetterFact(d.seq, d.consumer, d.original_subject, d.reason, d.error)
            for d in await list_dead_letters(nc)
        ]
    finally:
        await nc.close()


async def stray_charges(stubs: Stubs, mine: set[str]) -> list[ChargeFact]:
    request = gateway_service_pb2.ListChargesRequest(page_size=500)
    charges = await paged(stubs.gateway.ListCharges, request, "charges")
    return [charge_fact(c) for c in charges if c.order_id not in mine]


async def chaos(opts: Options, say: Callable[[str], None]) -> tuple[list[CheckResult], Tally, Observed]:
    from paymesh.ops.launcher import Mesh

    window_s = opts.orders / opts.rate
    plan = make_plan(opts.seed, opts.orders, opts.kills, opts.nats_restarts, window_s)
    with tempfile.TemporaryDirectory(prefix="paymesh-chaos-") as tmp:
        data_dir = (opts.data_dir or Path(tmp)).resolve()
        env = mesh_env(data_dir)
        env["PAYMESH_SAGA_TIMEOUT_S"] = f"{opts.saga_timeout_s:g}"
        mesh = Mesh(env, data_dir, out=lambda line: say(f"chaos: {line}"), err=lambda line: say(f"chaos: {line}"))
        stubs: Channels | None = None
        followers: list[asyncio.Task[None]] = []
        try:
            await mesh.start()
            stubs = Channels(mesh)
            driver = Driver(mesh, stubs, plan, opts, say)
            await driver.stock()
            say(f"chaos: seed {opts.seed}, {opts.orders} orders at <= {opts.rate:g}/s, {len(plan.faults)} faults")
            started = time.monotonic()
            followers = [asyncio.create_task(driver.follow()) for _ in range(max(2, opts.concurrency // 2))]
            await asyncio.gather(driver.place_all(), driver.inject())
            # The faults have stopped: every service runs, the gateway is clean.
            for child in mesh.dead():
                await mesh.restart(child.service, replica=child.replica)
            await driver.configure(reset=True)
            faults_stopped = time.monotonic()
            limit_s = opts.saga_timeout_s + opts.settle_grace_s
            driver.give_up_at = faults_stopped + limit_s
            say(f"chaos: {len(driver.tally.placed)} orders placed in {faults_stopped - started:.1f}s; faults stopped")
            await asyncio.gather(*followers)  # bounded by give_up_at
            terminal = await driver.wait_until(driver.all_terminal, max(0.0, driver.give_up_at - time.monotonic()))
            settled_after = None if terminal is None else time.monotonic() - faults_stopped
            nc = await nats.connect(mesh.nats_url, connect_timeout=5)
            try:
                js = nc.jetstream()
                if await driver.wait_until(lambda: driver.quiet(js), opts.settle_grace_s) is None:
                    say("chaos: payments or consumers still busy; checking what is there")
            finally:
                await nc.close()
            say("chaos: collecting")
            order_ids = await driver.order_ids()
            obs = await collect(stubs, order_ids, plan.stock, opts.concurrency)
            obs.settled_after_s, obs.settle_limit_s = settled_after, limit_s
            obs.stray_charges = await stray_charges(stubs, set(order_ids))
            obs.dead_letters = await dead_letters(mesh.nats_url)
            return run_checks(obs), driver.tally, obs
        finally:
            for task in followers:  # still running only when the run was interrupted or failed
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            if stubs is not None:
                await stubs.close()
            await mesh.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--orders", type=int, default=300, help="orders to place (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="seeds every choice: orders, actions, fault times")
    parser.add_argument("--kills", type=int, default=3, help="services SIGKILLed and restarted (default 3)")
    parser.add_argument("--nats-restarts", type=int, default=1, help="nats-server stops and starts (default 1)")
    parser.add_argument("--rate", type=float, default=40.0, help="orders placed per second, at most (default 40)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight, at most (default 16)")
    parser.add_argument("--saga-timeout", type=float, default=30.0, help="PAYMESH_SAGA_TIMEOUT_S of the mesh")
    parser.add_argument(
        "--settle-grace", type=float, default=30.0,
        help="seconds past the saga timeout the orders get to end after the faults stop (default 30)",
    )
    parser.add_argument("--data-dir", metavar="DIR", help="keep the mesh's data here instead of a temp dir")


def options(args: argparse.Namespace) -> Options:
    return Options(
        orders=args.orders, seed=args.seed, kills=args.kills, nats_restarts=args.nats_restarts, rate=args.rate,
        concurrency=args.concurrency, saga_timeout_s=args.saga_timeout, settle_grace_s=args.settle_grace,
        data_dir=Path(args.data_dir) if args.data_dir else None,
    )


def main(args: argparse.Namespace) -> int:
    """Run, print the faults, what the orders did and the checks; 1 on any violation."""
    opts = options(args)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    async def run() -> tuple[list[CheckResult], Tally, Observed]:
        task = asyncio.current_task()
        assert task is not None
        # SIGTERM as Ctrl-C: cancel the run, whose `finally` stops every process it started.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await chaos(opts, say)

    from paymesh.ops.launcher import LaunchError

    try:
        results, tally, _ = asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("chaos: interrupted; the mesh is stopped")
        return 130
    except LaunchError as err:  # a service that would not start again is a finding too, but not a check
        say(f"chaos: the mesh failed, run stopped: {err}")
        return 2
    print(f"paymesh chaos --orders {opts.orders} --seed {opts.seed} --kills {opts.kills} "
          f"--nats-restarts {opts.nats_restarts}")
    print("faults:")
    for line in tally.faults:
        print(f"  {line}")
    driven = ", ".join(f"{k} {v}" for k, v in sorted(tally.counts.items())) or "nothing refused"
    print(f"orders: {len(tally.placed)} placed of {opts.orders}; {driven}")
    print(format_report(results))
    return 0 if all(r.ok for r in results) else 1
