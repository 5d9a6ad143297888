"""The relay as a real process, SIGKILLed mid-batch: nothing is lost and per-entity order holds.

`python -m ecs.relay --delay-per-row` publishes slowly so the test can kill it after some rows
reached the stream but before the batch committed. A second relay then publishes everything:
each row at least once, and per entity the first occurrences in outbox id order.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import create_engine, migrate
from app.settings import to_asyncpg_url
from ecs.schema import ecs_outbox

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
ROWS = 300
PREFIX = f"lore:test:relay-kill:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def kill_db(embedded_postgres) -> AsyncIterator[tuple[str, AsyncEngine]]:
    url = to_asyncpg_url(embedded_postgres.create_database("relay_kill"))
    engine = create_engine(url, timeout_ms=10_000, pool_size=4)
    await migrate(engine, 384, branch="ecs")
    yield url, engine
    await engine.dispose()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{PREFIX}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def start_relay(
    database_url: str, redis_url: str, log: Path, *extra: str
) -> asyncio.subprocess.Process:
    with log.open("ab") as output:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ecs.relay", "--database-url", database_url, "--redis-url", redis_url,
            "--stream-prefix", PREFIX, "--poll-interval", "0.1", *extra,
            cwd=ROOT, stdout=output, stderr=output,
        )  # fmt: skip


async def stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await asyncio.wait_for(process.wait(), 10)


async def sent_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).where(ecs_outbox.c.sent_at.is_not(None))) or 0)


async def total_entries(redis: Redis, streams: list[str]) -> int:
    return sum([await redis.xlen(name) for name in streams])


async def test_sigkill_mid_batch_loses_nothing_and_keeps_entity_order(
    kill_db: tuple[str, AsyncEngine], redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    database_url, engine = kill_db
    chronicles = [uuid.uuid4() for _ in range(2)]
    entities = {c: [uuid.uuid4() for _ in range(5)] for c in chronicles}
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE ecs_outbox"))
        for n in range(ROWS):  # interleaved over chronicles and entities, one statement per row
            chronicle = chronicles[n % 2]
            await conn.execute(
                ecs_outbox.insert().values(
                    tenant_id=uuid.UUID(int=1), chronicle_id=chronicle, event_id=uuid.uuid4(),
                    entity_id=entities[chronicle][(n * 7) % 5], change_type="component_set",
                    payload={"n": n}, sequence=n + 1, attempts=0,
                )
            )  # fmt: skip
        rows = (
            await conn.execute(select(ecs_outbox.c.id, ecs_outbox.c.chronicle_id, ecs_outbox.c.entity_id))
        ).all()
    streams = [f"{PREFIX}{c}" for c in chronicles]
    log = tmp_path / "relay.log"

    # 1. A slow relay, killed once some rows are in the streams but before its batch commits.
    slow = await start_relay(database_url, redis_url, log, "--batch-size", "50", "--delay-per-row", "0.01")
    try:
        deadline = time.monotonic() + 60
        for _ in range(6_000):
            assert slow.returncode is None, log.read_text()
            if await total_entries(redis, streams) >= 5:
                break
            assert time.monotonic() < deadline, f"nothing published in time:\n{log.read_text()}"
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("relay never published")
        slow.send_signal(signal.SIGKILL)
        await asyncio.wait_for(slow.wait(), 10)
    finally:
        await stop_process(slow)
    published_before = await total_entries(redis, streams)
    assert 5 <= published_before < ROWS
    assert await sent_count(engine) < ROWS, "the killed relay cannot have marked every row sent"

    # 2. A normal relay publishes everything; then SIGTERM stops it cleanly.
    fast = await start_relay(database_url, redis_url, log, "--batch-size", "50")
    try:
        deadline = time.monotonic() + 60
        for _ in range(6_000):
            if await sent_count(engine) == ROWS:
                break
            assert fast.returncode is None, log.read_text()
            assert time.monotonic() < deadline, f"rows still pending:\n{log.read_text()}"
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("rows still pending")
        fast.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(fast.wait(), 15) == 0, log.read_text()
    finally:
        await stop_process(fast)

    # 3. Every row at least once; per chronicle (hence per entity) first occurrences in id order.
    expected = {row.id: row for row in rows}
    seen: set[int] = set()
    total = 0
    for chronicle, name in zip(chronicles, streams, strict=True):
        first_ids: list[int] = []
        per_entity: dict[str, list[int]] = {}
        for _, fields in await redis.xrange(name):
            total += 1
            outbox_id = int(fields["outbox_id"])
            assert expected[outbox_id].chronicle_id == chronicle
            assert fields["entity_id"] == str(expected[outbox_id].entity_id)
            if outbox_id in seen:
                continue
            seen.add(outbox_id)
            first_ids.append(outbox_id)
            per_entity.setdefault(fields["entity_id"], []).append(outbox_id)
        assert first_ids == sorted(first_ids)
        for entity, ids in per_entity.items():
            assert ids == sorted(ids), f"entity {entity} out of order"
    assert seen == set(expected), f"missing rows: {sorted(set(expected) - seen)[:10]}"
    # Duplicates only come from the killed batch (at-least-once), never from the clean run.
    assert ROWS <= total <= ROWS + 150
