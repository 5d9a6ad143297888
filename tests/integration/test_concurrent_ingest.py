"""Sequences stay gap-free and commit-ordered under many concurrent writers to one chronicle."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import pytest
from sqlalchemy import select

from rag.events import EventIn
from rag.ingest import ingest_batch
from rag.schema import chronicle_events
from rag.store import create_chronicle
from tests.conftest import make_tenant

WRITERS = 16
BATCHES_PER_WRITER = 8
EVENTS_PER_BATCH = 5


async def hashed_vectors(texts: list[str]) -> list[list[float]]:
    """A fast deterministic stand-in for the model: this test is about ordering, not meaning."""
    await asyncio.sleep(0.001)
    return [[b / 255 for b in hashlib.sha256(t.encode()).digest()] * 12 for t in texts]


async def test_concurrent_writers_get_gap_free_commit_ordered_sequences(engine) -> None:
    tenant = await make_tenant(engine)
    async with engine.begin() as conn:
        chronicle = await create_chronicle(
            conn, tenant.id, title="race", description=None, metadata={}, embedding_model="test"
        )
    done = asyncio.Event()
    violations: list[str] = []
    observations = 0

    async def writer(w: int) -> list[int]:
        sequences: list[int] = []
        for b in range(BATCHES_PER_WRITER):
            batch = [
                EventIn(summary=f"writer {w} batch {b} event {i}", external_id=f"w{w}-b{b}-e{i}")
                for i in range(EVENTS_PER_BATCH)
            ]
            results = await ingest_batch(engine, hashed_vectors, tenant.id, chronicle.id, batch)
            assert results is not None
            sequences += [r.sequence for r in results]
            # Within one batch, sequences are consecutive and in input order.
            assert [r.sequence for r in results] == list(range(results[0].sequence, results[0].sequence + 5))
        return sequences

    async def follower() -> None:
        # What a projector sees: at every moment the committed sequences must be exactly 1..max,
        # otherwise a reader that remembers max could skip an event committed later.
        nonlocal observations
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(chronicle_events.c.sequence).where(chronicle_events.c.chronicle_id == chronicle.id)
                )
                seen = sorted(r[0] for r in rows)
            if seen != list(range(1, len(seen) + 1)):
                violations.append(f"visible sequences have a hole: {seen[-10:]}")
            observations += 1
            await asyncio.sleep(0)

    follow = asyncio.create_task(follower())
    results = await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    done.set()
    await follow

    total = WRITERS * BATCHES_PER_WRITER * EVENTS_PER_BATCH
    all_sequences = sorted(s for r in results for s in r)
    assert all_sequences == list(range(1, total + 1))
    assert violations == []
    assert observations > 5

    # Re-posting everything concurrently stores nothing new.
    again = await asyncio.gather(*(writer(w) for w in range(4)))
    assert sorted(s for r in again for s in r) == sorted(s for r in results[:4] for s in r)
    async with engine.connect() as conn:
        count = len((await conn.execute(
            select(chronicle_events.c.id).where(chronicle_events.c.chronicle_id == chronicle.id)
        )).all())  # fmt: skip
    assert count == total


async def test_failed_batch_leaves_no_gap(engine) -> None:
    tenant = await make_tenant(engine)
    async with engine.begin() as conn:
        chronicle = await create_chronicle(
            conn, tenant.id, title="rollback", description=None, metadata={}, embedding_model="test"
        )

    async def broken_vectors(texts: list[str]) -> list[list[float]]:
        return [[0.0] * 3 for _ in texts]  # wrong dimension: the insert fails inside the transaction

    first = await ingest_batch(engine, hashed_vectors, tenant.id, chronicle.id, [EventIn(summary="one")])
    assert first is not None and first[0].sequence == 1
    with pytest.raises(Exception, match=r"(?i)dimension|expected"):  # the database rejects the vector
        await ingest_batch(engine, broken_vectors, tenant.id, chronicle.id, [EventIn(summary="two")])
    second = await ingest_batch(engine, hashed_vectors, tenant.id, chronicle.id, [EventIn(summary="three")])
    assert second is not None and second[0].sequence == 2
    assert await ingest_batch(engine, hashed_vectors, tenant.id, uuid.uuid4(), [EventIn(summary="x")]) is None
