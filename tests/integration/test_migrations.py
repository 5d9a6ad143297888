"""Migrations run on a real database: upgrade from empty, downgrade to base, upgrade again."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from app.database import create_engine, current_revision, head_revision, migrate
from rag.schema import metadata
from rag.store import EmbeddingSpaceMismatch, claim_embedding_space


async def table_names(engine) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        return {r[0] for r in rows}


async def index_definitions(engine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
        )
        return {r[0]: r[1] for r in rows}


@pytest.fixture
async def empty_engine(embedded_postgres):
    from app.settings import to_asyncpg_url

    url = to_asyncpg_url(embedded_postgres.create_database("migration_test"))
    engine = create_engine(url, timeout_ms=10_000, pool_size=2)
    yield engine
    await engine.dispose()


async def test_upgrade_downgrade_upgrade(empty_engine) -> None:
    assert await table_names(empty_engine) == set()
    await migrate(empty_engine, 384)
    tables = await table_names(empty_engine)
    assert {"tenants", "api_keys", "chronicles", "chronicle_events", "embedding_spaces"} <= tables
    async with empty_engine.connect() as conn:
        assert await current_revision(conn) == head_revision()
    indexes = await index_definitions(empty_engine)
    assert "USING hnsw (embedding vector_cosine_ops)" in indexes["chronicle_events_embedding_hnsw"]
    assert "USING gin (search_vector)" in indexes["chronicle_events_search_gin"]
    assert "(chronicle_id, sequence)" in indexes["chronicle_events_sequence_key"]
    assert "UNIQUE" in indexes["chronicle_events_external_id_key"]

    await migrate(empty_engine, 384, "base")
    assert await table_names(empty_engine) <= {"alembic_version"}
    async with empty_engine.connect() as conn:
        assert await current_revision(conn) is None

    await migrate(empty_engine, 384)
    assert {"chronicle_events", "tenants"} <= await table_names(empty_engine)


async def test_tables_in_code_mirror_the_migrations(empty_engine) -> None:
    await migrate(empty_engine, 384)
    async with empty_engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows = await conn.execute(
                text("SELECT column_name FROM information_schema.columns WHERE table_name = :t"),
                {"t": table.name},
            )
            assert {r[0] for r in rows} == set(table.columns.keys()), table.name
        # Every table is scoped by tenant, so it can be distributed by tenant later.
        for table in metadata.sorted_tables:
            if table.name != "embedding_spaces":
                assert "tenant_id" in table.columns, table.name


async def test_embedding_dimension_follows_the_model_and_mismatch_is_refused(empty_engine) -> None:
    await migrate(empty_engine, 768)
    async with empty_engine.connect() as conn:
        typmod = await conn.scalar(
            text(
                "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'chronicle_events'::regclass "
                "AND attname = 'embedding'"
            )
        )
    assert typmod == 768
    async with empty_engine.begin() as conn:
        with pytest.raises(EmbeddingSpaceMismatch, match="768-dimensional"):
            await claim_embedding_space(conn, "all-MiniLM-L6-v2-onnx-int8", 384)
    async with empty_engine.begin() as conn:
        await claim_embedding_space(conn, "model-a", 768)
    async with empty_engine.begin() as conn:
        await claim_embedding_space(conn, "model-a", 768)  # the same model again is fine
    async with empty_engine.begin() as conn:
        with pytest.raises(EmbeddingSpaceMismatch, match="refusing to mix models"):
            await claim_embedding_space(conn, "model-b", 768)


async def test_ecs_branch_upgrades_and_downgrades_independently(empty_engine) -> None:
    await migrate(empty_engine, 384, branch="chronicle")
    await migrate(empty_engine, 384, branch="ecs")
    ecs_tables = {
        "ecs_entities", "ecs_components", "ecs_relationships", "ecs_valence_history", "ecs_checkpoints", "ecs_outbox",
    }  # fmt: skip
    assert ecs_tables <= await table_names(empty_engine)
    async with empty_engine.connect() as conn:
        assert await current_revision(conn, "ecs") == head_revision("ecs")
        assert await current_revision(conn, "chronicle") == head_revision("chronicle")
    indexes = await index_definitions(empty_engine)
    assert "USING gin (data jsonb_path_ops)" in indexes["ecs_components_data_gin"]
    assert "(to_id, from_id)" in indexes["ecs_relationships_reverse_idx"]

    await migrate(empty_engine, 384, "base", branch="ecs")
    tables = await table_names(empty_engine)
    assert not ecs_tables & tables
    assert "chronicle_events" in tables  # the other branch is untouched
    await migrate(empty_engine, 384, branch="ecs")
    assert ecs_tables <= await table_names(empty_engine)


async def test_ecs_tables_in_code_mirror_the_migrations(empty_engine) -> None:
    from ecs.schema import ecs_metadata

    await migrate(empty_engine, 384, branch="ecs")
    async with empty_engine.connect() as conn:
        for table in ecs_metadata.sorted_tables:
            rows = await conn.execute(
                text("SELECT column_name FROM information_schema.columns WHERE table_name = :t"),
                {"t": table.name},
            )
            assert {r[0] for r in rows} == set(table.columns.keys()), table.name
            assert "tenant_id" in table.columns and "chronicle_id" in table.columns, table.name
