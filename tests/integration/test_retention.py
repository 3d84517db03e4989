"""Retention: a service's stream keeps events for PAYMESH_STREAM_MAX_AGE, an existing stream is brought to it on
start, and what is older goes (the nats-server does it, not a sweep of ours)."""

from __future__ import annotations

from pathlib import Path

import pytest

from paymesh.chassis import jetstream
from paymesh.chassis.config import ConfigError, env_duration
from paymesh.ops.natsserver import NatsServer
from tests.conftest import wait_for
from tests.integration.chassis_harness import make_host, placed, publish, settings_for

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("raw", "seconds"), [("7d", 604800), ("24h", 86400), ("30m", 1800), ("90s", 90),
                                              ("2.5", 2.5), ("", 604800)])
def test_durations_read_as_seconds(raw: str, seconds: float) -> None:
    assert env_duration({"PAYMESH_STREAM_MAX_AGE": raw}, "PAYMESH_STREAM_MAX_AGE", 604800) == seconds


@pytest.mark.parametrize("raw", ["soon", "7y", "-1h", "0"])
def test_a_duration_that_is_not_one_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="PAYMESH_STREAM_MAX_AGE"):
        env_duration({"PAYMESH_STREAM_MAX_AGE": raw}, "PAYMESH_STREAM_MAX_AGE", 604800)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_stream_is_brought_to_its_max_age_on_start_and_older_events_go(
    nats_server: NatsServer, db_url: str, tmp_path: Path
) -> None:
    nc = await jetstream.connect([nats_server.url], "test")
    js = nc.jetstream()
    try:
        # A stream from before retention was set: it keeps everything.
        await jetstream.ensure_stream(js, "ORDER", ["order.>"])
        assert (await js.stream_info("ORDER")).config.max_age in (None, 0)

        host = make_host(settings_for(nats_server, db_url, tmp_path))  # the default: 7 days
        await host.start()
        await host.stop()
        config = (await js.stream_info("ORDER")).config
        assert config.max_age == 7 * 86400
        assert config.duplicate_window == jetstream.DUPLICATE_WINDOW_S

        host = make_host(settings_for(nats_server, db_url, tmp_path, PAYMESH_STREAM_MAX_AGE="1s"))
        await host.start()
        try:
            config = (await js.stream_info("ORDER")).config
            assert config.max_age == 1 and config.duplicate_window == 1, "the dedupe window never exceeds it"
            await publish(nc, placed())
            assert (await js.stream_info("ORDER")).state.messages >= 1

            async def emptied() -> bool:
                return (await js.stream_info("ORDER")).state.messages == 0

            await wait_for(emptied, timeout=10, message="the event aged out of the stream")
        finally:
            await host.stop()
    finally:
        await nc.close()
