"""One hop through the chassis alone: publish -> consumer -> handler (outbox write) -> relay -> publish.

    .venv/bin/python benchmarks/chassis_hop.py [--events 60] [--driver inloop] [--loop asyncio] [--no-fsync]

A real nats-server and a SQLite file; no gRPC and no domain code. Prints the median and p90
time from publishing an event to seeing the event its handler caused.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from chassis_rig import chassis_rig  # beside this script

from paymesh.chassis.db import UnitOfWork
from paymesh.chassis.events import InboundEvent, OutboundEvent, new_event_id
from paymesh.chassis.outbox import OutboxRelay, add
from paymesh.order.v1 import events_pb2


async def main(count: int, driver: str, fsync: bool) -> None:
    async with chassis_rig("hop", driver=driver, fsync=fsync) as rig:
        relay = OutboxRelay(rig.db, rig.outbox, rig.nc)
        relay.start()

        async def confirm(uow: UnitOfWork, events: list[InboundEvent]) -> None:
            caused = [
                OutboundEvent.of(
                    f"order.confirmed.{e.order_id}",
                    events_pb2.OrderConfirmed(event_id=new_event_id(), order_id=e.order_id),
                )
                for e in events
            ]
            await add(uow.conn, rig.outbox, caused)
            uow.after_commit(relay.wake)

        consumer = rig.consumer("hop", confirm)
        await consumer.start()
        seen: dict[str, asyncio.Event] = {}

        async def on_confirmed(msg: object) -> None:
            seen[msg.subject.rsplit(".", 1)[1]].set()  # type: ignore[attr-defined]

        await rig.nc.subscribe("order.confirmed.*", cb=on_confirmed)
        gaps = []
        for i in range(count):
            order_id = f"o{i}"
            seen[order_id] = asyncio.Event()
            start = time.perf_counter()
            await rig.publish_placed(order_id)
            await asyncio.wait_for(seen[order_id].wait(), 10)
            gaps.append((time.perf_counter() - start) * 1000)
        await consumer.stop()
        await relay.stop()
    gaps = sorted(gaps[5:])  # the first few warm the connections up
    print(f"{len(gaps)} hops: median {statistics.median(gaps):.1f} ms, p90 {gaps[int(0.9 * len(gaps))]:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--driver", choices=["aiosqlite", "inloop"], default="aiosqlite")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--no-fsync", dest="fsync", action="store_false", help="nats-server not fsyncing each write")
    args = parser.parse_args()
    print(f"driver {args.driver}, loop {args.loop}, fsync {args.fsync}: ", end="")
    run_on_loop = __import__("uvloop").run if args.loop == "uvloop" else asyncio.run
    run_on_loop(main(args.events, args.driver, args.fsync))
