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


async def test_only_an_adaptive_loop_reads_its_steps_answer_as_the_wait() -> None:
    stop = asyncio.Event()
    counts = {"plain": 0, "adaptive": 0}

    async def plain() -> int:
        counts["plain"] += 1
        return 0  # a count of work done (the retention prune's): not a wait, or the loop would spin

    async def adaptive() -> float:
        counts["adaptive"] += 1
        if counts["adaptive"] == 3:
            stop.set()
        return 0.0  # due again now

    await asyncio.wait_for(every(3600.0, adaptive, stop=stop, adaptive=True), 5)
    assert counts["adaptive"] == 3
    stop.clear()
    loop = asyncio.create_task(every(3600.0, plain, stop=stop))
    for _ in range(100):
        await asyncio.sleep(0)
    assert counts["plain"] == 1, "a plain loop waits its interval whatever the step returns"
    stop.set()
    await asyncio.wait_for(loop, 5)
