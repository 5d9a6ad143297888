"""Read-through Redis cache of entity state, invalidated by the projector after each commit.

What is cached
    One hash per entity, ``lore:entity:{id}``: ``_meta`` (the entity's own fields as JSON: name,
    kind, aliases, tenant, chronicle, sequences), one ``c:{component}`` field per component (JSON),
    ``_v`` (the entity's ``updated_sequence``) and ``_g`` (an invalidation generation). Only the
    entity's *own* data is cached - exactly what ``updated_sequence`` versions and what the
    projector reports as touched. Everything derived from *other* entities' rows (inventory: the
    items whose holder is this entity; the location of a held item through its holder chain; the
    relationships, which the projector does not report per entity) is computed at read time from
    PostgreSQL by :func:`ecs.queries.complete_view`. So when an item changes hands, only the
    item's own entry is stale, and that is the one the projector invalidates; the old and new
    holders' inventories are always read fresh.

Never back in time
    A write goes through a Lua script that stores a state only if (a) the hash's generation is
    still the one the reader saw before it went to PostgreSQL - an invalidation in between bumps
    ``_g``, so a load that raced a commit cannot put its pre-commit state back - and (b) the
    stored ``_v`` is not newer. In process, the highest version returned per entity is remembered
    and a cached copy older than it is bypassed (read from PostgreSQL and re-written).

Stampedes
    One loader per (tenant, entity, generation seen) per process (single-flight: concurrent
    readers await the same load), and across processes a short Redis lock (``SET NX PX``): a
    reader that does not get it polls the hash briefly for the winner's result before loading.

Outages
    Every Redis call is bounded by a timeout and every error is caught: the read falls back to
    PostgreSQL. The first failure of an outage is logged (once), then Redis is left alone for
    ``retry_after_seconds`` before the next try. Invalidations that failed are kept (bounded) and
    replayed before the cache is read again; if too many pile up, every entity entry is
    invalidated on recovery. Entries also expire after ``ttl_seconds`` as a last resort.

Metrics
    :attr:`EntityCache.stats` counts hits, misses, loads, bypasses, errors; ``hit_ratio`` is
    hits / (hits + misses).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

import msgspec
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.ext.asyncio import AsyncEngine

from ecs.queries import EntityCore, get_entity_core

__all__ = ["KEY_PREFIX", "CacheStats", "EntityCache", "Loader"]

log = logging.getLogger("lore.ecs.cache")

KEY_PREFIX: Final = "lore:entity:"
_META: Final = b"_meta"
_VERSION: Final = b"_v"
_GENERATION: Final = b"_g"
_COMPONENT: Final = b"c:"

Loader = Callable[[uuid.UUID, uuid.UUID], Awaitable[EntityCore | None]]
"""(tenant_id, entity_id) -> the entity's own state from PostgreSQL, or None."""

T = TypeVar("T")

# KEYS[1] = entry; ARGV = generation seen before loading ('' = none), version, ttl ms, field, value, ...
_WRITE_SCRIPT: Final = """
local generation = redis.call('HGET', KEYS[1], '_g') or ''
if generation ~= ARGV[1] then return 0 end
local stored = redis.call('HGET', KEYS[1], '_v')
if stored and tonumber(stored) > tonumber(ARGV[2]) then return -1 end
local fields = redis.call('HKEYS', KEYS[1])
for i = 1, #fields do
    if fields[i] ~= '_g' then redis.call('HDEL', KEYS[1], fields[i]) end
end
redis.call('HSET', KEYS[1], '_v', ARGV[2], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] = entry; ARGV[1] = ttl ms. Drops the state, keeps `_v` as a floor, bumps the generation.
_INVALIDATE_SCRIPT: Final = """
local fields = redis.call('HKEYS', KEYS[1])
for i = 1, #fields do
    if fields[i] ~= '_g' and fields[i] ~= '_v' then redis.call('HDEL', KEYS[1], fields[i]) end
end
redis.call('HINCRBY', KEYS[1], '_g', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

_UNLOCK_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class CacheStats(msgspec.Struct):
    hits: int = 0
    """Reads answered from Redis."""
    misses: int = 0
    """Reads answered otherwise (cold, invalidated, stale, or Redis unavailable)."""
    loads: int = 0
    """Loads from PostgreSQL (single-flight: one per key at a time per process)."""
    stale_bypasses: int = 0
    """Cached copies older than a version already returned, bypassed."""
    lock_waits: int = 0
    """Reads that waited for another process's load."""
    writes: int = 0
    rejected_writes: int = 0
    """Writes refused: an invalidation came in between, or a newer state was stored."""
    invalidations: int = 0
    errors: int = 0
    """Redis calls that failed (each fell back to PostgreSQL)."""

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class _Entry(msgspec.Struct, frozen=True):
    """A decoded hash: the state (None when there is none) and the generation seen."""

    core: EntityCore | None
    generation: bytes


_EMPTY = _Entry(None, b"")


class EntityCache:
    """Read-through cache of :class:`~ecs.queries.EntityCore` (an entity's own state)."""

    def __init__(
        self,
        redis: Redis | None,
        engine: AsyncEngine | None = None,
        *,
        loader: Loader | None = None,
        ttl_seconds: float = 3600.0,
        lock_seconds: float = 2.0,
        lock_wait_seconds: float = 0.5,
        poll_seconds: float = 0.02,
        op_timeout_seconds: float = 0.5,
        retry_after_seconds: float = 5.0,
        max_tracked: int = 100_000,
        max_pending: int = 10_000,
        key_prefix: str = KEY_PREFIX,
        owns_redis: bool = False,
    ) -> None:
        if loader is None:
            if engine is None:
                raise ValueError("EntityCache needs an engine or a loader")
            loader = self._engine_loader(engine)
        self._redis = redis
        self._owns_redis = owns_redis
        self._loader = loader
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.lock_ms = max(1, int(lock_seconds * 1000))
        self.lock_wait = lock_wait_seconds
        self.poll = poll_seconds
        self.op_timeout = op_timeout_seconds
        self.retry_after = retry_after_seconds
        self.max_tracked = max_tracked
        self.max_pending = max_pending
        self.prefix = key_prefix
        self.stats = CacheStats()
        self._flights: dict[tuple[uuid.UUID, uuid.UUID, bytes], asyncio.Task[EntityCore | None]] = {}
        self._returned: collections.OrderedDict[uuid.UUID, int] = collections.OrderedDict()
        self._pending: set[uuid.UUID] = set()
        self._pending_overflow = False
        self._outage = False
        self._down_until = 0.0
        self._write = None if redis is None else redis.register_script(_WRITE_SCRIPT)
        self._invalidate = None if redis is None else redis.register_script(_INVALIDATE_SCRIPT)
        self._unlock = None if redis is None else redis.register_script(_UNLOCK_SCRIPT)

    @classmethod
    def from_url(cls, url: str | None, engine: AsyncEngine, **options: Any) -> EntityCache:
        """A cache on its own client (closed by :meth:`aclose`); no URL gives a pass-through."""
        if not url:
            return cls(None, engine, **options)
        timeout = float(options.get("op_timeout_seconds", 0.5))
        client = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        return cls(client, engine, owns_redis=True, **options)

    @staticmethod
    def _engine_loader(engine: AsyncEngine) -> Loader:
        async def load(tenant_id: uuid.UUID, entity_id: uuid.UUID) -> EntityCore | None:
            async with engine.connect() as conn:
                return await get_entity_core(conn, tenant_id, entity_id)

        return load

    @property
    def hit_ratio(self) -> float:
        """Hits / (hits + misses) since start (0.0 before the first read)."""
        return self.stats.hit_ratio

    @property
    def hits(self) -> int:
        return self.stats.hits

    @property
    def misses(self) -> int:
        return self.stats.misses

    @property
    def available(self) -> bool:
        """Configured, and not backing off from a failure."""
        return self._redis is not None and time.monotonic() >= self._down_until

    async def aclose(self) -> None:
        for task in list(self._flights.values()):
            task.cancel()
        if self._owns_redis and self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    # ------------------------------------------------------------------------------------------
    # Reads

    async def get(self, tenant_id: uuid.UUID, entity_id: uuid.UUID) -> EntityCore | None:
        """The entity's own state, from Redis if fresh enough, else from PostgreSQL (and cached).

        None when the entity does not exist or belongs to another tenant.
        """
        entry = await self._read(entity_id) if await self._ready() else None
        if entry is not None and entry.core is not None:
            if entry.core.updated_sequence >= self._returned.get(entity_id, -1):
                self.stats.hits += 1
                return self._returning(tenant_id, entry.core)
            self.stats.stale_bypasses += 1
        self.stats.misses += 1
        generation = (entry or _EMPTY).generation
        # Readers that saw the same generation share one load; one that saw a later generation (an
        # invalidation came in since) must not get a state loaded before it, so it loads anew.
        key = (tenant_id, entity_id, generation)
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._fill(tenant_id, entity_id, generation, entry is not None))
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._forget_flight(key, done))
        core = await asyncio.shield(flight)
        if core is not None and core.updated_sequence < self._returned.get(entity_id, -1):
            # A shared load that started before a newer state was returned here: read again.
            self.stats.stale_bypasses += 1
            self.stats.loads += 1
            core = await self._loader(tenant_id, entity_id)
        return None if core is None else self._returning(tenant_id, core)

    def _forget_flight(
        self, key: tuple[uuid.UUID, uuid.UUID, bytes], done: asyncio.Task[EntityCore | None]
    ) -> None:
        if self._flights.get(key) is done:
            del self._flights[key]
        if not done.cancelled():
            done.exception()  # retrieved: a failed load is re-raised to its awaiting readers

    def _returning(self, tenant_id: uuid.UUID, core: EntityCore) -> EntityCore | None:
        if core.tenant_id != tenant_id:
            return None
        seen = self._returned.get(core.id, -1)
        self._returned[core.id] = max(seen, core.updated_sequence)
        self._returned.move_to_end(core.id)
        while len(self._returned) > self.max_tracked:
            self._returned.popitem(last=False)
        return core

    async def _fill(
        self, tenant_id: uuid.UUID, entity_id: uuid.UUID, generation: bytes, use_redis: bool
    ) -> EntityCore | None:
        token: str | None = None
        if use_redis:
            token = await self._lock(entity_id)
            if token is None and self.available:
                waited = await self._wait_for_fill(entity_id)
                if waited is not None:
                    return waited
        try:
            self.stats.loads += 1
            core = await self._loader(tenant_id, entity_id)
            if core is not None and use_redis:
                await self.store(core, generation=generation)
            return core
        finally:
            if token is not None:
                await self._run(lambda r: self._call_unlock(r, entity_id, token))

    async def _wait_for_fill(self, entity_id: uuid.UUID) -> EntityCore | None:
        """Another process holds the load lock: poll briefly for its result."""
        self.stats.lock_waits += 1
        deadline = time.monotonic() + self.lock_wait
        while time.monotonic() < deadline:
            await asyncio.sleep(self.poll)
            entry = await self._read(entity_id)
            if entry is None:
                return None
            if entry.core is not None and entry.core.updated_sequence >= self._returned.get(entity_id, -1):
                return entry.core
        return None

    # ------------------------------------------------------------------------------------------
    # Writes and invalidation

    async def store(self, core: EntityCore, *, generation: bytes = b"") -> bool:
        """Cache a state loaded after seeing ``generation``; False if refused or Redis failed.

        Refused when an invalidation happened since (the generation moved) or when the stored
        state is newer: the cache never goes back in time.
        """
        if self._write is None:
            return False
        meta = msgspec.json.encode(msgspec.structs.replace(core, components={}))
        args: list[bytes | str | int] = [generation, core.updated_sequence, self.ttl_ms, _META, meta]
        for name, value in core.components.items():
            args += [_COMPONENT + name.encode(), msgspec.json.encode(value)]
        write = self._write
        ok, result = await self._run(lambda r: write(keys=[self._key(core.id)], args=args, client=r))
        if not ok:
            return False
        if result == 1:
            self.stats.writes += 1
            return True
        self.stats.rejected_writes += 1
        return False

    async def invalidate(self, entity_ids: Iterable[str | uuid.UUID]) -> None:
        """Drop cached states (after a commit changed them). Never raises."""
        ids = {e if isinstance(e, uuid.UUID) else uuid.UUID(str(e)) for e in entity_ids}
        if not ids or self._redis is None:
            return
        self.stats.invalidations += len(ids)
        if not await self._ready() or not await self._invalidate_now(ids):
            self._remember(ids)

    async def on_committed(self, chronicle_id: uuid.UUID, touched: set[str]) -> None:
        """The projector's after-commit hook."""
        await self.invalidate(touched)

    async def _invalidate_now(self, ids: Iterable[uuid.UUID]) -> bool:
        script = self._invalidate
        assert script is not None
        keys = [self._key(i) for i in sorted(ids, key=lambda u: u.int)]

        async def run(redis: Redis) -> None:
            async with redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    await script(keys=[key], args=[self.ttl_ms], client=pipe)
                await pipe.execute()

        ok, _ = await self._run(run)
        return ok

    def _remember(self, ids: set[uuid.UUID]) -> None:
        if self._pending_overflow:
            return
        self._pending |= ids
        if len(self._pending) > self.max_pending:
            self._pending.clear()
            self._pending_overflow = True

    async def _ready(self) -> bool:
        """Redis usable now, with every invalidation that failed during an outage replayed."""
        if not self.available:
            return False
        if self._pending_overflow:
            if not await self._invalidate_all():
                return False
            self._pending_overflow = False
        if self._pending:
            pending, self._pending = self._pending, set()
            if not await self._invalidate_now(pending):
                self._remember(pending)
                return False
        return True

    async def _invalidate_all(self) -> bool:
        script = self._invalidate
        assert script is not None
        pattern = f"{self.prefix}*"

        async def run(redis: Redis) -> None:
            async for raw in redis.scan_iter(match=pattern, count=1_000):
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                if not key.endswith(":lock"):
                    await script(keys=[key], args=[self.ttl_ms], client=redis)

        ok, _ = await self._run(run, seconds=max(self.op_timeout, 30.0))
        return ok

    # ------------------------------------------------------------------------------------------
    # Redis plumbing

    def _key(self, entity_id: uuid.UUID) -> str:
        return f"{self.prefix}{entity_id}"

    async def _read(self, entity_id: uuid.UUID) -> _Entry | None:
        """The decoded hash; None when Redis failed (an unreadable entry counts as empty)."""
        key = self._key(entity_id)

        async def hgetall(redis: Redis) -> dict[bytes, bytes]:
            raw = await redis.hgetall(key)
            return {_bytes(k): _bytes(v) for k, v in raw.items()}

        ok, raw = await self._run(hgetall)
        if not ok or raw is None:
            return None
        generation = raw.get(_GENERATION, b"")
        meta = raw.get(_META)
        if meta is None:
            return _Entry(None, generation)
        try:
            core = msgspec.json.decode(meta, type=EntityCore)
            components = {
                name[len(_COMPONENT) :].decode(): msgspec.json.decode(value)
                for name, value in raw.items()
                if name.startswith(_COMPONENT)
            }
            version = int(raw[_VERSION])
        except (msgspec.DecodeError, KeyError, ValueError, UnicodeDecodeError):
            log.warning("unreadable cache entry %s; reading PostgreSQL", key)
            return _Entry(None, generation)
        if version != core.updated_sequence:
            return _Entry(None, generation)
        return _Entry(msgspec.structs.replace(core, components=components), generation)

    async def _lock(self, entity_id: uuid.UUID) -> str | None:
        token = secrets.token_hex(8)
        key = self._key(entity_id) + ":lock"

        async def acquire(redis: Redis) -> bool:
            return bool(await redis.set(key, token, nx=True, px=self.lock_ms))

        ok, acquired = await self._run(acquire)
        return token if ok and acquired else None

    async def _call_unlock(self, redis: Redis, entity_id: uuid.UUID, token: str) -> None:
        assert self._unlock is not None
        await self._unlock(keys=[self._key(entity_id) + ":lock"], args=[token], client=redis)

    async def _run(
        self, operation: Callable[[Redis], Awaitable[T]], *, seconds: float | None = None
    ) -> tuple[bool, T | None]:
        """Run one Redis operation: (True, result), or (False, None) after any failure."""
        redis = self._redis
        if redis is None or not self.available:
            return False, None
        try:
            async with asyncio.timeout(seconds or self.op_timeout):
                result = await operation(redis)
        except Exception as error:  # the cache must never fail a read: every error falls back
            self._failed(error)
            return False, None
        if self._outage:
            self._outage = False
            log.info("Redis is reachable again; entity cache back in use")
        return True, result

    def _failed(self, error: BaseException) -> None:
        self.stats.errors += 1
        self._down_until = time.monotonic() + self.retry_after
        if not self._outage:
            self._outage = True
            log.warning(
                "Redis unavailable (%s: %s); entity reads go to PostgreSQL, retrying in %.0fs",
                type(error).__name__, error, self.retry_after,
            )  # fmt: skip


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
