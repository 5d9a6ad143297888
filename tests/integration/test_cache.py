"""The entity cache against a real Valkey and PostgreSQL: read-through, invalidation after the
projector commits, versioned writes, single-flight loads, and PostgreSQL fallback when Redis is down."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid

import msgspec
import pytest
from redis.asyncio import Redis

from app.cli import load_sample_story
from ecs.cache import EntityCache
from ecs.projector import Projector
from ecs.queries import EntityCore, complete_view, find_entity, get_entity_core
from rag.events import EventIn
from tests.conftest import make_tenant
from tests.integration.test_projector import ingest, new_chronicle


class World:
    def __init__(self, engine, tenant_id: uuid.UUID, chronicle_id: uuid.UUID) -> None:
        self.engine = engine
        self.tenant_id = tenant_id
        self.chronicle_id = chronicle_id

    async def id(self, name: str) -> uuid.UUID:
        async with self.engine.connect() as conn:
            found = await find_entity(conn, self.tenant_id, self.chronicle_id, name)
        assert found is not None, name
        return found.id

    async def add(self, projector: Projector, *events: dict) -> None:
        await ingest(
            self.engine, self.tenant_id, self.chronicle_id, [msgspec.convert(e, EventIn) for e in events]
        )
        await projector.catch_up(self.chronicle_id)


@pytest.fixture
async def world(engine) -> World:
    tenant_id, chronicle_id = await new_chronicle(engine)
    await ingest(engine, tenant_id, chronicle_id, load_sample_story())
    await Projector(engine, engine).catch_up(chronicle_id)
    return World(engine, tenant_id, chronicle_id)


@pytest.fixture
async def cache(engine, redis_url: str):
    cache = EntityCache.from_url(redis_url, engine, key_prefix=f"test:{uuid.uuid4().hex}:")
    yield cache
    await cache.aclose()


@pytest.fixture
async def redis(redis_url: str):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CountingLoader:
    """The PostgreSQL loader, counted and slowed down so that concurrent readers overlap."""

    def __init__(self, engine, delay: float = 0.05) -> None:
        self.engine = engine
        self.delay = delay
        self.calls = 0

    async def __call__(self, tenant_id: uuid.UUID, entity_id: uuid.UUID) -> EntityCore | None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        async with self.engine.connect() as conn:
            return await get_entity_core(conn, tenant_id, entity_id)


async def test_read_through_counts_hits_and_misses(cache: EntityCache, world: World) -> None:
    elara = await world.id("Elara")
    first = await cache.get(world.tenant_id, elara)
    assert first is not None
    assert first.name == "Elara"
    assert (cache.hits, cache.misses, cache.stats.loads) == (0, 1, 1)
    second = await cache.get(world.tenant_id, elara)
    assert second == first
    assert (cache.hits, cache.misses, cache.stats.loads) == (1, 1, 1)
    assert cache.hit_ratio == pytest.approx(0.5)
    assert first.components["health"] == {"hp": 6.0, "max_hp": 10.0, "condition": None}
    async with world.engine.connect() as conn:
        assert first == await get_entity_core(conn, world.tenant_id, elara)  # the cache changes nothing

    # another tenant never sees it, cached or not; an unknown entity is None and not cached
    stranger = await make_tenant(world.engine)
    assert await cache.get(stranger.id, elara) is None
    assert await cache.get(world.tenant_id, uuid.uuid4()) is None
    assert (await cache.get(world.tenant_id, elara)) == first


async def test_the_hash_holds_one_field_per_component(cache: EntityCache, world: World, redis: Redis) -> None:
    oswin = await world.id("Oswin")
    core = await cache.get(world.tenant_id, oswin)
    assert core is not None
    fields = await redis.hgetall(f"{cache.prefix}{oswin}")
    assert set(fields) == {b"_meta", b"_v", b"c:oath", b"c:position"}
    assert int(fields[b"_v"]) == core.updated_sequence
    assert msgspec.json.decode(fields[b"c:oath"])["fulfilled_day"] == 4
    assert 0 < await redis.pttl(f"{cache.prefix}{oswin}") <= cache.ttl_ms


async def test_the_projector_invalidates_what_it_committed(
    cache: EntityCache, world: World, redis: Redis
) -> None:
    projector = Projector(world.engine, world.engine, on_committed=cache.on_committed)
    elara, maud = await world.id("Elara"), await world.id("Maud")
    before = await cache.get(world.tenant_id, elara)
    assert before is not None
    assert (await cache.get(world.tenant_id, maud)) is not None

    await world.add(
        projector,
        {
            "summary": "Maud changes Elara's dressing.",
            "actors": ["Maud", "Elara"],
            "location": "Saltcrag Keep",
            "effects": [{"op": "set", "entity": "Elara", "component": "Health", "value": {"hp": 9}}],
        },
    )
    assert await redis.hget(f"{cache.prefix}{elara}", "_meta") is None  # state dropped...
    assert int(await redis.hget(f"{cache.prefix}{elara}", "_v")) == before.updated_sequence  # ...floor kept
    misses = cache.misses
    after = await cache.get(world.tenant_id, elara)
    assert after is not None
    assert cache.misses == misses + 1
    assert after.components["health"]["hp"] == 9.0
    assert after.updated_sequence == 41 > before.updated_sequence
    assert (await cache.get(world.tenant_id, elara)) == after
    assert cache.hits >= 1


async def test_inventories_stay_right_when_items_change_hands(cache: EntityCache, world: World) -> None:
    """Only the item's own state changes in a transfer; the holders' inventories are derived at read time."""
    projector = Projector(world.engine, world.engine, on_committed=cache.on_committed)
    elara, maud, key = await world.id("Elara"), await world.id("Maud"), await world.id("Silver Key")
    for entity in (elara, maud, key):
        assert await cache.get(world.tenant_id, entity) is not None
    await world.add(
        projector,
        {"summary": "Elara gives Maud the silver key.", "actors": ["Elara", "Maud"],
         "effects": [{"op": "transfer", "item": "Silver Key", "from": "Elara", "to": "Maud"}]},
    )  # fmt: skip
    hits = cache.hits
    elara_core, maud_core = await cache.get(world.tenant_id, elara), await cache.get(world.tenant_id, maud)
    assert cache.hits == hits + 2  # their own state did not change: still cached
    key_core = await cache.get(world.tenant_id, key)
    assert key_core is not None
    assert key_core.components["holder"]["holder"] == str(maud)
    async with world.engine.connect() as conn:
        elara_view = await complete_view(conn, elara_core)
        maud_view = await complete_view(conn, maud_core)
    assert "Silver Key" not in {i.name for i in elara_view.inventory}
    assert {i.name for i in maud_view.inventory} == {"Silver Key"}  # the draught was drunk in event 23


async def test_an_older_write_never_overwrites_a_newer_one(cache: EntityCache, world: World) -> None:
    elara = await world.id("Elara")
    async with world.engine.connect() as conn:
        current = await get_entity_core(conn, world.tenant_id, elara)
    older = msgspec.structs.replace(
        current, updated_sequence=current.updated_sequence - 5, components={"health": {"hp": 1.0}}
    )
    assert await cache.store(current)
    assert not await cache.store(older)
    assert cache.stats.rejected_writes == 1
    assert await cache.get(world.tenant_id, elara) == current
    assert cache.hits == 1
    assert await cache.store(current)  # the same version again is fine


async def test_a_load_that_raced_an_invalidation_is_not_cached(cache: EntityCache, world: World) -> None:
    elara = await world.id("Elara")
    async with world.engine.connect() as conn:
        loaded = await get_entity_core(conn, world.tenant_id, elara)
    # a reader saw no entry (generation ""), then a commit invalidated the entity before it wrote back
    await cache.invalidate([elara])
    assert not await cache.store(loaded, generation=b"")
    assert await cache.store(loaded, generation=b"1")  # a reader that started after it may write


async def test_a_read_never_goes_back_in_time(cache: EntityCache, world: World, redis: Redis) -> None:
    elara = await world.id("Elara")
    current = await cache.get(world.tenant_id, elara)
    # Somebody (a stale writer elsewhere, a restored snapshot) puts an older state into Redis.
    await redis.delete(f"{cache.prefix}{elara}")
    older = msgspec.structs.replace(current, updated_sequence=current.updated_sequence - 1)
    assert await cache.store(older)
    again = await cache.get(world.tenant_id, elara)
    assert again == current
    assert cache.stats.stale_bypasses == 1
    assert int(await redis.hget(f"{cache.prefix}{elara}", "_v")) == current.updated_sequence  # repaired


async def test_concurrent_reads_of_a_cold_key_do_one_load(engine, redis_url: str, world: World) -> None:
    loader = CountingLoader(engine)
    cache = EntityCache(Redis.from_url(redis_url), loader=loader, key_prefix=f"test:{uuid.uuid4().hex}:",
                        owns_redis=True)  # fmt: skip
    try:
        elara = await world.id("Elara")
        results = await asyncio.gather(*(cache.get(world.tenant_id, elara) for _ in range(25)))
        assert loader.calls == 1
        assert cache.stats.loads == 1
        assert all(r == results[0] for r in results)
        assert results[0].name == "Elara"
        assert cache.misses == 25
        await cache.get(world.tenant_id, elara)
        assert cache.hits == 1
        assert loader.calls == 1
    finally:
        await cache.aclose()


async def test_two_processes_share_one_load(engine, redis_url: str, world: World) -> None:
    """Across processes the Redis lock lets one load while the other waits for its result."""
    prefix = f"test:{uuid.uuid4().hex}:"
    loaders = [CountingLoader(engine, delay=0.2), CountingLoader(engine, delay=0.2)]
    caches = [
        EntityCache(
            Redis.from_url(redis_url),
            loader=loader,
            key_prefix=prefix,
            owns_redis=True,
            lock_wait_seconds=2.0,
        )
        for loader in loaders
    ]
    try:
        elara = await world.id("Elara")
        first, second = await asyncio.gather(*(c.get(world.tenant_id, elara) for c in caches))
        assert first == second
        assert first is not None
        assert loaders[0].calls + loaders[1].calls == 1
        assert caches[0].stats.lock_waits + caches[1].stats.lock_waits == 1
    finally:
        for cache in caches:
            await cache.aclose()


async def test_redis_down_falls_back_to_postgres(engine, world: World, caplog) -> None:
    cache = EntityCache.from_url(f"redis://127.0.0.1:{closed_port()}/0", engine, retry_after_seconds=60)
    try:
        elara = await world.id("Elara")
        with caplog.at_level(logging.WARNING, logger="lore.ecs.cache"):
            for _ in range(5):
                core = await cache.get(world.tenant_id, elara)
                assert core is not None
                assert core.name == "Elara"
            await cache.invalidate([elara])  # never raises
            await cache.on_committed(world.chronicle_id, {str(elara)})
        assert cache.hits == 0
        assert cache.misses == 5
        assert cache.stats.loads == 5
        assert cache.stats.errors == 1  # then it backs off instead of hammering a dead server
        warnings = [r for r in caplog.records if r.name == "lore.ecs.cache"]
        assert len(warnings) == 1
        assert "Redis unavailable" in warnings[0].getMessage()
        assert cache.hit_ratio == 0.0
    finally:
        await cache.aclose()


async def test_invalidations_missed_in_an_outage_are_replayed_first(cache: EntityCache, world: World) -> None:
    elara = await world.id("Elara")
    stale = await cache.get(world.tenant_id, elara)
    cache._failed(ConnectionError("simulated outage"))  # Redis is considered down
    await world.add(
        Projector(world.engine, world.engine, on_committed=cache.on_committed),
        {"summary": "Elara rests.", "actors": ["Elara"],
         "effects": [{"op": "set", "entity": "Elara", "component": "Health", "value": {"hp": 10}}]},
    )  # fmt: skip
    during = await cache.get(world.tenant_id, elara)  # from PostgreSQL
    assert during.components["health"]["hp"] == 10.0
    cache._down_until = 0.0  # the retry delay is over and Redis answers again
    after = await cache.get(world.tenant_id, elara)
    assert after == during
    assert after != stale
    assert cache.stats.stale_bypasses == 0  # the replayed invalidation made it a plain miss
    assert after.components["health"]["hp"] == 10.0


async def test_no_redis_configured_is_a_pass_through(engine, world: World) -> None:
    cache = EntityCache.from_url(None, engine)
    elara = await world.id("Elara")
    assert (await cache.get(world.tenant_id, elara)).name == "Elara"
    await cache.invalidate([elara])
    assert cache.misses == 1
    assert cache.stats.errors == 0
    await cache.aclose()
