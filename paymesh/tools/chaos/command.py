"""`paymesh chaos`: its flags, and the run: a mesh of its own, the plan driven through it, the checks."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats

from paymesh.chassis import jetstream
from paymesh.chassis.auth import load_pepper
from paymesh.client import MeshClient
from paymesh.ops.credentials import KeyFile, new_merchant_key
from paymesh.ops.ports import mesh_env
from paymesh.ops.webhooks_listen import Received, WebhookReceiver, create_endpoint
from paymesh.tools.chaos.driver import Driver, Options, Tally, client_of
from paymesh.tools.chaos.facts import collect, dead_letters, foreign_charges, order_fact, stray_charges
from paymesh.tools.chaos.plan import make_plan
from paymesh.tools.invariants import TERMINAL, CheckResult, Observed, format_report, run_checks, told


async def make_merchants(mesh: Any, count: int) -> list[KeyFile]:
    """The run's merchants, each with a key of every merchant scope: made as `paymesh merchants create` makes them."""
    pepper = load_pepper(mesh.env, mesh.data_dir)
    nc = await jetstream.connect(mesh.nats_url.split(","), "paymesh-chaos", credentials=mesh.nats_creds)
    try:
        return [await new_merchant_key(nc, pepper, f"chaos merchant {i + 1}") for i in range(count)]
    finally:
        await nc.close()


def webhooks_of(receiver: WebhookReceiver) -> tuple[dict[str, set[str]], int]:
    """Per order, the webhook types that arrived signed; and how many deliveries did not verify."""
    told: dict[str, set[str]] = {}
    for got in receiver.received:
        if got.verified:
            told.setdefault(got.order_id, set()).add(got.type)
    return told, sum(not got.verified for got in receiver.received)


async def told_everything(driver: Driver, receivers: list[WebhookReceiver], timeout_s: float) -> bool:
    """Wait (at most `timeout_s`) until each merchant's receiver holds the webhook of each of its orders' final
    status; True when it does."""
    deadline = time.monotonic() + timeout_s
    for receiver, client in zip(receivers, driver.clients, strict=True):
        finals = {o.order_id: told(order_fact(o).status) for o in await driver.orders_of(client)
                  if order_fact(o).status in TERMINAL}

        def arrived(got: list[Received], finals: dict[str, str] = finals) -> bool:
            seen = {(r.order_id, r.type) for r in got if r.verified}
            return all((order_id, kind) in seen for order_id, kind in finals.items())

        if not await receiver.wait_for(arrived, max(0.0, deadline - time.monotonic())):
            return False
    return True


async def chaos(opts: Options, say: Callable[[str], None]) -> tuple[list[CheckResult], Tally, list[Observed]]:
    """The run; the checks hold for each merchant on its own (its orders, its stock, its charges), so each
    merchant's results are named with it."""
    from paymesh.ops.launcher import Mesh

    window_s = opts.orders / opts.rate
    plan = make_plan(opts.seed, opts.orders, opts.kills, opts.nats_restarts, window_s)
    with tempfile.TemporaryDirectory(prefix="paymesh-chaos-") as tmp:
        data_dir = (opts.data_dir or Path(tmp)).resolve()
        env = mesh_env(data_dir)
        env["PAYMESH_SAGA_TIMEOUT_S"] = f"{opts.saga_timeout_s:g}"
        mesh = Mesh(env, data_dir, out=lambda line: say(f"chaos: {line}"), err=lambda line: say(f"chaos: {line}"))
        clients: list[MeshClient] = []
        receivers: list[WebhookReceiver] = []
        followers: list[asyncio.Task[None]] = []
        try:
            await mesh.start()
            merchants = await make_merchants(mesh, opts.merchants)
            clients = [client_of(mesh.env, m.api_key) for m in merchants]
            # Each merchant's own endpoint (every type), told through the faults (webhook_svc is killed too).
            for client in clients:
                receiver = WebhookReceiver()
                await receiver.start()
                receivers.append(receiver)
                await create_endpoint(client, receiver, ["*"], "paymesh chaos")
            driver = Driver(mesh, clients, plan, opts, say)
            await driver.stock()
            say(f"chaos: seed {opts.seed}, {opts.orders} orders of {len(merchants)} merchants at <= {opts.rate:g}/s, "
                f"{len(plan.faults)} faults")
            started = time.monotonic()
            followers = [asyncio.create_task(driver.follow()) for _ in range(max(2, opts.concurrency // 2))]
            await asyncio.gather(driver.place_all(), driver.inject())
            # The faults have stopped: every service runs, the gateway is clean.
            for child in mesh.dead():
                await mesh.restart(child.service, replica=child.replica)
            await driver.client.configure_gateway(reset=True)
            faults_stopped = time.monotonic()
            limit_s = opts.saga_timeout_s + opts.settle_grace_s
            driver.give_up_at = faults_stopped + limit_s
            say(f"chaos: {len(driver.tally.placed)} orders placed in {faults_stopped - started:.1f}s; faults stopped")
            await asyncio.gather(*followers)  # bounded by give_up_at
            terminal = await driver.wait_until(driver.all_terminal, max(0.0, driver.give_up_at - time.monotonic()))
            settled_after = None if terminal is None else time.monotonic() - faults_stopped
            nc = await nats.connect(mesh.nats_url.split(","), connect_timeout=5, **mesh.nats_options())
            try:
                js = nc.jetstream()
                if await driver.wait_until(lambda: driver.quiet(js), opts.settle_grace_s) is None:
                    say("chaos: payments or consumers still busy; checking what is there")
            finally:
                await nc.close()
            if not await told_everything(driver, receivers, opts.settle_grace_s):
                say("chaos: webhooks still arriving; checking what is there")
            say("chaos: collecting")
            dead = await dead_letters(mesh.nats_url, mesh.nats_options())
            results: list[CheckResult] = []
            observed: list[Observed] = []
            ours = {m.merchant_id for m in merchants}
            by_merchant = await driver.order_ids_by_merchant()
            for merchant, receiver, (client, order_ids) in zip(merchants, receivers, by_merchant, strict=True):
                obs = await collect(client, order_ids, plan.stock, opts.concurrency)
                obs.webhooks, obs.unverified_webhooks = webhooks_of(receiver)
                obs.settled_after_s, obs.settle_limit_s = settled_after, limit_s
                # Charges tagged with this merchant for none of its orders, and (once) charges of no merchant here.
                obs.stray_charges = await stray_charges(client, set(order_ids), merchant.merchant_id)
                if merchant is merchants[0]:
                    obs.stray_charges += await foreign_charges(client, ours)
                obs.dead_letters = dead
                observed.append(obs)
                results += [replace(r, name=f"{r.name} · {merchant.merchant_id}") for r in run_checks(obs)]
            return results, driver.tally, observed
        finally:
            for task in followers:  # still running only when the run was interrupted or failed
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            for client in clients:
                await client.close()
            for receiver in receivers:
                await receiver.stop()
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
    parser.add_argument("--merchants", type=int, default=2,
                        help="merchants whose orders interleave, each checked on its own (default 2)")


def options(args: argparse.Namespace) -> Options:
    return Options(
        orders=args.orders, seed=args.seed, kills=args.kills, nats_restarts=args.nats_restarts, rate=args.rate,
        concurrency=args.concurrency, saga_timeout_s=args.saga_timeout, settle_grace_s=args.settle_grace,
        data_dir=Path(args.data_dir) if args.data_dir else None, merchants=args.merchants,
    )


def main(args: argparse.Namespace) -> int:
    """Run, print the faults, what the orders did and the checks; 1 on any violation."""
    opts = options(args)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    async def run() -> tuple[list[CheckResult], Tally, list[Observed]]:
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
          f"--nats-restarts {opts.nats_restarts} --merchants {opts.merchants}")
    print("faults:")
    for line in tally.faults:
        print(f"  {line}")
    driven = ", ".join(f"{k} {v}" for k, v in sorted(tally.counts.items())) or "nothing refused"
    print(f"orders: {len(tally.placed)} placed of {opts.orders}; {driven}")
    print(format_report(results))
    return 0 if all(r.ok for r in results) else 1
