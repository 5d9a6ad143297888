"""The outbox relay against a real PostgreSQL (ECS branch) and a real Valkey.

Covers: every row published exactly once, in id order per chronicle (hence per entity), with the
documented fields; rows not yet due are skipped and hold back the rest of their chronicle; Redis
unreachable or dying mid-batch loses nothing; several relays on the same rows publish each row
once, in order; rows Redis rejects are retried and dead-lettered; `run` wakes on `notify`, backs
off on outages with one WARNING, and stops promptly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import create_engine, migrate
from app.settings import to_asyncpg_url
from ecs.relay import OutboxRelay, RedisUnavailable
from ecs.schema import ecs_outbox

pytestmark = pytest.mark.timeout(120)
PREFIX = f"lore:test:relay:{uuid.uuid4().hex[:8]}:"
TENANT = uuid.uuid4()


@pytest.fixture(scope="module")
async def ecs_engine(embedded_postgres) -> AsyncIterator[AsyncEngine]:
    url = to_asyncpg_url(embedded_postgres.create_database("relay_test"))
    engine = create_engine(url, timeout_ms=10_000, pool_size=10)
    await migrate(engine, 384, branch="ecs")
    yield engine
    await engine.dispose()


@pytest.fixture
async def outbox(ecs_engine: AsyncEngine) -> AsyncEngine:
    """The ECS engine with an empty outbox: a relay publishes every pending row in the database."""
    async with ecs_engine.begin() as conn:
        await conn.execute(text("TRUNCATE ecs_outbox"))
    return ecs_engine


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{PREFIX}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unreachable_redis() -> Redis:
    return Redis(
        host="127.0.0.1",
        port=closed_port(),
        socket_connect_timeout=1,
        socket_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )


async def insert_rows(
    engine: AsyncEngine, plan: list[tuple[uuid.UUID, uuid.UUID | None]], **extra: Any
) -> list[dict[str, Any]]:
    """One outbox row per (chronicle, entity), in plan order; returns them with their ids."""
    rows = [
        {
            "tenant_id": TENANT,
            "chronicle_id": chronicle_id,
            "event_id": uuid.uuid4(),
            "entity_id": entity_id,
            "change_type": "component_set" if entity_id else "anomaly",
            "payload": {"n": n, "text": "ünïcødé « quoted »", "nested": {"list": [1, 2.5, None]}},
            "sequence": n + 1,
            "attempts": 0,
            **extra,
        }
        for n, (chronicle_id, entity_id) in enumerate(plan)
    ]
    async with engine.begin() as conn:
        # One row per statement, so ids follow plan order.
        for row in rows:
            statement = ecs_outbox.insert().values(row).returning(ecs_outbox.c.id)
            row["id"] = (await conn.execute(statement)).scalar_one()
    return rows


def interleaved_plan(
    rng: random.Random, chronicles: int, entities: int, count: int
) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    ids = {uuid.uuid4(): [uuid.uuid4() for _ in range(entities)] for _ in range(chronicles)}
    chronicle_ids = list(ids)
    plan: list[tuple[uuid.UUID, uuid.UUID | None]] = []
    for _ in range(count):
        chronicle = rng.choice(chronicle_ids)
        plan.append((chronicle, rng.choice([*ids[chronicle], None])))
    return plan


async def drain(relay: OutboxRelay, max_rounds: int = 200) -> int:
    total = 0
    for _ in range(max_rounds):
        published = await relay.publish_once()
        if published == 0:
            return total
        total += published
    raise AssertionError(f"relay still publishing after {max_rounds} rounds")


async def stream(redis: Redis, relay: OutboxRelay, chronicle_id: uuid.UUID) -> list[dict[str, str]]:
    entries = await redis.xrange(relay.stream_name(chronicle_id))
    return [fields for _, fields in entries]


async def pending_ids(engine: AsyncEngine) -> set[int]:
    async with engine.connect() as conn:
        result = await conn.execute(
            select(ecs_outbox.c.id).where(
                ecs_outbox.c.sent_at.is_(None), ecs_outbox.c.dead_lettered_at.is_(None)
            )
        )
        return {r[0] for r in result}


def assert_ordered_per_entity(entries: list[dict[str, str]]) -> None:
    """First occurrences of each outbox id, grouped by entity, are in outbox id order."""
    seen: set[str] = set()
    per_entity: dict[str, list[int]] = defaultdict(list)
    for fields in entries:
        if fields["outbox_id"] in seen:
            continue
        seen.add(fields["outbox_id"])
        per_entity[fields["entity_id"]].append(int(fields["outbox_id"]))
    for entity, ids in per_entity.items():
        assert ids == sorted(ids), f"entity {entity or '(none)'} out of order: {ids}"


async def test_every_row_is_published_once_in_id_order_per_chronicle(
    outbox: AsyncEngine, redis: Redis
) -> None:
    rows = await insert_rows(outbox, interleaved_plan(random.Random(7), chronicles=3, entities=4, count=150))
    relay = OutboxRelay(outbox, redis, batch_size=7, max_chronicles=2, stream_prefix=PREFIX)

    assert await drain(relay) == len(rows)

    by_chronicle: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_chronicle[row["chronicle_id"]].append(row)
    for chronicle_id, expected in by_chronicle.items():
        entries = await stream(redis, relay, chronicle_id)
        # Exactly once each, in id order: per chronicle, hence per entity.
        assert [int(f["outbox_id"]) for f in entries] == [r["id"] for r in expected]
        assert_ordered_per_entity(entries)
        for fields, row in zip(entries, expected, strict=True):
            assert fields == {
                "outbox_id": str(row["id"]),
                "event_id": str(row["event_id"]),
                "entity_id": "" if row["entity_id"] is None else str(row["entity_id"]),
                "change_type": row["change_type"],
                "sequence": str(row["sequence"]),
                "payload": fields["payload"],
            }
            assert json.loads(fields["payload"]) == row["payload"]

    assert await pending_ids(outbox) == set()
    async with outbox.connect() as conn:
        unsent = await conn.scalar(select(func.count()).where(ecs_outbox.c.sent_at.is_(None)))
    assert unsent == 0
    stats = relay.stats
    assert stats.published == len(rows)
    assert stats.batches >= len(rows) // (7 * 2)
    assert stats.last_error is None
    assert await relay.refresh_pending() == 0
    assert relay.stats.pending_estimate == 0
    assert await relay.publish_once() == 0  # nothing left; publishing again changes nothing
    assert sum([await redis.xlen(relay.stream_name(c)) for c in by_chronicle]) == len(rows)


async def test_rows_not_yet_due_are_skipped_and_hold_back_their_chronicle(
    outbox: AsyncEngine, redis: Redis
) -> None:
    held, free = uuid.uuid4(), uuid.uuid4()
    entity = uuid.uuid4()
    a1, a2 = await insert_rows(outbox, [(held, entity), (held, entity)])
    (a3,) = await insert_rows(
        outbox, [(held, entity)], next_attempt_at=func.now() + text("interval '1 hour'"), attempts=1
    )
    (a4,) = await insert_rows(outbox, [(held, None)])
    (b1,) = await insert_rows(
        outbox, [(free, entity)], next_attempt_at=func.now() - text("interval '1 minute'")
    )
    (b2,) = await insert_rows(outbox, [(free, None)])
    (c1,) = await insert_rows(
        outbox, [(uuid.uuid4(), None)], next_attempt_at=func.now() + text("interval '1 hour'")
    )
    relay = OutboxRelay(outbox, redis, stream_prefix=PREFIX)

    assert await drain(relay) == 4
    assert [f["outbox_id"] for f in await stream(redis, relay, held)] == [str(a1["id"]), str(a2["id"])]
    assert [f["outbox_id"] for f in await stream(redis, relay, free)] == [str(b1["id"]), str(b2["id"])]
    assert await pending_ids(outbox) == {a3["id"], a4["id"], c1["id"]}

    async with outbox.begin() as conn:
        await conn.execute(
            update(ecs_outbox).where(ecs_outbox.c.id == a3["id"]).values(next_attempt_at=func.now())
        )
    assert await drain(relay) == 2
    assert [int(f["outbox_id"]) for f in await stream(redis, relay, held)] == [
        a1["id"], a2["id"], a3["id"], a4["id"],
    ]  # fmt: skip
    assert await pending_ids(outbox) == {c1["id"]}


async def test_redis_unreachable_loses_nothing(outbox: AsyncEngine, redis: Redis) -> None:
    rows = await insert_rows(outbox, interleaved_plan(random.Random(11), chronicles=2, entities=3, count=40))
    down = unreachable_redis()
    relay = OutboxRelay(outbox, down, stream_prefix=PREFIX)
    try:
        for _ in range(3):
            with pytest.raises(RedisUnavailable):
                await relay.publish_once()
    finally:
        await down.aclose()
    assert await pending_ids(outbox) == {r["id"] for r in rows}
    async with outbox.connect() as conn:
        attempts = await conn.scalar(select(func.max(ecs_outbox.c.attempts)))
    assert attempts == 0, "an outage must not count as an attempt on the rows"
    assert relay.stats.failures == 3
    assert relay.stats.last_error is not None
    assert relay.stats.published == 0

    relay = OutboxRelay(outbox, redis, stream_prefix=PREFIX)
    assert await drain(relay) == len(rows)
    assert await pending_ids(outbox) == set()
    for chronicle_id in {r["chronicle_id"] for r in rows}:
        entries = await stream(redis, relay, chronicle_id)
        assert [int(f["outbox_id"]) for f in entries] == sorted(
            r["id"] for r in rows if r["chronicle_id"] == chronicle_id
        )


async def test_redis_dying_mid_batch_rolls_back_and_republishes_in_order(
    outbox: AsyncEngine, redis: Redis, redis_url: str
) -> None:
    chronicle = uuid.uuid4()
    entities = [uuid.uuid4() for _ in range(3)]
    rows = await insert_rows(outbox, [(chronicle, entities[n % 3]) for n in range(60)])
    name = f"relay-{uuid.uuid4().hex[:8]}"
    fragile = Redis.from_url(redis_url, client_name=name, retry=Retry(NoBackoff(), 0))
    relay = OutboxRelay(outbox, fragile, stream_prefix=PREFIX, delay_per_row=0.02)
    key = relay.stream_name(chronicle)
    try:
        batch = asyncio.create_task(relay.publish_once())
        deadline = time.monotonic() + 20
        while await redis.xlen(key) < 5:
            assert time.monotonic() < deadline, "the relay never started publishing"
            assert not batch.done(), batch
            await asyncio.sleep(0.01)
        killed = 0
        for client in await redis.client_list():
            if client.get("name") == name:
                killed += await redis.client_kill_filter(_id=client["id"])
        assert killed >= 1
        with pytest.raises(RedisUnavailable):
            await asyncio.wait_for(batch, 20)
    finally:
        await fragile.aclose()
    published_before = await redis.xlen(key)
    assert 5 <= published_before < len(rows)
    assert await pending_ids(outbox) == {r["id"] for r in rows}, "the batch must roll back"

    relay = OutboxRelay(outbox, redis, stream_prefix=PREFIX)
    assert await drain(relay) == len(rows)
    entries = await stream(redis, relay, chronicle)
    ids = [int(f["outbox_id"]) for f in entries]
    # At least once: the rows sent before the failure come again, after them everything in order.
    assert len(ids) == published_before + len(rows)
    assert ids[published_before:] == [r["id"] for r in rows]
    assert ids[:published_before] == [r["id"] for r in rows[:published_before]]
    assert_ordered_per_entity(entries)


async def test_concurrent_relays_publish_each_row_once_in_order(outbox: AsyncEngine, redis: Redis) -> None:
    plan = interleaved_plan(random.Random(3), chronicles=8, entities=3, count=400)
    rows = await insert_rows(outbox, plan)
    relays = [
        OutboxRelay(outbox, redis, batch_size=5, max_chronicles=2, stream_prefix=PREFIX) for _ in range(4)
    ]
    deadline = time.monotonic() + 60

    async def worker(relay: OutboxRelay) -> None:
        for _ in range(5_000):
            assert time.monotonic() < deadline, "relays did not finish in time"
            if await relay.publish_once() == 0:
                if not await pending_ids(outbox):
                    return
                await asyncio.sleep(0.005)  # everything left is claimed by another relay
        raise AssertionError("worker did not finish")

    await asyncio.gather(*(worker(relay) for relay in relays))

    assert sum(relay.stats.published for relay in relays) == len(rows)
    assert sum(1 for relay in relays if relay.stats.published) >= 2, "the relays never ran side by side"
    for chronicle_id in {c for c, _ in plan}:
        entries = await stream(redis, relays[0], chronicle_id)
        ids = [int(f["outbox_id"]) for f in entries]
        # No duplicates (the advisory lock gives each chronicle to one relay at a time) and
        # strictly increasing ids, hence per-entity order too.
        assert ids == sorted(r["id"] for r in rows if r["chronicle_id"] == chronicle_id)
        assert_ordered_per_entity(entries)


async def test_rejected_rows_are_retried_then_dead_lettered(outbox: AsyncEngine, redis: Redis) -> None:
    poisoned, healthy = uuid.uuid4(), uuid.uuid4()
    rows = await insert_rows(outbox, [(poisoned, None), (healthy, None), (poisoned, None), (poisoned, None)])
    relay = OutboxRelay(outbox, redis, stream_prefix=PREFIX, max_attempts=2, backoff_base=30, backoff_max=60)
    await redis.set(relay.stream_name(poisoned), "not a stream")  # every XADD there: WRONGTYPE

    assert await relay.publish_once() == 1  # the healthy chronicle is not held back
    async with outbox.connect() as conn:
        first = (await conn.execute(select(ecs_outbox).where(ecs_outbox.c.id == rows[0]["id"]))).one()
        due_in = await conn.scalar(
            select(func.extract("epoch", ecs_outbox.c.next_attempt_at - func.now())).where(
                ecs_outbox.c.id == rows[0]["id"]
            )
        )
    assert first.attempts == 1
    assert "WRONGTYPE" in first.last_error
    assert first.dead_lettered_at is None
    assert 20 < float(due_in) <= 30
    assert relay.stats.rejected == 1
    assert await pending_ids(outbox) == {rows[0]["id"], rows[2]["id"], rows[3]["id"]}
    assert await relay.publish_once() == 0, "the rejected row is not due yet, and its chronicle waits"

    async with outbox.begin() as conn:
        await conn.execute(
            update(ecs_outbox).where(ecs_outbox.c.id == rows[0]["id"]).values(next_attempt_at=None)
        )
    assert await relay.publish_once() == 0
    async with outbox.connect() as conn:
        first = (await conn.execute(select(ecs_outbox).where(ecs_outbox.c.id == rows[0]["id"]))).one()
    assert first.attempts == 2
    assert first.dead_lettered_at is not None
    assert first.sent_at is None
    assert relay.stats.dead_lettered == 1

    await redis.delete(relay.stream_name(poisoned))
    assert await drain(relay) == 2
    assert [int(f["outbox_id"]) for f in await stream(redis, relay, poisoned)] == [
        rows[2]["id"],
        rows[3]["id"],
    ]
    assert await pending_ids(outbox) == set()


async def test_run_wakes_on_notify_and_stops_promptly(outbox: AsyncEngine, redis: Redis) -> None:
    relay = OutboxRelay(outbox, redis, stream_prefix=PREFIX, poll_interval=30, stats_interval=0)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        deadline = time.monotonic() + 10
        while not relay.stats.running or relay.stats.pending_estimate is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        rows = await insert_rows(
            outbox, interleaved_plan(random.Random(5), chronicles=2, entities=2, count=30)
        )
        started = time.monotonic()
        relay.notify()
        while await pending_ids(outbox):
            assert time.monotonic() - started < 10, "notify() did not wake the relay"
            await asyncio.sleep(0.01)
        assert relay.stats.published == len(rows)
        stopping = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - stopping < 2
    finally:
        stop.set()
        if not task.done():
            task.cancel()
    assert not relay.stats.running
    assert relay.stats.pending_estimate == 0


class RedisComingBack:
    """A port where nothing listens until `restore()`, then a TCP forwarder to the real server."""

    def __init__(self, redis_url: str) -> None:
        self.target = urlsplit(redis_url)
        self.port = closed_port()
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[None]] = set()

    async def restore(self) -> None:
        self.server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for pipe in self.pipes:
            pipe.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        server_reader, server_writer = await asyncio.open_connection(self.target.hostname, self.target.port)
        for reader, writer in ((client_reader, server_writer), (server_reader, client_writer)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65_536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


async def test_run_backs_off_on_redis_outage_warns_once_and_recovers(
    outbox: AsyncEngine, redis: Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    rows = await insert_rows(outbox, [(uuid.uuid4(), uuid.uuid4()) for _ in range(5)])
    stop = asyncio.Event()
    delays: list[float] = []
    outage = RedisComingBack(redis_url)

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 9:
            assert relay.stats.outage == "redis"
            assert relay.stats.consecutive_failures == 9
            assert await pending_ids(outbox) == {r["id"] for r in rows}
            await outage.restore()
        if len(delays) >= 10:  # the idle wait after publishing: done
            stop.set()
        await asyncio.sleep(0)

    client = Redis(
        host="127.0.0.1",
        port=outage.port,
        socket_connect_timeout=1,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    relay = OutboxRelay(
        outbox,
        client,
        stream_prefix=PREFIX,
        sleep=fake_sleep,
        backoff_base=0.2,
        backoff_max=10,
        poll_interval=0.5,
    )
    try:
        with caplog.at_level(logging.DEBUG, logger="lore.ecs.relay"):
            await asyncio.wait_for(relay.run(stop), 30)
    finally:
        await client.aclose()
        await outage.close()
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10, 10, 10, 0.5])
    records = [r for r in caplog.records if r.name == "lore.ecs.relay"]
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "redis unavailable" in warnings[0]
    recoveries = [r.getMessage() for r in records if r.levelno == logging.INFO and "again" in r.getMessage()]
    assert len(recoveries) == 1, recoveries
    stats = relay.stats
    assert stats.outage is None
    assert stats.consecutive_failures == 0
    assert stats.failures == 9
    assert stats.last_error is not None
    assert stats.published == len(rows)
    assert not stats.running
    assert await pending_ids(outbox) == set()
    entries = await stream(redis, relay, rows[0]["chronicle_id"])
    assert [int(f["outbox_id"]) for f in entries] == [rows[0]["id"]]


async def test_run_survives_a_database_outage(outbox: AsyncEngine, caplog: pytest.LogCaptureFixture) -> None:
    dead = create_engine(
        f"postgresql+asyncpg://lore@127.0.0.1:{closed_port()}/lore", timeout_ms=1_000, pool_size=1
    )
    stop = asyncio.Event()
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) >= 4:
            stop.set()
        await asyncio.sleep(0)

    # A factory: the relay owns that client and closes it (it is never even created here).
    relay = OutboxRelay(dead, unreachable_redis, stream_prefix=PREFIX, sleep=fake_sleep)
    try:
        with caplog.at_level(logging.WARNING, logger="lore.ecs.relay"):
            await asyncio.wait_for(relay.run(stop), 30)
    finally:
        await relay.aclose()
        await dead.dispose()
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6])
    warnings = [r.getMessage() for r in caplog.records if r.name == "lore.ecs.relay"]
    assert len(warnings) == 1, warnings
    assert "database unavailable" in warnings[0]
    assert relay.stats.outage == "database"
