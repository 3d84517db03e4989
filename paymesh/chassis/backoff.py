"""The one retry delay of the mesh: exponential, capped, with equal jitter."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay before retry `attempt` (1-based): the ceiling `base_s * 2**(attempt-1)`, capped at `cap_s`,
    then equal jitter: uniform in [ceiling/2, ceiling].

    Equal rather than full jitter (uniform in [0, ceiling]): a retry of a payment step never comes
    back at once after a failure, yet retries of many sagas that failed together still spread over
    half the window (AWS Architecture Blog, "Exponential Backoff And Jitter")."""

    base_s: float = 0.5
    cap_s: float = 30.0

    def ceiling(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2.0 ** max(attempt - 1, 0))

    def delay(self, attempt: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
        ceiling = self.ceiling(attempt)
        return uniform(ceiling / 2, ceiling)
