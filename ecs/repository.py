"""ECS repository: every query on the ECS tables. Functions take a connection and never commit.

The relational rows are the read model that endpoints query; they are derived from the reducer's
`WorldState` by the row builders below, which the projector, rebuild and verify all share, so the
three can never disagree on what a state looks like in the tables.
"""

from __future__ import annotations

import datetime as dt
import functools
import operator
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from sqlalchemy import Table, bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from ecs.components import Holder, Position, Status
from ecs.reducer import (
    GENESIS_HASH,
    Anomaly,
    Change,
    EventChanges,
    Relationship,
    ValenceChanged,
    WorldState,
)
from ecs.schema import (
    ecs_checkpoints,
    ecs_components,
    ecs_entities,
    ecs_outbox,
    ecs_relationships,
    ecs_valence_history,
)
from rag.events import normalize_name

__all__ = [
    "Checkpoint",
    "append_valence_history",
    "claim_checkpoint",
    "component_rows",
    "delete_chronicle_state",
    "ensure_checkpoints",
    "entity_row",
    "read_checkpoint",
    "read_checkpoints",
    "read_snapshot",
    "record_failure",
    "relationship_row",
    "save_checkpoint",
    "write_batch",
    "write_full_state",
    "write_state_rows",
]


class Checkpoint(msgspec.Struct, frozen=True):
    chronicle_id: uuid.UUID
    tenant_id: uuid.UUID
    last_sequence: int
    state_hash: str
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None
    parked_at: dt.datetime | None
    parked_reason: str | None
    updated_at: dt.datetime


_CHECKPOINT_COLUMNS = (
    ecs_checkpoints.c.chronicle_id,
    ecs_checkpoints.c.tenant_id,
    ecs_checkpoints.c.last_sequence,
    ecs_checkpoints.c.state_hash,
    ecs_checkpoints.c.attempts,
    ecs_checkpoints.c.next_attempt_at,
    ecs_checkpoints.c.last_error,
    ecs_checkpoints.c.parked_at,
    ecs_checkpoints.c.parked_reason,
    ecs_checkpoints.c.updated_at,
)


# ----------------------------------------------------------------------------------------------
# Row builders (state -> rows)


@functools.lru_cache(maxsize=16_384)
def _as_uuid(text: str) -> uuid.UUID:
    """The state keeps ids as strings; rows need UUIDs. The same few thousand ids recur in every
    batch (each touched entity's id, chronicle, provenance events), and parsing them dominated the
    row builders' time. Every new event brings new ids too: the bound (~6 MB) is what a process
    following a busy chronicle keeps; at 65,536 the cache was still growing after 8,000 events."""
    return uuid.UUID(text)


def entity_row(state: WorldState, entity_id: str, tenant_id: uuid.UUID) -> dict[str, Any]:
    entity = state.entities[entity_id]
    return {
        "id": _as_uuid(entity.id),
        "tenant_id": tenant_id,
        "chronicle_id": _as_uuid(state.chronicle_id),
        "name": entity.name,
        "name_key": normalize_name(entity.name),
        "kind": entity.kind,
        "aliases": list(entity.aliases),
        "alias_keys": [normalize_name(a) for a in entity.aliases],
        "archetype": list(entity.archetype),
        "created_sequence": entity.created_sequence,
        "updated_sequence": entity.updated_sequence,
        "created_event_id": _as_uuid(entity.created_event_id),
        "updated_event_id": _as_uuid(entity.updated_event_id),
    }


def component_rows(state: WorldState, entity_id: str, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    entity = state.entities[entity_id]
    rows = []
    for name in sorted(entity.components):
        value = entity.components[name]
        data = msgspec.to_builtins(value)
        rows.append(
            {
                "entity_id": _as_uuid(entity.id),
                "type": name,
                "tenant_id": tenant_id,
                "chronicle_id": _as_uuid(state.chronicle_id),
                "data": data,
                "location_id": _as_uuid(value.location) if isinstance(value, Position) else None,
                "holder_id": _as_uuid(value.holder) if isinstance(value, Holder) else None,
                "status": value.value if isinstance(value, Status) else None,
                "sequence": entity.provenance[name].sequence,
                "event_id": _as_uuid(entity.provenance[name].event_id),
            }
        )
    return rows


def relationship_row(state: WorldState, key: str, tenant_id: uuid.UUID) -> dict[str, Any]:
    record: Relationship = state.relationships[key]
    return {
        "from_id": _as_uuid(record.from_id),
        "to_id": _as_uuid(record.to_id),
        "tenant_id": tenant_id,
        "chronicle_id": _as_uuid(state.chronicle_id),
        "types": msgspec.to_builtins(record.types),
        "valence": dict(record.valence),
        "provenance": msgspec.to_builtins(record.provenance),
        "created_sequence": record.created_sequence,
        "updated_sequence": record.updated_sequence,
    }


def _change_entity(change: Change) -> str | None:
    """The entity an outbox row is ordered under."""
    for field in ("entity_id", "from_id"):
        value = getattr(change, field, None)
        if isinstance(value, str):
            return value
    if isinstance(change, Anomaly) and change.entity_ids:
        return change.entity_ids[0]
    return None


def touched(batch: Iterable[EventChanges]) -> tuple[set[str], set[str]]:
    """Entity ids and relationship keys a batch of changes touched."""
    entities: set[str] = set()
    relationships: set[str] = set()
    for event_changes in batch:
        for change in event_changes.changes:
            entity_id = getattr(change, "entity_id", None)
            if isinstance(entity_id, str):
                entities.add(entity_id)
            from_id, to_id = getattr(change, "from_id", None), getattr(change, "to_id", None)
            if isinstance(from_id, str) and isinstance(to_id, str):
                relationships.add(f"{from_id}>{to_id}")
    return entities, relationships


# ----------------------------------------------------------------------------------------------
# Writes


async def _copy_rows(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows with COPY inside the current transaction.

    A projected batch writes several rows per event (components, valence history, outbox); as
    multi-row INSERTs their parameters cost more client CPU than the reducer itself, while binary
    COPY encodes them in the driver. Must follow another statement of the transaction (SQLAlchemy
    opens the driver's transaction lazily, on the first statement).
    """
    if not rows:
        return
    columns = list(rows[0])
    values = operator.itemgetter(*columns)
    json_positions = [i for i, name in enumerate(columns) if isinstance(table.c[name].type, JSONB)]
    records: list[Any] = [values(row) for row in rows]
    if json_positions:
        for index, record in enumerate(records):
            mutable = list(record)
            for position in json_positions:
                mutable[position] = msgspec.json.encode(mutable[position]).decode()
            records[index] = mutable
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is None or not driver.is_in_transaction():
        raise RuntimeError("_copy_rows must run inside an open transaction")
    await driver.copy_records_to_table(table.name, records=records, columns=columns)


async def _upsert_entities(
    conn: AsyncConnection, state: WorldState, entity_ids: Sequence[str], tenant_id: uuid.UUID
) -> None:
    if not entity_ids:
        return
    rows = [entity_row(state, e, tenant_id) for e in entity_ids]
    statement = pg_insert(ecs_entities)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[ecs_entities.c.id],
            set_={c: statement.excluded[c] for c in rows[0] if c not in ("id", "tenant_id", "chronicle_id")},
        ),
        rows,
    )
    ids = [_as_uuid(e) for e in entity_ids]
    await conn.execute(delete(ecs_components).where(ecs_components.c.entity_id.in_(ids)))
    components = [row for e in entity_ids for row in component_rows(state, e, tenant_id)]
    await _copy_rows(conn, ecs_components, components)


async def _upsert_relationships(
    conn: AsyncConnection, state: WorldState, keys: Sequence[str], tenant_id: uuid.UUID
) -> None:
    rows = [relationship_row(state, k, tenant_id) for k in keys if k in state.relationships]
    if not rows:
        return
    statement = pg_insert(ecs_relationships)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=[ecs_relationships.c.from_id, ecs_relationships.c.to_id],
            set_={
                c: statement.excluded[c]
                for c in ("types", "valence", "provenance", "created_sequence", "updated_sequence")
            },
        ),
        rows,
    )


def _valence_rows(
    batch: Iterable[EventChanges], tenant_id: uuid.UUID, chronicle_id: uuid.UUID
) -> list[dict[str, Any]]:
    rows = []
    for event_changes in batch:
        for change in event_changes.changes:
            if isinstance(change, ValenceChanged):
                rows.append(
                    {
                        "tenant_id": tenant_id,
                        "chronicle_id": chronicle_id,
                        "event_id": change.event_id,
                        "sequence": change.sequence,
                        "from_id": change.from_id,
                        "to_id": change.to_id,
                        "dimension": change.dimension,
                        "previous": change.previous,
                        "delta": change.delta,
                        "new_value": change.value,
                    }
                )
    return rows


def _outbox_rows(
    batch: Iterable[EventChanges], tenant_id: uuid.UUID, chronicle_id: uuid.UUID
) -> list[dict[str, Any]]:
    # Ids stay strings and payloads structs: these rows only go to COPY, which encodes both.
    rows = []
    for event_changes in batch:
        for change in event_changes.changes:
            entity_id = _change_entity(change)
            rows.append(
                {
                    "tenant_id": tenant_id,
                    "chronicle_id": chronicle_id,
                    "event_id": event_changes.event_id,
                    "entity_id": entity_id,
                    "change_type": type(change).__struct_config__.tag,
                    "payload": change,
                    "sequence": event_changes.sequence,
                    "attempts": 0,
                }
            )
    return rows


async def write_batch(
    conn: AsyncConnection, state: WorldState, batch: Sequence[EventChanges], tenant_id: uuid.UUID
) -> set[str]:
    """Persist what a batch of events changed: rows, valence history, outbox. Returns touched ids."""
    chronicle_id = uuid.UUID(state.chronicle_id)
    entity_ids, relationship_keys = touched(batch)
    await _upsert_entities(conn, state, sorted(entity_ids), tenant_id)
    await _upsert_relationships(conn, state, sorted(relationship_keys), tenant_id)
    await _copy_rows(conn, ecs_valence_history, _valence_rows(batch, tenant_id, chronicle_id))
    await _copy_rows(conn, ecs_outbox, _outbox_rows(batch, tenant_id, chronicle_id))
    return entity_ids


async def delete_chronicle_state(conn: AsyncConnection, chronicle_id: uuid.UUID) -> None:
    await conn.execute(delete(ecs_components).where(ecs_components.c.chronicle_id == chronicle_id))
    await conn.execute(delete(ecs_entities).where(ecs_entities.c.chronicle_id == chronicle_id))
    await conn.execute(delete(ecs_relationships).where(ecs_relationships.c.chronicle_id == chronicle_id))
    await conn.execute(delete(ecs_valence_history).where(ecs_valence_history.c.chronicle_id == chronicle_id))


async def write_full_state(
    conn: AsyncConnection, state: WorldState, history: Sequence[EventChanges], tenant_id: uuid.UUID
) -> None:
    """Replace a chronicle's whole read model (rebuild); valence history comes from `history`."""
    chronicle_id = uuid.UUID(state.chronicle_id)
    await delete_chronicle_state(conn, chronicle_id)
    await write_state_rows(conn, state, tenant_id)
    await append_valence_history(conn, history, tenant_id, chronicle_id)


async def write_state_rows(conn: AsyncConnection, state: WorldState, tenant_id: uuid.UUID) -> None:
    """Write every entity (with its components) and relationship of `state`."""
    await _upsert_entities(conn, state, sorted(state.entities), tenant_id)
    await _upsert_relationships(conn, state, sorted(state.relationships), tenant_id)


async def append_valence_history(
    conn: AsyncConnection, history: Iterable[EventChanges], tenant_id: uuid.UUID, chronicle_id: uuid.UUID
) -> None:
    """Append the valence changes among `history` (COPY; after another statement of the transaction)."""
    await _copy_rows(conn, ecs_valence_history, _valence_rows(history, tenant_id, chronicle_id))


# ----------------------------------------------------------------------------------------------
# Checkpoints


async def ensure_checkpoints(
    conn: AsyncConnection, chronicles: Iterable[tuple[uuid.UUID, uuid.UUID]]
) -> None:
    """Create missing checkpoints for (chronicle_id, tenant_id) pairs at sequence 0."""
    rows = [
        {"chronicle_id": c, "tenant_id": t, "last_sequence": 0, "state_hash": GENESIS_HASH, "attempts": 0}
        for c, t in chronicles
    ]
    if rows:
        await conn.execute(pg_insert(ecs_checkpoints).on_conflict_do_nothing(), rows)


async def claim_checkpoint(
    conn: AsyncConnection, chronicle_id: uuid.UUID, *, wait: bool = False
) -> Checkpoint | None:
    """Lock a chronicle's checkpoint for this transaction; None if another worker holds it."""
    query = select(*_CHECKPOINT_COLUMNS).where(ecs_checkpoints.c.chronicle_id == chronicle_id)
    query = query.with_for_update() if wait else query.with_for_update(skip_locked=True)
    row = (await conn.execute(query)).first()
    return None if row is None else Checkpoint(**row._mapping)


# Built once, with a bound parameter: every context request reads a checkpoint.
_READ_CHECKPOINT = select(*_CHECKPOINT_COLUMNS).where(
    ecs_checkpoints.c.chronicle_id == bindparam("chronicle_id")
)


async def read_checkpoint(conn: AsyncConnection, chronicle_id: uuid.UUID) -> Checkpoint | None:
    """The chronicle's checkpoint, without its snapshot (megabytes for a long chronicle; only a
    restoring projector needs it: `read_snapshot`)."""
    row = (await conn.execute(_READ_CHECKPOINT, {"chronicle_id": chronicle_id})).first()
    return None if row is None else Checkpoint(**row._mapping)


async def read_checkpoints(conn: AsyncConnection) -> list[Checkpoint]:
    """Every checkpoint (for scheduling and status)."""
    rows = await conn.execute(select(*_CHECKPOINT_COLUMNS))
    return [Checkpoint(**row._mapping) for row in rows]


async def read_snapshot(conn: AsyncConnection, chronicle_id: uuid.UUID) -> bytes | None:
    """The stored world-state snapshot: the state as of its own `last_sequence`, which may be
    behind the checkpoint's (snapshots are written only every so many events).

    Checkpoint reads leave it out on purpose: it grows with the world (about 5 MB at 100,000
    generated events) and only a projector without the state in memory needs it.
    """
    return await conn.scalar(
        select(ecs_checkpoints.c.snapshot).where(ecs_checkpoints.c.chronicle_id == chronicle_id)
    )


async def save_checkpoint(
    conn: AsyncConnection,
    chronicle_id: uuid.UUID,
    *,
    last_sequence: int,
    state_hash: str,
    snapshot: bytes | None,
) -> None:
    """Advance the checkpoint; `snapshot` None keeps the stored snapshot (an older state)."""
    values: dict[str, Any] = {
        "last_sequence": last_sequence,
        "state_hash": state_hash,
        "attempts": 0,
        "next_attempt_at": None,
        "last_error": None,
        "updated_at": func.now(),
    }
    if snapshot is not None:
        values["snapshot"] = snapshot
    await conn.execute(
        update(ecs_checkpoints).where(ecs_checkpoints.c.chronicle_id == chronicle_id).values(**values)
    )


async def record_failure(
    conn: AsyncConnection,
    chronicle_id: uuid.UUID,
    *,
    attempts: int,
    retry_in_seconds: float,
    error: str,
    park: bool,
) -> None:
    """Count a failed attempt; park the chronicle (later events wait) when `park`."""
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_error": error[:2000],
        "next_attempt_at": dt.datetime.now(dt.UTC) + dt.timedelta(seconds=retry_in_seconds),
        "updated_at": func.now(),
    }
    if park:
        values |= {"parked_at": func.now(), "parked_reason": error[:2000]}
    await conn.execute(
        update(ecs_checkpoints).where(ecs_checkpoints.c.chronicle_id == chronicle_id).values(**values)
    )


async def resume_checkpoint(conn: AsyncConnection, chronicle_id: uuid.UUID) -> bool:
    """Un-park a chronicle so that the projector retries it now. False if there is no checkpoint."""
    result = await conn.execute(
        update(ecs_checkpoints)
        .where(ecs_checkpoints.c.chronicle_id == chronicle_id)
        .values(parked_at=None, parked_reason=None, attempts=0, next_attempt_at=None, last_error=None)
    )
    return bool(result.rowcount)
