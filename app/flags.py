"""Runtime feature flags, shared by replicas through Redis, switchable without a restart.

`ecs_enrichment` off is the instant rollback to chronicle-only bundles. Reads are cached for a
second; when Redis is unreachable the last known value (or the configured default) holds, so a
Redis outage never flips a flag by itself.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["FeatureFlags"]

log = logging.getLogger("lore.flags")

KEY_PREFIX = "lore:flag:"
KNOWN_FLAGS = ("ecs_enrichment",)


class FeatureFlags:
    def __init__(self, redis: Redis | None, defaults: dict[str, bool], ttl_seconds: float = 1.0) -> None:
        self._redis = redis
        self._values = dict(defaults)
        self._fetched_at: dict[str, float] = {}
        self._ttl = ttl_seconds

    async def get(self, name: str) -> bool:
        fetched = self._fetched_at.get(name, 0.0)
        if self._redis is not None and time.monotonic() - fetched > self._ttl:
            self._fetched_at[name] = time.monotonic()
            try:
                raw = await self._redis.get(KEY_PREFIX + name)
            except (RedisError, OSError) as error:
                log.debug("flag %s: Redis unavailable (%s); keeping %s", name, error, self._values.get(name))
            else:
                if raw is not None:
                    self._values[name] = raw in (b"1", "1")
        return self._values.get(name, False)

    async def set(self, name: str, value: bool) -> bool:
        """Set a flag for every replica; False when Redis is unavailable (set only here then)."""
        self._values[name] = value
        self._fetched_at[name] = time.monotonic()
        if self._redis is None:
            return False
        try:
            await self._redis.set(KEY_PREFIX + name, "1" if value else "0")
        except (RedisError, OSError) as error:
            log.warning("flag %s set locally only: Redis unavailable (%s)", name, error)
            return False
        return True

    async def snapshot(self) -> dict[str, bool]:
        return {name: await self.get(name) for name in KNOWN_FLAGS}
