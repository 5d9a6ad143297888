"""Rebuild and verify: the ECS state must always equal a fresh replay of the chronicle."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ecs.projector import replay_stored
from ecs.reducer import WorldState, encode_state
from ecs.repository import (
    claim_checkpoint,
    component_rows,
    ensure_checkpoints,
    entity_row,
    read_checkpoint,
    relationship_row,
    save_checkpoint,
    write_full_state,
)
from ecs.schema import ecs_components, ecs_entities, ecs_relationships
from rag.store import StoredEvent, chronicle_heads, events_up_to

__all__ = ["Difference", "RebuildResult", "VerifyResult", "rebuild_chronicle", "verify_chronicle"]


class Difference(msgspec.Struct, frozen=True):
    """One way the stored state differs from a replay. `component` is None for entity fields."""

    kind: str  # missing, unexpected, different
    entity: str
    component: str | None
    field: str | None
    stored: Any
    expected: Any


class VerifyResult(msgspec.Struct, frozen=True):
    chronicle_id: uuid.UUID
    replayed_sequence: int
    checkpoint_sequence: int
    checkpoint_hash_matches: bool
    differences: list[Difference]

    @property
    def ok(self) -> bool:
        return not self.differences and self.checkpoint_hash_matches


class RebuildResult(msgspec.Struct, frozen=True):
    chronicle_id: uuid.UUID
    events: int
    entities: int
    relationships: int
    state_hash: str


async def _read_all_events(
    engine: AsyncEngine, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, up_to: int | None = None
) -> list[StoredEvent]:
    async with engine.connect() as conn:
        return await events_up_to(conn, tenant_id, chronicle_id, up_to)


async def _tenant_of(engine: AsyncEngine, chronicle_id: uuid.UUID) -> uuid.UUID | None:
    async with engine.connect() as conn:
        heads = await chronicle_heads(conn, [chronicle_id])
    return heads[0].tenant_id if heads else None


async def rebuild_chronicle(
    chronicle_engine: AsyncEngine, ecs_engine: AsyncEngine, chronicle_id: uuid.UUID
) -> RebuildResult | None:
    """Replay from sequence 0 into fresh state and swap it in atomically.

    The swap is one transaction holding the checkpoint lock: readers keep seeing the old state until
    it commits, and projectors wait instead of writing in between. None if there is no chronicle.
    """
    tenant_id = await _tenant_of(chronicle_engine, chronicle_id)
    if tenant_id is None:
        return None
    async with ecs_engine.begin() as conn:
        await ensure_checkpoints(conn, [(chronicle_id, tenant_id)])
    async with ecs_engine.begin() as conn:
        await claim_checkpoint(conn, chronicle_id, wait=True)
        # Read under the lock: no projector can advance the checkpoint past what we replay.
        events = await _read_all_events(chronicle_engine, tenant_id, chronicle_id)
        state, history, running_hash = replay_stored(events, chronicle_id)
        await write_full_state(conn, state, history, tenant_id)
        await save_checkpoint(
            conn,
            chronicle_id,
            last_sequence=events[-1].sequence if events else 0,
            state_hash=running_hash,
            snapshot=encode_state(state),
        )
    return RebuildResult(
        chronicle_id, len(events), len(state.entities), len(state.relationships), running_hash
    )


def _expected_rows(
    state: WorldState, tenant_id: uuid.UUID
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]], dict[str, dict[str, Any]]]:
    entities = {e: entity_row(state, e, tenant_id) for e in state.entities}
    components = {
        (str(row["entity_id"]), row["type"]): row
        for e in state.entities
        for row in component_rows(state, e, tenant_id)
    }
    relationships = {k: relationship_row(state, k, tenant_id) for k in state.relationships}
    return entities, components, relationships


async def _stored_rows(
    conn: AsyncConnection, chronicle_id: uuid.UUID
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]], dict[str, dict[str, Any]]]:
    entities = {
        str(row["id"]): dict(row)
        for row in (
            await conn.execute(select(ecs_entities).where(ecs_entities.c.chronicle_id == chronicle_id))
        )
        .mappings()
        .all()
    }
    components = {
        (str(row["entity_id"]), row["type"]): dict(row)
        for row in (
            await conn.execute(select(ecs_components).where(ecs_components.c.chronicle_id == chronicle_id))
        )
        .mappings()
        .all()
    }
    relationships = {
        f"{row['from_id']}>{row['to_id']}": dict(row)
        for row in (
            await conn.execute(
                select(ecs_relationships).where(ecs_relationships.c.chronicle_id == chronicle_id)
            )
        )
        .mappings()
        .all()
    }
    return entities, components, relationships


def _diff_rows(
    label: str,
    stored: dict[Any, dict[str, Any]],
    expected: dict[Any, dict[str, Any]],
    entity_of: Any,
    component_of: Any,
) -> list[Difference]:
    differences = []
    for key in sorted(set(stored) | set(expected), key=str):
        have, want = stored.get(key), expected.get(key)
        if have is None:
            differences.append(Difference("missing", entity_of(key), component_of(key), None, None, label))
        elif want is None:
            differences.append(Difference("unexpected", entity_of(key), component_of(key), None, label, None))
        else:
            for field in sorted(want):
                if _normal(have.get(field)) != _normal(want[field]):
                    differences.append(
                        Difference(
                            "different", entity_of(key), component_of(key), field,
                            _normal(have.get(field)), _normal(want[field]),
                        )
                    )  # fmt: skip
    return differences


def _normal(value: Any) -> Any:
    """Compare JSON-ish values by content (uuids as strings, floats rounded as stored)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, float):
        return round(value, 12)
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items()}
    return value


async def verify_chronicle(
    chronicle_engine: AsyncEngine, ecs_engine: AsyncEngine, chronicle_id: uuid.UUID
) -> VerifyResult | None:
    """Replay in memory up to the checkpoint and report every difference from the stored state."""
    tenant_id = await _tenant_of(chronicle_engine, chronicle_id)
    if tenant_id is None:
        return None
    async with ecs_engine.connect() as conn:
        checkpoint = await read_checkpoint(conn, chronicle_id)
        stored = await _stored_rows(conn, chronicle_id)
    checkpoint_sequence = checkpoint.last_sequence if checkpoint else 0
    events = await _read_all_events(chronicle_engine, tenant_id, chronicle_id, up_to=checkpoint_sequence)
    state, _history, running_hash = replay_stored(events, chronicle_id)
    expected = _expected_rows(state, tenant_id)
    differences = [
        *_diff_rows("entity", stored[0], expected[0], lambda k: k, lambda k: None),
        *_diff_rows("component", stored[1], expected[1], lambda k: k[0], lambda k: k[1]),
        *_diff_rows("relationship", stored[2], expected[2], lambda k: k, lambda k: "relationship"),
    ]
    hash_matches = not events if checkpoint is None else checkpoint.state_hash == running_hash
    return VerifyResult(chronicle_id, len(events), checkpoint_sequence, hash_matches, differences)
