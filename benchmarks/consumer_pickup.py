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
import tempfile
import time
from pathlib import Path

import uvloop
from sqlalchemy import MetaData

from paymesh.chassis import jetstream
from paymesh.chassis.consumer import FETCH_WAIT_S, Consumer, ConsumerSpec
from paymesh.chassis.db import Database, UnitOfWork
from paymesh.chassis.events import InboundEvent, OutboundEvent, new_event_id
from paymesh.chassis.inbox import inbox_table
from paymesh.natsserver import NatsServer
from paymesh.order.v1 import events_pb2


async def main(count: int, nats_fetch: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="paymesh-pickup-") as tmp:
        server = NatsServer(Path(tmp) / "nats").start()
        try:
            nc = await jetstream.connect([server.url], "pickup")
            js = nc.jetstream()
            await jetstream.ensure_stream(js, "ORDER", ["order.>"])
            await jetstream.ensure_stream(js, jetstream.DLQ_STREAM, jetstream.DLQ_SUBJECTS)
            metadata = MetaData()
            inbox = inbox_table(metadata)
            db = Database(f"sqlite+inloop:///{Path(tmp) / 'pickup.db'}", metadata)
            await db.create_schema()
            applied: dict[str, float] = {}
            arrived = asyncio.Event()

            async def handler(uow: UnitOfWork, events: list[InboundEvent]) -> None:
                for event in events:
                    applied[event.order_id] = time.perf_counter()
                arrived.set()

            types = {events_pb2.OrderPlaced.DESCRIPTOR.full_name: events_pb2.OrderPlaced}
            consumer = Consumer(ConsumerSpec("pickup", "ORDER", ["order.placed.*"], handler, types), js, db, inbox, "b")
            if nats_fetch:

                async def fetch_n() -> list[object]:
                    return await consumer._sub.fetch(consumer.spec.batch_size, timeout=FETCH_WAIT_S)

                consumer.next_batch = fetch_n  # type: ignore[method-assign]
            await consumer.start()
            delays = []
            for i in range(count):
                await asyncio.sleep(random.uniform(0.0, 0.7))  # arrivals at random moments of the pull
                order_id = f"o{i}"
                event = OutboundEvent.of(
                    f"order.placed.{order_id}", events_pb2.OrderPlaced(event_id=new_event_id(), order_id=order_id)
                )
                arrived.clear()
                start = time.perf_counter()
                await js.publish(event.subject, event.payload, headers=event.nats_headers())
                await asyncio.wait_for(arrived.wait(), 10)
                delays.append((applied[order_id] - start) * 1000)
            await consumer.stop()
            await db.dispose()
            await nc.close()
        finally:
            server.stop()
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
