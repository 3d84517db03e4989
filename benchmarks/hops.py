"""Per-hop latency of single sagas, read from the JetStream timestamps of their events.

    .venv/bin/python benchmarks/hops.py [--sagas 40]

Starts the mesh on the embedded defaults in a temp dir, runs sagas one at a time, then prints
the median time between consecutive events of a saga (order.placed -> inventory.reserved -> ...).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

import nats

from paymesh.ops.launcher import Mesh
from paymesh.ops.natsserver import free_port
from paymesh.tools.bench import Driver

CHAIN = ["order.placed", "inventory.reserved", "payment.succeeded", "order.confirmed"]


async def main(sagas: int) -> None:
    env = dict(os.environ, PAYMESH_NATS_PORT=str(free_port()))
    with tempfile.TemporaryDirectory(prefix="paymesh-hops-") as tmp:
        mesh = Mesh(env, Path(tmp), out=lambda _: None)
        await mesh.start()
        try:
            driver = Driver(dict(mesh.env))
            await driver.prepare(0)
            for _ in range(sagas):
                await driver.saga(None)
            await driver.close()
            nc = await nats.connect(mesh.env["PAYMESH_NATS_URL"], **mesh.nats_options())
            js = nc.jetstream()
            times: dict[str, dict[str, float]] = {}
            for stream in ("ORDER", "INVENTORY", "PAYMENT"):
                info = await js.stream_info(stream)
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    msg = await js.get_msg(stream, seq)
                    domain, event, order_id = msg.subject.split(".", 2)
                    times.setdefault(order_id, {})[f"{domain}.{event}"] = msg.time.timestamp()
            await nc.close()
        finally:
            await mesh.stop()
    complete = [t for t in times.values() if all(k in t for k in CHAIN)][5:]  # skip the first, warming up
    print(f"{len(complete)} sagas")
    for a, b in zip(CHAIN, CHAIN[1:], strict=False):
        gaps = [(t[b] - t[a]) * 1000 for t in complete]
        print(f"{a:20} -> {b:20} median {statistics.median(gaps):6.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sagas", type=int, default=40)
    asyncio.run(main(parser.parse_args().sagas))
