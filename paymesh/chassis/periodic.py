"""The one periodic loop of the mesh: run a step every interval until stopped, surviving its failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def every(
    interval_s: float,
    step: Callable[[], Awaitable[object]],
    *,
    stop: asyncio.Event | None = None,
    wake: asyncio.Event | None = None,
    name: str = "",
    adaptive: bool = False,
) -> None:
    """Await `step()`, then wait `interval_s` (or until `wake` is set, or `stop`), and again, until `stop`
    is set or the task is cancelled. `adaptive`: the step returns the seconds to wait before the next, at most
    `interval_s` (work falls due sooner); any other step's return is ignored. A step that raises is logged and
    the loop goes on: a sweep that failed once (a database hiccup) is tried again next period, never silently
    ended."""
    stop = stop or asyncio.Event()
    label = name or getattr(step, "__qualname__", "periodic step")
    while not stop.is_set():
        wait_s = interval_s
        try:
            sooner = await step()
            if adaptive and isinstance(sooner, int | float):
                wait_s = min(interval_s, max(0.0, float(sooner)))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; next try in %.1fs", label, interval_s)
        await pause(wait_s, stop, wake)
        if wake is not None:
            wake.clear()  # a wake-up is one early step, not a spin until stopped


async def pause(seconds: float, *events: asyncio.Event | None) -> None:
    """Wait `seconds`, or less if any of `events` is set first (a stop, a wake-up); clears nothing."""
    waiting = [e for e in events if e is not None]
    if any(e.is_set() for e in waiting):
        return
    if not waiting:
        await asyncio.sleep(seconds)  # the period itself, nothing to wait on
        return
    if len(waiting) == 1:  # the relay's case, after every send: one wait, no extra tasks
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiting[0].wait(), seconds)
        return
    tasks = [asyncio.ensure_future(e.wait()) for e in waiting]
    try:
        await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
