"""The one periodic loop: steps every interval, an early step on wake, survives a failing step, ends on stop."""

from __future__ import annotations

import asyncio

import pytest

from paymesh.chassis.periodic import every

pytestmark = pytest.mark.timeout(10)


async def test_a_wake_up_is_one_early_step_then_the_interval_again() -> None:
    stop, wake, stepped = asyncio.Event(), asyncio.Event(), asyncio.Event()
    steps = 0

    async def step() -> None:
        nonlocal steps
        steps += 1
        stepped.set()

    loop = asyncio.create_task(every(3600.0, step, stop=stop, wake=wake))
    await stepped.wait()
    stepped.clear()
    wake.set()
    await stepped.wait()
    assert steps == 2
    # Not woken again: the loop waits out its hour rather than spinning on the old wake-up.
    for _ in range(100):
        await asyncio.sleep(0)  # a yield, not a wait: a wake-up left set would step again here
    assert steps == 2 and not wake.is_set()
    stop.set()
    await asyncio.wait_for(loop, 5)


async def test_a_failing_step_is_tried_again_and_stop_ends_the_loop() -> None:
    stop, wake, failed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            failed.set()
            raise RuntimeError("the database blinked")
        stop.set()

    loop = asyncio.create_task(every(3600.0, step, stop=stop, wake=wake))
    await failed.wait()
    wake.set()  # the next period, now
    await asyncio.wait_for(loop, 5)
    assert calls == 2
