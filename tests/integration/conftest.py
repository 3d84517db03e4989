"""Fixtures for the chassis' integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from paymesh.chassis import jetstream
from paymesh.ops.natsserver import NatsServer
from tests.integration.chassis_harness import Rig, Store, ensure_order_stream


@pytest.fixture
async def rig(nats_server: NatsServer, db_url: str) -> AsyncIterator[Rig]:
    nc = await jetstream.connect([nats_server.url], "test")
    await ensure_order_stream(nc)
    async with Store(db_url) as store:
        yield Rig(nc, store)
    await nc.close()
