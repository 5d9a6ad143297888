"""Bulk ingest (`rag.bulk`, `rag.store.bulk_append_events`, `lore ingest --bulk`) on real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import select, text

from app.cli import load_sample_story
from rag.bulk import BulkLineError, bulk_ingest, read_chunks
from rag.ingest import ingest_batch
from rag.retrieval import RetrievalQuery, vector_search
from rag.schema import chronicles, tenants
from rag.store import COPY_FROM_ROWS, append_events, create_chronicle
from tests.conftest import Tenant

pytestmark = pytest.mark.timeout(300)

ROW_SQL = text(
    "SELECT sequence, external_id, kind, summary, actors, actor_keys, actor_names, location, location_key, "
    "effects, entity_keys, occurred_at, tags, importance, search_vector::text AS search_vector, "
    "embedding::real[] AS embedding FROM chronicle_events WHERE chronicle_id = :c ORDER BY sequence"
)


async def new_chronicle(engine, tenant: Tenant, embedder) -> uuid.UUID:
    async with engine.begin() as conn:
        row = await create_chronicle(conn, tenant.id, title="bulk", description=None, metadata={},
                                     embedding_model=embedder.model_id)  # fmt: skip
    return row.id


def story_lines(with_embeddings: list[list[float]] | None = None) -> list[bytes]:
    events = [msgspec.to_builtins(e) for e in load_sample_story()]
    if with_embeddings is not None:
        for event, vector in zip(events, with_embeddings, strict=True):
            event["embedding"] = vector
    return [msgspec.json.encode(e) for e in events]


async def rows(engine, chronicle_id: uuid.UUID) -> list[dict]:
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(ROW_SQL, {"c": chronicle_id})]


async def bulk(engine, embedder, tenant: Tenant, chronicle_id: uuid.UUID, lines, chunk_size: int = 16):
    async def embed(texts: list[str]) -> list[list[float]]:
        return embedder.embed(texts)

    chunks = read_chunks(lines, dimension=embedder.dimension, source="story.jsonl", chunk_size=chunk_size)
    return await bulk_ingest(engine, embed, tenant.id, chronicle_id, chunks, dimension=embedder.dimension)


def same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for left, right in zip(a, b, strict=True):
        left, right = dict(left), dict(right)
        vectors = left.pop("embedding"), right.pop("embedding")
        assert left == right
        assert max(abs(x - y) for x, y in zip(*vectors, strict=True)) < 1e-4


async def test_bulk_stores_the_same_rows_as_the_normal_path(engine, embedder, tenant: Tenant) -> None:
    normal, one_post, bulk_embedded, bulk_given = [
        await new_chronicle(engine, tenant, embedder) for _ in range(4)
    ]

    async def embed(texts: list[str]) -> list[list[float]]:
        return embedder.embed(texts)

    story = load_sample_story()
    assert len(story) >= COPY_FROM_ROWS
    for start in range(0, len(story), 3):  # small posts: rows go in by INSERT
        await ingest_batch(engine, embed, tenant.id, normal, story[start : start + 3])
    expected = await rows(engine, normal)
    # One post of the whole story: its rows go in by COPY, and must be the same.
    await ingest_batch(engine, embed, tenant.id, one_post, story)
    same_rows(expected, await rows(engine, one_post))

    totals = await bulk(engine, embedder, tenant, bulk_embedded, story_lines())
    assert totals is not None and (totals.stored, totals.duplicates, totals.embedded) == (40, 0, 40)
    same_rows(expected, await rows(engine, bulk_embedded))

    # Precomputed embeddings are stored as given (and nothing is embedded).
    given = await bulk(engine, embedder, tenant, bulk_given, story_lines([r["embedding"] for r in expected]))
    assert given is not None and (given.stored, given.embedded) == (40, 0)
    stored = await rows(engine, bulk_given)
    same_rows(expected, stored)
    assert [r["embedding"] for r in stored] == [r["embedding"] for r in expected]

    async with engine.connect() as conn:
        assert (
            await conn.scalar(select(chronicles.c.last_sequence).where(chronicles.c.id == bulk_given)) == 40
        )
        found = await conn.scalar(
            text("SELECT count(*) FROM chronicle_events WHERE chronicle_id = :c "
                 "AND search_vector @@ websearch_to_tsquery('english', 'cellar')"), {"c": bulk_given}
        )  # fmt: skip
        assert found == sum("cellar" in r["summary"].lower() or "cellar" in (r["location"] or "").lower()
                            for r in stored)  # fmt: skip
        assert found > 0
        target = stored[14]
        hits = await vector_search(
            conn,
            RetrievalQuery(tenant_id=tenant.id, chronicle_id=bulk_given, query_vector=target["embedding"]),
            k=3,
            ef_search=40,
        )
    assert hits[0].sequence == target["sequence"] and hits[0].score > 0.999


async def test_bulk_rerun_is_idempotent(engine, embedder, tenant: Tenant) -> None:
    chronicle = await new_chronicle(engine, tenant, embedder)
    first = await bulk(engine, embedder, tenant, chronicle, story_lines()[:25])
    assert first is not None and first.stored == 25
    before = await rows(engine, chronicle)
    again = await bulk(engine, embedder, tenant, chronicle, story_lines())
    assert again is not None
    # Only the 15 new ones are embedded and stored; repeats inside one chunk count once.
    assert (again.stored, again.duplicates, again.embedded, again.last_sequence) == (15, 25, 15, 40)
    after = await rows(engine, chronicle)
    assert after[:25] == before
    assert [r["sequence"] for r in after] == list(range(1, 41))
    repeated = await bulk(engine, embedder, tenant, chronicle, story_lines()[:3] * 2)
    assert repeated is not None and (repeated.stored, repeated.duplicates) == (0, 6)


async def test_bad_line_is_named_and_its_chunk_not_stored(engine, embedder, tenant: Tenant) -> None:
    chronicle = await new_chronicle(engine, tenant, embedder)
    lines = story_lines()[:5]
    lines.insert(3, b"")  # blank lines are skipped but still counted
    lines.insert(5, json.dumps({"summary": "x", "effects": [{"op": "teleport"}]}).encode())
    with pytest.raises(BulkLineError, match=r"^story\.jsonl:6: ") as caught:
        await bulk(engine, embedder, tenant, chronicle, lines, chunk_size=3)
    assert caught.value.line == 6
    # Chunk 1 (lines 1-3) was committed; chunk 2 (line 5 and the bad line 6) stored nothing.
    assert [r["sequence"] for r in await rows(engine, chronicle)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("vector", "message"),
    [([0.1] * 383, "embedding has 383 dimensions, expected 384"), ([1e39] * 384, "non-finite"),
     ([0.0] * 384, "zero vector"), (["a"] * 384, "Expected `float`")],
)  # fmt: skip
async def test_bad_embedding_is_rejected(engine, embedder, tenant: Tenant, vector, message) -> None:
    chronicle = await new_chronicle(engine, tenant, embedder)
    line = json.dumps({"summary": "A line with a bad vector.", "embedding": vector}).encode()
    with pytest.raises(BulkLineError, match="story.jsonl:2: .*" + message):
        await bulk(engine, embedder, tenant, chronicle, [story_lines()[0], line])
    assert await rows(engine, chronicle) == []


def lore(args: list[str], database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORE_")}
    env |= {"DATABASE_URL": database_url, "REDIS_URL": "redis://127.0.0.1:1/0", "LORE_RUN_PROJECTOR": "false"}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True,
                          timeout=240, check=False)  # fmt: skip


async def test_cli_bulk_ingest(engine, tenant: Tenant, database_url: str, tmp_path: Path) -> None:
    async with engine.connect() as conn:
        name = await conn.scalar(select(tenants.c.name).where(tenants.c.id == tenant.id))
    good = tmp_path / "story.jsonl"
    good.write_bytes(b"\n".join(story_lines()) + b"\n")
    done = lore(["ingest", str(good), "--tenant", name, "--bulk", "--chunk-size", "15"], database_url)
    assert done.returncode == 0, done.stderr
    assert "40 events stored, 0 duplicates skipped, 40 embedded here" in done.stderr
    chronicle = done.stdout.strip()
    again = lore(["ingest", str(good), "--tenant", name, "--chronicle", chronicle, "--bulk"], database_url)
    assert again.returncode == 0 and "0 events stored, 40 duplicates skipped" in again.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(story_lines()[0] + b'\n{"summary": "x", "embedding": [0.5, 0.5]}\n')
    rejected = lore(["ingest", str(bad), "--tenant", name, "--bulk"], database_url)
    assert rejected.returncode == 1
    assert f"{bad}:2: embedding has 2 dimensions, expected 384" in rejected.stderr

    # A registered component's value of the wrong shape is refused as the API refuses it.
    unhealthy = tmp_path / "unhealthy.jsonl"
    unhealthy.write_text(
        '{"summary": "x", "effects": [{"op": "set", "entity": "Maud", "component": "health", "value": "very"}]}\n'
    )
    for extra in (["--bulk"], []):
        refused = lore(["ingest", str(unhealthy), "--tenant", name, *extra], database_url)
        assert refused.returncode == 1, extra
        assert f"{unhealthy}:1: effects[0].value: not a valid 'health' value" in refused.stderr, extra


async def test_failed_copy_leaves_no_pass_through_codec_in_the_pool(engine, embedder, tenant: Tenant) -> None:
    chronicle = await new_chronicle(engine, tenant, embedder)
    async with engine.begin() as conn:  # a row at sequence 1 behind the counter's back: COPY must fail
        await conn.execute(
            text("INSERT INTO chronicle_events (id, tenant_id, chronicle_id, sequence, kind, summary) "
                 "VALUES (:id, :t, :c, 1, 'event', 'planted')"),
            {"id": uuid.uuid4(), "t": tenant.id, "c": chronicle},
        )  # fmt: skip
    with pytest.raises(Exception, match="chronicle_events_sequence_key"):
        await bulk(engine, embedder, tenant, chronicle, story_lines()[:3])
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM chronicle_events WHERE chronicle_id = :c"),
                                 {"c": chronicle}) == 1  # fmt: skip
    # Every pooled connection still reads vectors through the normal codec.
    for _ in range(3):
        async with engine.connect() as conn:
            value = await conn.scalar(text("SELECT '[1,2,3]'::vector"))
        assert not isinstance(value, bytes)


async def test_copied_batch_keeps_missing_embeddings_missing(engine, embedder, tenant: Tenant) -> None:
    chronicle = await new_chronicle(engine, tenant, embedder)
    story = load_sample_story()[:COPY_FROM_ROWS]
    vectors = embedder.embed([e.summary for e in story])
    # Every other event without a vector (as a loader that embeds later would write them).
    embeddings = {i: (vectors[i] if i % 2 == 0 else None) for i in range(len(story))}
    async with engine.begin() as conn:
        await append_events(conn, tenant.id, chronicle, story, embeddings)
    stored = await rows(engine, chronicle)
    assert [r["embedding"] is None for r in stored] == [i % 2 == 1 for i in range(len(story))]
    for i in range(0, len(story), 2):
        assert max(abs(x - y) for x, y in zip(stored[i]["embedding"], vectors[i], strict=True)) < 1e-6
