"""A token bucket per merchant, per replica: `PAYMESH_RATE_LIMIT_RPS` requests a second, 0 turns it off."""

from __future__ import annotations

from dataclasses import dataclass

# Settings read PAYMESH_RATE_LIMIT_RPS (default 10,000 a second: far above what one merchant's
# `paymesh bench --concurrency 64` asks of one replica) and PAYMESH_RATE_LIMIT_BURST.


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`allow` takes one token from the merchant's bucket, which refills at `rate_per_s` up to `burst`."""

    def __init__(self, rate_per_s: float, burst: float | None = None) -> None:
        if rate_per_s < 0:
            raise ValueError(f"rate_per_s must be 0 (off) or positive, got {rate_per_s}")
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, rate_per_s if burst is None else burst)
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def allow(self, merchant_id: str, now: float) -> float | None:
        """None if the call may go ahead, else the seconds until a token is there. `now` is monotonic."""
        if not self.enabled:
            return None
        bucket = self._buckets.get(merchant_id)
        if bucket is None:
            bucket = self._buckets[merchant_id] = _Bucket(self.burst, now)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate_per_s)
        bucket.updated = now
        if bucket.tokens >= 1.0 - 1e-9:  # float dust must not refuse a call with a 1e-15 s wait
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return None
        return (1.0 - bucket.tokens) / self.rate_per_s

