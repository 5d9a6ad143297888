"""Per-API-key rate limiting: a token bucket per key in each process.

With several replicas behind a load balancer each enforces its own bucket, so the effective limit
is per replica; that bounds abuse without a shared store on the hot path (see docs/security.md).
"""

from __future__ import annotations

import math
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, per_minute: int, burst: int | None = None, max_keys: int = 100_000) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(burst if burst is not None else max(1, per_minute // 6))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._max_keys = max_keys

    def check(self, key_hash: str) -> float | None:
        """Take one token; None if allowed, else the seconds until the next token."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        tokens, updated = self._buckets.get(key_hash, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - updated) * self.rate)
        if tokens >= 1.0:
            if len(self._buckets) >= self._max_keys and key_hash not in self._buckets:
                self._buckets.clear()
            self._buckets[key_hash] = (tokens - 1.0, now)
            return None
        self._buckets[key_hash] = (tokens, now)
        return (1.0 - tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
