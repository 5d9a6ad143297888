"""Rebuild and verify: the ECS state must always equal a fresh replay of the chronicle."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ecs.projector import to_chronicle_event
from ecs.reducer import GENESIS_HASH, EventChanges, WorldState, apply_event, chain_hash, encode_state
from ecs.repository import (
    append_valence_history,
    claim_checkpoint,
    component_rows,
    delete_chronicle_state,
    ensure_checkpoints,
    entity_row,
    read_checkpoint,
    relationship_row,
    save_checkpoint,
    write_state_rows,
)
from ecs.schema import ecs_components, ecs_entities, ecs_relationships
from rag.store import EventFilters, chronicle_heads, list_events

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


REPLAY_PAGE: Final = 5_000
"""Events read and replayed at a time: memory holds the state and one page, not the chronicle
(a whole 1,000,000-event chronicle in memory took 5 GB)."""

Progress = Callable[[int], None]
"""Called with the number of events replayed so far, after every page."""


class _Replayed(msgspec.Struct):
    state: WorldState
    running_hash: str
    events: int
    last_sequence: int


async def _replay_in_pages(
    engine: AsyncEngine,
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    up_to: int | None,
    *,
    each_page: Callable[[list[EventChanges]], Awaitable[None]] | None = None,
    progress: Progress | None = None,
) -> _Replayed:
    """Fold the chronicle's events (up to a sequence, if given) into a fresh state, page by page;
    ``each_page`` gets every page's changes before the next page is read."""
    replayed = _Replayed(WorldState(chronicle_id=str(chronicle_id)), GENESIS_HASH, 0, 0)
    up_to_filter = EventFilters(to_sequence=up_to)
    async with engine.connect() as conn:
        while True:
            page = await list_events(conn, tenant_id, chronicle_id, up_to_filter,
                                     after_sequence=replayed.last_sequence, limit=REPLAY_PAGE)  # fmt: skip
            changes = [apply_event(replayed.state, to_chronicle_event(event)) for event in page]
            for event_changes in changes:
                replayed.running_hash = chain_hash(replayed.running_hash, event_changes)
            if each_page is not None and changes:
                await each_page(changes)
            if page:
                replayed.events += len(page)
                replayed.last_sequence = page[-1].sequence
                if progress is not None:
                    progress(replayed.events)
            if len(page) < REPLAY_PAGE:
                return replayed


async def _tenant_of(engine: AsyncEngine, chronicle_id: uuid.UUID) -> uuid.UUID | None:
    async with engine.connect() as conn:
        heads = await chronicle_heads(conn, [chronicle_id])
    return heads[0].tenant_id if heads else None


async def rebuild_chronicle(
    chronicle_engine: AsyncEngine,
    ecs_engine: AsyncEngine,
    chronicle_id: uuid.UUID,
    *,
    progress: Progress | None = None,
) -> RebuildResult | None:
    """Replay from sequence 0 into fresh state and swap it in atomically.

    The swap is one transaction holding the checkpoint lock: readers keep seeing the old state until
    it commits, and projectors wait instead of writing in between. None if there is no chronicle.
    The events are read and replayed a page at a time (``REPLAY_PAGE``).
    """
    tenant_id = await _tenant_of(chronicle_engine, chronicle_id)
    if tenant_id is None:
        return None
    async with ecs_engine.begin() as conn:
        await ensure_checkpoints(conn, [(chronicle_id, tenant_id)])
    async with ecs_engine.begin() as conn:
        await claim_checkpoint(conn, chronicle_id, wait=True)
        # Read under the lock: no projector can advance the checkpoint past what we replay. The old
        # rows go first; valence history is appended page by page as the replay makes it, and the
        # final entities and relationships are written at the end, all in this one transaction.
        await delete_chronicle_state(conn, chronicle_id)

        async def keep_valence_history(changes: list[EventChanges]) -> None:
            await append_valence_history(conn, changes, tenant_id, chronicle_id)

        replayed = await _replay_in_pages(chronicle_engine, tenant_id, chronicle_id, None,
                                          each_page=keep_valence_history, progress=progress)  # fmt: skip
        state = replayed.state
        await write_state_rows(conn, state, tenant_id)
        await save_checkpoint(
            conn,
            chronicle_id,
            last_sequence=replayed.last_sequence,
            state_hash=replayed.running_hash,
            snapshot=encode_state(state),
        )
    return RebuildResult(
        chronicle_id, replayed.events, len(state.entities), len(state.relationships), replayed.running_hash
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
    chronicle_engine: AsyncEngine,
    ecs_engine: AsyncEngine,
    chronicle_id: uuid.UUID,
    *,
    progress: Progress | None = None,
) -> VerifyResult | None:
    """Replay in memory up to the checkpoint and report every difference from the stored state."""
    tenant_id = await _tenant_of(chronicle_engine, chronicle_id)
    if tenant_id is None:
        return None
    async with ecs_engine.connect() as conn:
        checkpoint = await read_checkpoint(conn, chronicle_id)
        stored = await _stored_rows(conn, chronicle_id)
    checkpoint_sequence = checkpoint.last_sequence if checkpoint else 0
    replayed = await _replay_in_pages(chronicle_engine, tenant_id, chronicle_id, checkpoint_sequence,
                                      progress=progress)  # fmt: skip
    state, running_hash = replayed.state, replayed.running_hash
    expected = _expected_rows(state, tenant_id)
    differences = [
        *_diff_rows("entity", stored[0], expected[0], lambda k: k, lambda k: None),
        *_diff_rows("component", stored[1], expected[1], lambda k: k[0], lambda k: k[1]),
        *_diff_rows("relationship", stored[2], expected[2], lambda k: k, lambda k: "relationship"),
    ]
    hash_matches = replayed.events == 0 if checkpoint is None else checkpoint.state_hash == running_hash
    return VerifyResult(chronicle_id, replayed.events, checkpoint_sequence, hash_matches, differences)
