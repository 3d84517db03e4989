"""What the chassis benchmarks stand on: a real nats-server with the ORDER and DLQ streams and a
SQLite file with the outbox and inbox, in a temp dir, torn down afterwards."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy import MetaData, Table

from paymesh.chassis import jetstream
from paymesh.chassis.consumer import BatchHandler, Consumer, ConsumerSpec
from paymesh.chassis.db import Database
from paymesh.chassis.events import OutboundEvent, new_event_id
from paymesh.chassis.inbox import inbox_table
from paymesh.chassis.outbox import outbox_table
from paymesh.ops.natsserver import NatsServer
from paymesh.order.v1 import events_pb2


@dataclass
class ChassisRig:
    nc: NATS
    js: JetStreamContext
    db: Database
    outbox: Table
    inbox: Table

    def consumer(self, durable: str, handler: BatchHandler) -> Consumer:
        """A chassis consumer of `order.placed.*` with `handler`, not started."""
        types = {events_pb2.OrderPlaced.DESCRIPTOR.full_name: events_pb2.OrderPlaced}
        spec = ConsumerSpec(durable, "ORDER", ["order.placed.*"], handler, types)
        return Consumer(spec, self.js, self.db, self.inbox, "bench")

    async def publish_placed(self, order_id: str) -> None:
        """An `order.placed` event, as order_svc's relay would publish it; returns once stored."""
        event = OutboundEvent.of(
            f"order.placed.{order_id}", events_pb2.OrderPlaced(event_id=new_event_id(), order_id=order_id)
        )
        await self.js.publish(event.subject, event.payload, headers=event.nats_headers())


@contextlib.asynccontextmanager
async def chassis_rig(name: str, *, driver: str = "inloop", fsync: bool = True) -> AsyncIterator[ChassisRig]:
    with tempfile.TemporaryDirectory(prefix=f"paymesh-{name}-") as tmp:
        server = NatsServer(Path(tmp) / "nats", sync_always=fsync).start()
        try:
            nc = await jetstream.connect([server.url], name)
            js = nc.jetstream()
            await jetstream.ensure_stream(js, "ORDER", ["order.>"])
            await jetstream.ensure_stream(js, jetstream.DLQ_STREAM, jetstream.DLQ_SUBJECTS)
            metadata = MetaData()
            outbox, inbox = outbox_table(metadata), inbox_table(metadata)
            db = Database(f"sqlite+{driver}:///{Path(tmp) / f'{name}.db'}", metadata)
            await db.create_schema()
            try:
                yield ChassisRig(nc, js, db, outbox, inbox)
            finally:
                await db.dispose()
                await nc.close()
        finally:
            server.stop()
