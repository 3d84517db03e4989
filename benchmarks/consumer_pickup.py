"""How long an event waits before an idle consumer applies it.

    .venv/bin/python benchmarks/consumer_pickup.py [--events 150] [--nats-fetch]

Publishes single events at random moments (0–0.7 s apart) to a chassis consumer on a real
nats-server and a SQLite file, and prints the delay from publish to handler. `--nats-fetch`
pulls with nats-py's `fetch(batch, timeout=0.5)` instead of the chassis' `next_batch`, to
show what that costs: an event reaching its lingering request can wait until it expires.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import uvloop
from chassis_rig import chassis_rig  # beside this script

from paymesh.chassis.consumer import FETCH_WAIT_S
from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.events import InboundEvent


async def main(count: int, nats_fetch: bool) -> None:
    async with chassis_rig("pickup") as rig:
        applied: dict[str, float] = {}
        arrived = asyncio.Event()

        async def handler(uow: UnitOfWork, events: list[InboundEvent]) -> None:
            for event in events:
                applied[event.order_id] = time.perf_counter()
            arrived.set()

        consumer = rig.consumer("pickup", handler)
        if nats_fetch:

            async def fetch_n() -> list[object]:
                return await consumer._sub.fetch(consumer.spec.batch_size, timeout=FETCH_WAIT_S)

            consumer.next_batch = fetch_n  # type: ignore[method-assign]
        await consumer.start()
        delays = []
        for i in range(count):
            await asyncio.sleep(random.uniform(0.0, 0.7))  # arrivals at random moments of the pull
            order_id = f"o{i}"
            arrived.clear()
            start = time.perf_counter()
            await rig.publish_placed(order_id)
            await asyncio.wait_for(arrived.wait(), 10)
            delays.append((applied[order_id] - start) * 1000)
        await consumer.stop()
    delays.sort()
    slow = sum(1 for d in delays if d > 100)
    print(
        f"{'nats-py fetch(n)' if nats_fetch else 'chassis next_batch'}: {len(delays)} events, "
        f"median {statistics.median(delays):.1f} ms, p90 {delays[int(0.9 * len(delays))]:.1f} ms, "
        f"max {delays[-1]:.1f} ms; over 100 ms: {slow}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=150)
    parser.add_argument("--nats-fetch", action="store_true", help="pull with nats-py's fetch(n) instead")
    args = parser.parse_args()
    uvloop.run(main(args.events, args.nats_fetch))
