"""`paymesh demo`: a tour of the saga on a live mesh: a mix of orders, followed live, then what the bank saw and
the webhooks the merchant was sent."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from paymesh.chassis.config import grpc_addr
from paymesh.chassis.tls import ClientTls
from paymesh.client import MeshClient
from paymesh.gateway.v1 import gateway_pb2
from paymesh.ops.addresses import dial_addr
from paymesh.ops.credentials import MeshCredentials
from paymesh.ops.launcher import LaunchError, Mesh, wait_serving
from paymesh.ops.services import NAMES, SPECS
from paymesh.ops.webhooks_listen import (
    ALL_EVENTS,
    Received,
    WebhookReceiver,
    create_endpoint,
    delete_endpoint,
    refused,
    url_refusal_hint,
)
from paymesh.order.v1 import order_pb2
from paymesh.webhook.v1 import webhook_pb2

OS = order_pb2.OrderStatus
# WatchOrder ends at these; CONFIRMED may still be cancelled.
FINAL = {OS.ORDER_STATUS_CONFIRMED, OS.ORDER_STATUS_REJECTED, OS.ORDER_STATUS_PAYMENT_FAILED,
         OS.ORDER_STATUS_CANCELLED, OS.ORDER_STATUS_REQUIRES_REVIEW}  # fmt: skip
ORDER_TIMEOUT_S = 40.0
PROBE_TIMEOUT_S = 3.0
# The webhooks of the tour's orders, once every order is final: each is sent within a second on a live mesh.
WEBHOOK_TIMEOUT_S = 20.0


@dataclass
class Scenario:
    """One order of the tour and the status it must end in."""

    name: str
    token: str
    quantity: int
    expect: int
    webhooks: tuple[str, ...]  # the event types the merchant is sent about the order
    cancel_after_confirm: bool = False
    order_id: str = ""
    amount_minor: int = 0
    final: order_pb2.Order | None = None
    history: list[str] = field(default_factory=list)


def scenarios() -> list[Scenario]:
    return [
        Scenario("success", "tok_visa", 1, OS.ORDER_STATUS_CONFIRMED, ("order.confirmed",)),
        Scenario("card declined", "tok_chargeDeclined", 1, OS.ORDER_STATUS_PAYMENT_FAILED, ("order.payment_failed",)),
        Scenario("out of stock", "tok_visa", 50, OS.ORDER_STATUS_REJECTED, ("order.rejected",)),
        Scenario("flaky gateway", "tok_flaky", 1, OS.ORDER_STATUS_CONFIRMED, ("order.confirmed",)),
        Scenario("lost response", "tok_lostResponse", 1, OS.ORDER_STATUS_CONFIRMED, ("order.confirmed",)),
        Scenario("cancel after confirm", "tok_visa", 2, OS.ORDER_STATUS_CANCELLED,
                 ("order.confirmed", "order.cancelled", "payment.refunded"), cancel_after_confirm=True),
    ]


def status_name(status: int) -> str:
    return OS.Name(status).removeprefix("ORDER_STATUS_")


def money(amount_minor: int, currency: str = "USD") -> str:
    return f"{amount_minor / 100:.2f} {currency}"  # display only; amounts stay integers everywhere else


class Tour:
    """Drives the scenarios through the mesh client and prints what happens."""

    def __init__(self, client: MeshClient, started: float) -> None:
        self.client = client
        self.started = started
        self.run = uuid.uuid4().hex[:6]
        self.sku = f"demo-{self.run}-mug"
        self.unit_price = 1250

    def log(self, scenario: str, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {scenario:<21} {text}", flush=True)

    async def run_all(self) -> list[Scenario]:
        await self.client.put_product(self.sku, name="Demo mug", available=10)
        print(f"product {self.sku}: 10 available at {money(self.unit_price)}", flush=True)
        tour = scenarios()
        await asyncio.gather(*(self.follow(s) for s in tour))
        return tour

    async def follow(self, s: Scenario) -> None:
        order = await self.client.create_order(
            customer_id=f"demo-{self.run}",
            items=[(self.sku, s.quantity, self.unit_price)],
            currency="USD",
            payment_method_token=s.token,
        )
        s.order_id, s.amount_minor = order.order_id, order.amount_minor
        self.log(s.name, f"{order.order_id} placed: {s.quantity} x {self.sku}, {s.token}, {money(order.amount_minor)}")
        async with asyncio.timeout(ORDER_TIMEOUT_S):
            order = await self.watch(s)
            if s.cancel_after_confirm and order.status == OS.ORDER_STATUS_CONFIRMED:
                await self.client.cancel_order(s.order_id, reason="customer changed their mind")
                self.log(s.name, "CancelOrder sent")
                order = await self.watch(s)
        s.final = order

    async def watch(self, s: Scenario) -> order_pb2.Order:
        """Print each status change until WatchOrder ends the stream (a terminal status)."""
        order = None
        async with self.client.watch_order(s.order_id) as changes:
            async for order in changes:
                name = status_name(order.status)
                if not s.history or s.history[-1] != name:
                    previous = s.history[-1] if s.history else ""
                    s.history.append(name)
                    reason = f" ({order.failure_reason})" if order.failure_reason else ""
                    self.log(s.name, f"{previous + ' -> ' if previous else ''}{name}{reason}")
                if order.status in FINAL:
                    break
        if order is None:
            raise RuntimeError(f"WatchOrder sent nothing for {s.order_id}")
        return order

    async def charges(self, order_id: str) -> list[gateway_pb2.Charge]:
        return (await self.client.list_charges(order_id=order_id)).items


def table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


async def summary(tour: Tour, done: list[Scenario]) -> bool:
    """Print each order's end and the gateway's own record of it; True when every order ended as expected."""
    orders = [("scenario", "order", "expected", "final status", "reason")]
    charges = [("scenario", "charge", "status", "amount", "refunded", "decline code")]
    ok = True
    for s in done:
        final = s.final.status if s.final is not None else OS.ORDER_STATUS_UNSPECIFIED
        ok &= final == s.expect
        mark = "" if final == s.expect else "  <-- unexpected"
        reason = s.final.failure_reason if s.final is not None else ""
        orders.append((s.name, s.order_id, status_name(s.expect), status_name(final) + mark, reason))
        for c in await tour.charges(s.order_id):
            status = gateway_pb2.ChargeStatus.Name(c.status).removeprefix("CHARGE_STATUS_")
            amount, refunded = money(c.amount_minor, c.currency), money(c.refunded_minor, c.currency)
            charges.append((s.name, c.charge_id, status, amount, refunded, c.decline_code))
    print("\nsummary")
    for line in table(orders):
        print(line)
    print("\ngateway charges and refunds")
    for line in table(charges):
        print(line)
    return ok


def arrived(received: list[Received], done: list[Scenario]) -> dict[tuple[str, str], Received]:
    """The first delivery of each (order, type) of the tour's orders (a retry repeats its webhook id)."""
    ours = {s.order_id for s in done}
    first: dict[tuple[str, str], Received] = {}
    for r in received:
        if r.order_id in ours:
            first.setdefault((r.order_id, r.type), r)
    return first


async def webhooks(receiver: WebhookReceiver, done: list[Scenario]) -> bool:
    """Print the webhooks each order was sent, once all arrived (or the deadline passed); True when every
    expected one arrived and verified."""
    wanted = {(s.order_id, kind) for s in done for kind in s.webhooks}
    await receiver.wait_for(lambda received: wanted <= arrived(received, done).keys(), WEBHOOK_TIMEOUT_S)
    got = arrived(list(receiver.received), done)
    rows = [("scenario", "type", "order", "sequence", "signature")]
    ok = True
    for s in done:
        mine = sorted((r for (order_id, _), r in got.items() if order_id == s.order_id), key=lambda r: r.sequence)
        for r in mine:
            ok &= r.verified and r.type in s.webhooks
            mark = "" if r.type in s.webhooks else "  <-- unexpected"
            rows.append((s.name, r.type, r.order_id, str(r.sequence), r.signature + mark))
        for kind in s.webhooks:
            if (s.order_id, kind) not in got:
                ok = False
                rows.append((s.name, kind, s.order_id, "-", f"<-- missing after {WEBHOOK_TIMEOUT_S:g}s"))
    print("\nwebhook deliveries")
    for line in table(rows):
        print(line)
    return ok


class WebhooksUnavailable(Exception):
    """webhook_svc did not register the demo's endpoint; the message says why and what to do."""


def addrs_of(env: Mapping[str, str]) -> dict[str, str]:
    return {s.name: dial_addr(grpc_addr(s, env)) for s in SPECS}


async def running_mesh(env: Mapping[str, str]) -> dict[str, str] | None:
    """The addresses of a mesh already running, when the environment names one and all of it answers."""
    named = [f"{s.env_prefix}_GRPC_ADDR" for s in SPECS]
    if not env.get("PAYMESH_NATS_URL") or not all(env.get(v) for v in named):
        return None
    addrs = addrs_of(env)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            tls = ClientTls.from_env(env)  # PAYMESH_TLS_CA: a TLS mesh
            await asyncio.gather(*(wait_serving(s, a, tls) for s, a in addrs.items()))
    except (TimeoutError, LaunchError):
        print(f"no mesh answering at {', '.join(addrs.values())}: starting one", flush=True)
        return None
    return addrs


async def register(client: MeshClient, receiver: WebhookReceiver, addr: str) -> webhook_pb2.Endpoint:
    """The demo's own endpoint (every event type) for `receiver`. webhook_svc is part of the mesh: a refusal
    ends the demo, saying so."""
    try:
        endpoint = await create_endpoint(client, receiver, ALL_EVENTS, "paymesh demo")
    except grpc.aio.AioRpcError as err:
        hint = url_refusal_hint(err) or "; webhook_svc is part of the mesh: start it with the others (`paymesh up`)"
        raise WebhooksUnavailable(f"webhook_svc at {addr} did not register the demo's endpoint "
                                  f"({refused(err)}){hint}") from None
    print(f"webhook endpoint {endpoint.endpoint_id} at {receiver.url} (every event type)", flush=True)
    return endpoint


async def demo(env: Mapping[str, str], data_dir: Path) -> int:
    started = time.monotonic()
    mesh: Mesh | None = None
    addrs = await running_mesh(env)
    try:
        if addrs is None:
            print(f"starting nats-server and the services (data and logs under {data_dir})", flush=True)
            mesh = await Mesh(env, data_dir).start()
            addrs = {s: mesh.addr(s) for s in NAMES}
            print(f"mesh up in {time.monotonic() - started:.1f}s", flush=True)
        else:
            print(f"using the running mesh at {', '.join(addrs.values())}", flush=True)
        keys = mesh.credentials if mesh is not None else MeshCredentials.load(env, data_dir)
        async with MeshClient.from_addrs(addrs, **keys.client_options()) as client:
            receiver = WebhookReceiver()
            await receiver.start()
            try:
                endpoint = await register(client, receiver, addrs["webhook_svc"])
                try:
                    tour = Tour(client, started)
                    done = await tour.run_all()
                    ok = await summary(tour, done)
                    ok &= await webhooks(receiver, done)
                finally:
                    await delete_endpoint(client, endpoint.endpoint_id)
                print(f"webhook endpoint {endpoint.endpoint_id} deleted", flush=True)
            finally:
                await receiver.stop()
        print(f"\ndemo {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.1f}s", flush=True)
        return 0 if ok else 1
    except (LaunchError, WebhooksUnavailable) as err:
        print(f"paymesh demo: {err}", file=sys.stderr, flush=True)
        return 1
    except (grpc.aio.AioRpcError, TimeoutError) as err:
        detail = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.aio.AioRpcError) else "timed out"
        print(f"paymesh demo: the mesh did not answer as expected ({detail})", file=sys.stderr, flush=True)
        return 1
    finally:
        if mesh is not None:
            await mesh.stop()
            print("mesh stopped", flush=True)


def run(data_dir: str | None = None, env: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    resolved = Path(data_dir or env.get("PAYMESH_DATA_DIR") or ".paymesh").resolve()
    return asyncio.run(demo(env, resolved))
