"""The seeded fault model of the bank simulator: Configure's settings and the draws they shape. Pure Python."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar


@dataclass(frozen=True)
class FaultConfig:
    """Configure's settings; the defaults are "no faults" with seed 0."""

    latency_ms: int = 0
    decline_rate: float = 0.0
    transient_error_rate: float = 0.0
    lost_response_rate: float = 0.0
    seed: int = 0

    RATES: ClassVar[tuple[str, ...]] = ("decline_rate", "transient_error_rate", "lost_response_rate")
    MAX_LATENCY_MS: ClassVar[int] = 60_000

    def problems(self) -> list[tuple[str, str]]:
        """Every setting out of range, as (field, why)."""
        found = []
        if not 0 <= self.latency_ms <= self.MAX_LATENCY_MS:
            found.append(("latency_ms", f"must be between 0 and {self.MAX_LATENCY_MS}, got {self.latency_ms}"))
        for name in self.RATES:
            rate = getattr(self, name)
            if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
                found.append((name, f"must be a probability between 0 and 1, got {rate}"))
        return found


@dataclass(frozen=True)
class Faults:
    """The draw for one fresh attempt."""

    transient: bool = False
    decline: bool = False
    lose_response: bool = False


NO_FAULTS = Faults()


class FaultModel:
    """Seeded faults: every fresh attempt of a fault-prone card takes exactly three draws, in one order,
    so the same seed and the same sequence of calls give the same faults whatever the rates."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self.config = config or FaultConfig()
        self._rng = random.Random(self.config.seed)

    def configure(self, config: FaultConfig, *, reseed: bool) -> None:
        self.config = config
        if reseed:
            self._rng = random.Random(config.seed)

    def draw(self) -> Faults:
        transient, decline, lose = self._rng.random(), self._rng.random(), self._rng.random()
        return Faults(
            transient=transient < self.config.transient_error_rate,
            decline=decline < self.config.decline_rate,
            lose_response=lose < self.config.lost_response_rate,
        )


def updated(config: FaultConfig, *, reset: bool, **changes: object) -> FaultConfig:
    """Configure's arithmetic: from the current settings (or the defaults on reset), apply what was set."""
    base = FaultConfig() if reset else config
    given = {k: v for k, v in changes.items() if v is not None}
    return replace(base, **given)  # type: ignore[arg-type]  # mypy checks each field; these are Configure's, validated


@dataclass(frozen=True)
class Reconfigure:
    """Configure's command: the settings it sets (the others keep their value), from the defaults on `reset`."""

    changes: Mapping[str, int | float]
    reset: bool = False

    def applied_to(self, config: FaultConfig) -> FaultConfig:
        return updated(config, reset=self.reset, **self.changes)

    @property
    def reseeds(self) -> bool:
        """A seed given, or a reset: the generator starts again, so a run can be replayed from here."""
        return self.reset or self.changes.get("seed") is not None
