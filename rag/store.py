"""Chronicle store: the queries on chronicles and their event log.

Functions take an open `AsyncConnection` and never commit: the caller owns the transaction (one
per unit of work). Every query is scoped by tenant id.
"""

from __future__ import annotations

import datetime as dt
import operator
import struct
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt
from sqlalchemy import String, and_, any_, bindparam, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from rag.events import EventIn, effect_entities, normalize_name
from rag.schema import chronicle_events, chronicles, embedding_spaces

__all__ = [
    "CHANNEL_EVENTS",
    "EVENT_COLUMNS",
    "BulkAppendResult",
    "ChronicleHead",
    "ChronicleRow",
    "EmbeddingSpaceMismatch",
    "EventFilters",
    "IngestedEvent",
    "StoredEvent",
    "append_events",
    "bulk_append_events",
    "chronicle_heads",
    "claim_embedding_space",
    "create_chronicle",
    "event_ids_at",
    "events_at",
    "events_up_to",
    "existing_external_ids",
    "first_mentions",
    "get_chronicle",
    "last_mentions",
    "list_chronicles",
    "list_events",
    "recent_events",
    "recorded_at_of",
    "refresh_statistics",
]

CHANNEL_EVENTS: Final = "lore_events"

COPY_FROM_ROWS: Final = 16
"""Batches with at least this many new events are written by binary COPY, not INSERT.

An executemany INSERT costs PostgreSQL one statement per row: 100 rows took ~140 ms against
~40 ms for the same rows in one COPY (most of that the HNSW insertions), time during which the
embedder, the bulk of an ingest, sits idle. Below this size the codec switch COPY needs costs
more than it saves.
"""
"""NOTIFY channel ingest signals on; the payload is the chronicle id."""


class EmbeddingSpaceMismatch(Exception):
    """The configured embedding model differs from the one the stored vectors come from."""


class ChronicleRow(msgspec.Struct, frozen=True):
    id: uuid.UUID
    title: str
    description: str | None
    metadata: dict[str, Any]
    embedding_model: str
    last_sequence: int
    created_at: dt.datetime
    updated_at: dt.datetime


class IngestedEvent(msgspec.Struct, frozen=True):
    id: uuid.UUID
    sequence: int
    external_id: str | None
    duplicate: bool
    content_differs: bool = False
    """A duplicate whose content (kind, summary, actors, location, effects, story time, tags,
    importance) is not what the stored original has: the original is kept, the client is told."""


class StoredEvent(msgspec.Struct, frozen=True):
    id: uuid.UUID
    chronicle_id: uuid.UUID
    sequence: int
    external_id: str | None
    kind: str
    summary: str
    actors: list[dict[str, Any]]
    location: str | None
    effects: list[dict[str, Any]]
    occurred_at: dt.datetime | None
    recorded_at: dt.datetime
    tags: list[str]
    importance: float


class EventFilters(msgspec.Struct, frozen=True):
    actor: str | None = None
    actor_names: tuple[str, ...] = ()
    """Other names of ``actor`` (its aliases): an event naming it by any of them matches."""
    kind: str | None = None
    from_sequence: int | None = None
    to_sequence: int | None = None
    occurred_after: dt.datetime | None = None
    occurred_before: dt.datetime | None = None


_CHRONICLE_COLUMNS = (
    chronicles.c.id,
    chronicles.c.title,
    chronicles.c.description,
    chronicles.c.metadata,
    chronicles.c.embedding_model,
    chronicles.c.last_sequence,
    chronicles.c.created_at,
    chronicles.c.updated_at,
)

EVENT_COLUMNS = (  # what a StoredEvent is built from, in its field order
    chronicle_events.c.id,
    chronicle_events.c.chronicle_id,
    chronicle_events.c.sequence,
    chronicle_events.c.external_id,
    chronicle_events.c.kind,
    chronicle_events.c.summary,
    chronicle_events.c.actors,
    chronicle_events.c.location,
    chronicle_events.c.effects,
    chronicle_events.c.occurred_at,
    chronicle_events.c.recorded_at,
    chronicle_events.c.tags,
    chronicle_events.c.importance,
)


async def claim_embedding_space(conn: AsyncConnection, model_id: str, dimension: int) -> None:
    """Record the model on first start; refuse a model or dimension other than the stored one."""
    column_dimension = await conn.scalar(
        text(
            "SELECT atttypmod FROM pg_attribute "
            "WHERE attrelid = 'chronicle_events'::regclass AND attname = 'embedding'"
        )
    )
    if column_dimension is not None and column_dimension > 0 and column_dimension != dimension:
        raise EmbeddingSpaceMismatch(
            f"the database stores {column_dimension}-dimensional embeddings but the configured model "
            f"{model_id!r} produces {dimension}; configure the original model or use a new database"
        )
    row = (
        await conn.execute(select(embedding_spaces.c.model_id, embedding_spaces.c.dimension).limit(1))
    ).first()
    if row is None:
        await conn.execute(insert(embedding_spaces).values(id=1, model_id=model_id, dimension=dimension))
        return
    if row.model_id != model_id or row.dimension != dimension:
        raise EmbeddingSpaceMismatch(
            f"the stored embeddings come from model {row.model_id!r} ({row.dimension} dimensions) but the "
            f"configured model is {model_id!r} ({dimension} dimensions); refusing to mix models "
            "(set EMBEDDING_PROVIDER/EMBEDDING_MODEL back, or use a new database)"
        )


async def create_chronicle(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    *,
    title: str,
    description: str | None,
    metadata: dict[str, Any],
    embedding_model: str,
) -> ChronicleRow:
    chronicle_id = uuid.uuid4()
    row = (
        await conn.execute(
            insert(chronicles)
            .values(
                id=chronicle_id,
                chronicle_id=chronicle_id,
                tenant_id=tenant_id,
                title=title,
                description=description,
                metadata=metadata,
                embedding_model=embedding_model,
            )
            .returning(*_CHRONICLE_COLUMNS)
        )
    ).one()
    return ChronicleRow(*row)


_AUTOCOMMIT_VIEWS: weakref.WeakKeyDictionary[AsyncEngine, AsyncEngine] = weakref.WeakKeyDictionary()


def without_transaction(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` (same pool) with connections that run each statement in its own transaction.

    For reads: under READ COMMITTED every statement sees its own snapshot whether or not the
    reads share a transaction, so nothing is lost; what is saved is a BEGIN and a ROLLBACK round
    trip around them (two of a context request's dozen or so statements, each time). Not for
    writes, nor for ``set_config(..., true)``, which lasts only as long as a transaction.
    """
    view = _AUTOCOMMIT_VIEWS.get(engine)
    if view is None:
        view = _AUTOCOMMIT_VIEWS[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return view


async def get_chronicle(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID
) -> ChronicleRow | None:
    row = (
        await conn.execute(
            select(*_CHRONICLE_COLUMNS).where(
                chronicles.c.id == chronicle_id, chronicles.c.tenant_id == tenant_id
            )
        )
    ).first()
    return None if row is None else ChronicleRow(*row)


async def list_chronicles(
    conn: AsyncConnection, tenant_id: uuid.UUID, *, limit: int, after: tuple[dt.datetime, uuid.UUID] | None
) -> list[ChronicleRow]:
    query = select(*_CHRONICLE_COLUMNS).where(chronicles.c.tenant_id == tenant_id)
    if after is not None:
        query = query.where(func.row(chronicles.c.created_at, chronicles.c.id) > func.row(after[0], after[1]))
    rows = await conn.execute(query.order_by(chronicles.c.created_at, chronicles.c.id).limit(limit))
    return [ChronicleRow(*row) for row in rows]


# "SELECT named.key, min" or "... max" + this: the first or the last event naming each key.
_MENTIONED_IN = (
    "(e.sequence) FROM chronicle_events e CROSS JOIN LATERAL unnest(e.entity_keys) AS named(key) "
    "WHERE e.tenant_id = :tenant_id AND e.chronicle_id = :chronicle_id AND e.sequence <= :up_to "
    "AND e.entity_keys && CAST(:keys AS text[]) AND named.key = ANY(CAST(:keys AS text[])) "
    "GROUP BY named.key"
)
_MENTIONS: Final = {
    "first": text("SELECT named.key, min" + _MENTIONED_IN),
    "last": text("SELECT named.key, max" + _MENTIONED_IN),
}


async def _mentions(
    conn: AsyncConnection, which: str, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, keys: Sequence[str],
    up_to: int,
) -> dict[str, int]:  # fmt: skip
    if not keys:
        return {}
    rows = await conn.execute(_MENTIONS[which], {
        "tenant_id": tenant_id, "chronicle_id": chronicle_id, "keys": sorted(set(keys)), "up_to": up_to,
    })  # fmt: skip
    return {key: int(sequence) for key, sequence in rows}


async def first_mentions(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, keys: Sequence[str]
) -> dict[str, int]:
    """The sequence of the first event that names each of ``keys`` (normalized names), for those
    the chronicle names at all. A chronicle only grows, so the answer never changes."""
    return await _mentions(conn, "first", tenant_id, chronicle_id, keys, _EVERY_SEQUENCE)


async def last_mentions(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, keys: Sequence[str], up_to: int
) -> dict[str, int]:
    """The sequence of the last event up to ``up_to`` that names each of ``keys`` (normalized)."""
    return await _mentions(conn, "last", tenant_id, chronicle_id, keys, up_to)


_EVERY_SEQUENCE: Final = 2**63 - 1
"""The largest bigint: a bound past every event."""


async def existing_external_ids(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, external_ids: Sequence[str]
) -> dict[str, IngestedEvent]:
    """The events already stored under these external ids."""
    if not external_ids:
        return {}
    rows = await conn.execute(
        select(chronicle_events.c.id, chronicle_events.c.sequence, chronicle_events.c.external_id).where(
            chronicle_events.c.tenant_id == tenant_id,
            chronicle_events.c.chronicle_id == chronicle_id,
            chronicle_events.c.external_id.in_(list(set(external_ids))),
        )
    )
    return {row.external_id: IngestedEvent(row.id, row.sequence, row.external_id, True) for row in rows}


def _content(
    kind: str,
    summary: str,
    actors: Any,
    location: str | None,
    effects: Any,
    occurred_at: dt.datetime | None,
    tags: Sequence[str],
    importance: float,
) -> bytes:
    """What an event says, comparable between a posted event and a stored row."""
    instant = None if occurred_at is None else occurred_at.astimezone(dt.UTC).isoformat()
    return msgspec.json.encode(
        [kind, summary, actors, location, effects, instant, list(tags), float(importance)], order="sorted"
    )


def posted_content(event: EventIn) -> bytes:
    """The content of an event as it would be stored (see ``_event_row``)."""
    return _content(
        event.kind, event.summary, msgspec.to_builtins(event.actor_refs()), event.location,
        msgspec.to_builtins(event.effects), event.occurred_at, event.tags, event.importance,
    )  # fmt: skip


async def stored_contents(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, external_ids: Sequence[str]
) -> dict[str, bytes]:
    """The content of the events stored under these external ids (see ``posted_content``)."""
    if not external_ids:
        return {}
    e = chronicle_events.c
    rows = await conn.execute(
        select(e.external_id, e.kind, e.summary, e.actors, e.location, e.effects, e.occurred_at, e.tags,
               e.importance)
        .where(e.tenant_id == tenant_id, e.chronicle_id == chronicle_id,
               e.external_id.in_(sorted(set(external_ids))))
    )  # fmt: skip
    return {
        row.external_id: _content(row.kind, row.summary, row.actors, row.location, row.effects,
                                  row.occurred_at, row.tags, row.importance)
        for row in rows
    }  # fmt: skip


async def append_events(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    events: Sequence[EventIn],
    embeddings: Mapping[int, list[float] | None],
) -> list[IngestedEvent] | None:
    """Append a batch; returns one result per input event, in input order, or None if no chronicle.

    Locks the chronicle row for the rest of the transaction: concurrent ingests into the same
    chronicle queue here, so sequences are gap-free (a rolled-back batch never took any) and
    commit-ordered (no one can take a later sequence before this batch commits). External ids
    already stored, or repeated earlier in the same batch, return the original event with
    `duplicate: true`, and `content_differs: true` when what was posted again is not what is
    stored. `embeddings` maps input index to vector (None: stored without one) for every event
    that may be new.
    """
    last_sequence = await conn.scalar(
        select(chronicles.c.last_sequence)
        .where(chronicles.c.id == chronicle_id, chronicles.c.tenant_id == tenant_id)
        .with_for_update()
    )
    if last_sequence is None:
        return None
    stored = await existing_external_ids(
        conn, tenant_id, chronicle_id, [e.external_id for e in events if e.external_id is not None]
    )
    # Re-posts are rare and their content is read only then: a retried batch that says something
    # else under the same external id is a client bug (or two writers) worth telling about.
    contents = await stored_contents(
        conn, tenant_id, chronicle_id, [e.external_id for e in events if e.external_id in stored]
    )
    first_in_batch: dict[str, EventIn] = {}  # compared (as content) only if repeated in the batch
    results: list[IngestedEvent] = []
    fresh: list[tuple[uuid.UUID, int, int]] = []  # (event id, sequence, input index) to store
    for index, event in enumerate(events):
        if event.external_id is not None and event.external_id in stored:
            original = contents.get(event.external_id) or posted_content(first_in_batch[event.external_id])
            differs = original != posted_content(event)
            results.append(msgspec.structs.replace(stored[event.external_id], content_differs=differs))
            continue
        last_sequence += 1
        event_id = uuid.uuid4()
        result = IngestedEvent(event_id, last_sequence, event.external_id, False)
        if event.external_id is not None:
            stored[event.external_id] = IngestedEvent(event_id, last_sequence, event.external_id, True)
            first_in_batch[event.external_id] = event
        results.append(result)
        fresh.append((event_id, last_sequence, index))
    if len(fresh) >= COPY_FROM_ROWS:
        given = [index for _, _, index in fresh if embeddings[index] is not None]
        binary: dict[int, bytes | None] = dict.fromkeys(index for _, _, index in fresh)
        if given:
            stacked = np.asarray([embeddings[index] for index in given], dtype=np.float32)
            binary.update(zip(given, vector_binary(stacked), strict=True))
        rows = [
            _event_row(tenant_id, chronicle_id, event_id, sequence, events[index], binary[index])
            for event_id, sequence, index in fresh
        ]
        await _copy_event_rows(conn, rows)
    elif fresh:
        rows = [
            _event_row(tenant_id, chronicle_id, event_id, sequence, events[index], embeddings[index])
            for event_id, sequence, index in fresh
        ]
        await conn.execute(insert(chronicle_events), rows)
    if fresh:
        await _advance_head(conn, chronicle_id, last_sequence)
    return results


async def _advance_head(conn: AsyncConnection, chronicle_id: uuid.UUID, last_sequence: int) -> None:
    """Record the chronicle's new last sequence and tell the projectors (under the row lock)."""
    await conn.execute(
        update(chronicles)
        .where(chronicles.c.id == chronicle_id)
        .values(last_sequence=last_sequence, updated_at=func.now())
    )
    # Delivered on commit only, so a listener never sees an event it cannot read yet.
    await conn.execute(text("SELECT pg_notify(:channel, :payload)"), {
        "channel": CHANNEL_EVENTS, "payload": str(chronicle_id)
    })  # fmt: skip


def _event_row(
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    event_id: uuid.UUID,
    sequence: int,
    event: EventIn,
    embedding: list[float] | bytes | None,
) -> dict[str, Any]:
    actors = event.actor_refs()
    entity_keys = {normalize_name(a.name) for a in actors}
    for effect in event.effects:
        entity_keys.update(normalize_name(name) for name in effect_entities(effect))
    if event.location is not None:
        entity_keys.add(normalize_name(event.location))
    return {
        "id": event_id,
        "tenant_id": tenant_id,
        "chronicle_id": chronicle_id,
        "sequence": sequence,
        "external_id": event.external_id,
        "kind": event.kind,
        "summary": event.summary,
        "actors": msgspec.to_builtins(actors),
        "actor_keys": sorted({normalize_name(a.name) for a in actors}),
        "actor_names": " ".join(a.name for a in actors) or None,
        "location": event.location,
        "location_key": None if event.location is None else normalize_name(event.location),
        "effects": msgspec.to_builtins(event.effects),
        "entity_keys": sorted(entity_keys),
        "occurred_at": event.occurred_at,
        "tags": list(event.tags),
        "importance": event.importance,
        "embedding": embedding,
    }


class BulkAppendResult(msgspec.Struct, frozen=True):
    stored: int
    duplicates: int
    last_sequence: int


# The columns a bulk load writes, in COPY order; the others (recorded_at, search_vector) are filled
# in by the server exactly as for an INSERT.
_BULK_COLUMNS: Final = (
    "id", "tenant_id", "chronicle_id", "sequence", "external_id", "kind", "summary", "actors",
    "actor_keys", "actor_names", "location", "location_key", "effects", "entity_keys", "occurred_at",
    "tags", "importance", "embedding",
)  # fmt: skip
_BULK_JSON_COLUMNS: Final = ("actors", "effects")


def vector_binary(vectors: npt.NDArray[np.float32]) -> list[bytes]:
    """Each row in pgvector's binary wire format (`vector_recv`): dimension, unused, big-endian floats.

    Converted for the whole matrix at once: pgvector's own asyncpg codec packs every vector
    separately, and the text form makes the server parse 384 decimal numbers per row.
    """
    header = struct.pack(">HH", vectors.shape[1], 0)
    big_endian = np.ascontiguousarray(vectors, dtype=">f4")
    return [header + row.tobytes() for row in big_endian]


async def bulk_append_events(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    events: Sequence[EventIn],
    embeddings: npt.NDArray[np.float32],
    *,
    statement_timeout_ms: int = 600_000,
) -> BulkAppendResult | None:
    """Append a large batch with COPY; None if there is no such chronicle for this tenant.

    The same rows and guarantees as `append_events` (the chronicle row lock makes sequences
    gap-free and commit-ordered; stored or repeated external ids are skipped), but the rows go
    through binary COPY on the driver connection inside the caller's transaction, which is several
    times cheaper per row than a multi-row INSERT. `embeddings` has one row per event.

    The transaction's statement timeout is raised to `statement_timeout_ms`: the service's
    timeout (a few seconds, right for requests) is too short for COPYing 10,000 rows into a table
    whose HNSW index is present, where each row is an index insertion.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] != len(events):
        raise ValueError(f"expected one embedding per event ({len(events)}), got shape {embeddings.shape}")
    await conn.execute(select(func.set_config("statement_timeout", str(statement_timeout_ms), True)))
    last_sequence = await conn.scalar(
        select(chronicles.c.last_sequence)
        .where(chronicles.c.id == chronicle_id, chronicles.c.tenant_id == tenant_id)
        .with_for_update()
    )
    if last_sequence is None:
        return None
    external_ids = list({e.external_id for e in events if e.external_id is not None})
    seen: set[str] = set()
    if external_ids:
        # One array parameter rather than IN (...): a chunk may carry more ids than a statement
        # may have parameters.
        seen = set(
            await conn.scalars(
                select(chronicle_events.c.external_id).where(
                    chronicle_events.c.chronicle_id == chronicle_id,
                    chronicle_events.c.external_id == any_(bindparam("ids", external_ids, ARRAY(String))),
                )
            )
        )
    fresh: list[int] = []  # positions to store: not stored yet, and first of their id in the chunk
    for index, event in enumerate(events):
        if event.external_id is not None:
            if event.external_id in seen:
                continue
            seen.add(event.external_id)
        fresh.append(index)
    if not fresh:
        return BulkAppendResult(0, len(events), last_sequence)
    vectors = vector_binary(embeddings[fresh])
    rows = [
        _event_row(
            tenant_id, chronicle_id, uuid.uuid4(), last_sequence + 1 + offset, events[index], vectors[offset]
        )
        for offset, index in enumerate(fresh)
    ]
    await _copy_event_rows(conn, rows, timeout_s=statement_timeout_ms / 1000 + 1)
    last_sequence += len(fresh)
    await _advance_head(conn, chronicle_id, last_sequence)
    return BulkAppendResult(len(fresh), len(events) - len(fresh), last_sequence)


async def _copy_event_rows(
    conn: AsyncConnection, rows: Sequence[dict[str, Any]], *, timeout_s: float | None = None
) -> None:
    """Write `_event_row` rows whose embeddings are `vector_binary` bytes, by binary COPY.

    Runs on the driver connection inside the caller's transaction (which must have run a
    statement already). `timeout_s` overrides the driver's own limit, which is the service's.
    """
    values = operator.itemgetter(*_BULK_COLUMNS)
    records = []
    for row in rows:
        for column in _BULK_JSON_COLUMNS:
            row[column] = msgspec.json.encode(row[column]).decode()
        records.append(values(row))
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is None or not driver.is_in_transaction():
        raise RuntimeError("event rows can only be copied inside an open transaction")
    vector_schema = await conn.scalar(
        text("SELECT typnamespace::regnamespace::text FROM pg_type WHERE typname = 'vector'")
    )
    # The rows carry ready-made vector_recv bytes; the codec passes them through. It is removed
    # again afterwards so that the pooled connection reads vectors as everyone else expects.
    await driver.set_type_codec("vector", schema=vector_schema, encoder=bytes, decoder=bytes, format="binary")
    try:
        await driver.copy_records_to_table(
            chronicle_events.name, records=records, columns=list(_BULK_COLUMNS), timeout=timeout_s
        )
    except BaseException:
        # The transaction is aborted, so the codec cannot be reset (that runs a query): the
        # connection is discarded instead of going back to the pool with it.
        await conn.invalidate()
        raise
    await driver.reset_type_codec("vector", schema=vector_schema)


async def list_events(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    filters: EventFilters,
    *,
    after_sequence: int,
    limit: int,
) -> list[StoredEvent]:
    """Events in sequence order after a cursor position, filtered."""
    conditions = [
        chronicle_events.c.tenant_id == tenant_id,
        chronicle_events.c.chronicle_id == chronicle_id,
        chronicle_events.c.sequence > after_sequence,
    ]
    if filters.actor is not None:
        keys = sorted({normalize_name(name) for name in (filters.actor, *filters.actor_names)})
        conditions.append(chronicle_events.c.actor_keys.overlap(keys))
    if filters.kind is not None:
        conditions.append(chronicle_events.c.kind == filters.kind)
    if filters.from_sequence is not None:
        conditions.append(chronicle_events.c.sequence >= filters.from_sequence)
    if filters.to_sequence is not None:
        conditions.append(chronicle_events.c.sequence <= filters.to_sequence)
    if filters.occurred_after is not None:
        conditions.append(chronicle_events.c.occurred_at >= filters.occurred_after)
    if filters.occurred_before is not None:
        conditions.append(chronicle_events.c.occurred_at <= filters.occurred_before)
    rows = await conn.execute(
        select(*EVENT_COLUMNS).where(and_(*conditions)).order_by(chronicle_events.c.sequence).limit(limit)
    )
    return [StoredEvent(**row._mapping) for row in rows]


class ChronicleHead(msgspec.Struct, frozen=True):
    id: uuid.UUID
    tenant_id: uuid.UUID
    last_sequence: int


async def chronicle_heads(
    conn: AsyncConnection, chronicle_ids: Sequence[uuid.UUID] | None = None
) -> list[ChronicleHead]:
    """How far each chronicle (or the given ones) has been written: what followers compare against."""
    query = select(chronicles.c.id, chronicles.c.tenant_id, chronicles.c.last_sequence)
    if chronicle_ids is not None:
        query = query.where(chronicles.c.id.in_(list(chronicle_ids)))
    return [ChronicleHead(*row) for row in await conn.execute(query)]


async def recorded_at_of(conn: AsyncConnection, chronicle_id: uuid.UUID, sequence: int) -> dt.datetime | None:
    """When the event at `sequence` was stored (to measure how long a follower has lagged)."""
    return await conn.scalar(
        select(chronicle_events.c.recorded_at).where(
            chronicle_events.c.chronicle_id == chronicle_id, chronicle_events.c.sequence == sequence
        )
    )


async def recent_events(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, up_to: int, limit: int
) -> list[StoredEvent]:
    """The last `limit` events at or before sequence `up_to`, newest first."""
    rows = await conn.execute(
        select(*EVENT_COLUMNS)
        .where(
            chronicle_events.c.tenant_id == tenant_id,
            chronicle_events.c.chronicle_id == chronicle_id,
            chronicle_events.c.sequence <= up_to,
        )
        .order_by(chronicle_events.c.sequence.desc())
        .limit(limit)
    )
    return [StoredEvent(**row._mapping) for row in rows]


async def events_named(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    up_to: int,
    *,
    sequences: Sequence[int] = (),
    ids: Sequence[uuid.UUID] = (),
    external_ids: Sequence[str] = (),
) -> list[StoredEvent]:
    """The events at or before `up_to` with any of these sequences, ids or external ids (each
    found through its own unique index), in sequence order."""
    named = []
    if sequences:
        named.append(chronicle_events.c.sequence.in_(list(sequences)))
    if ids:
        named.append(chronicle_events.c.id.in_(list(ids)))
    if external_ids:
        named.append(chronicle_events.c.external_id.in_(list(external_ids)))
    if not named:
        return []
    return await _events_where(
        conn, tenant_id, chronicle_id, chronicle_events.c.sequence <= up_to, or_(*named)
    )


async def refresh_statistics(conn: AsyncConnection) -> None:
    """ANALYZE the event log after a bulk load, so that searches use their indexes at once."""
    await conn.execute(text("ANALYZE chronicle_events"))


async def event_ids_at(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, sequences: Sequence[int]
) -> dict[int, uuid.UUID]:
    """The ids of the events at these sequences (what a fact known by its sequence cites)."""
    if not sequences:
        return {}
    rows = await conn.execute(
        select(chronicle_events.c.sequence, chronicle_events.c.id).where(
            chronicle_events.c.tenant_id == tenant_id,
            chronicle_events.c.chronicle_id == chronicle_id,
            chronicle_events.c.sequence.in_(sorted(set(sequences))),
        )
    )
    return {row.sequence: row.id for row in rows}


async def events_at(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, sequences: Sequence[int]
) -> list[StoredEvent]:
    """The events at these sequences, in sequence order."""
    if not sequences:
        return []
    return await _events_where(
        conn, tenant_id, chronicle_id, chronicle_events.c.sequence.in_(list(sequences))
    )


async def _events_where(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, *conditions: ColumnElement[bool]
) -> list[StoredEvent]:
    """A chronicle's events meeting every condition, in sequence order."""
    rows = await conn.execute(
        select(*EVENT_COLUMNS)
        .where(
            chronicle_events.c.tenant_id == tenant_id,
            chronicle_events.c.chronicle_id == chronicle_id,
            *conditions,
        )
        .order_by(chronicle_events.c.sequence)
    )
    return [StoredEvent(**row._mapping) for row in rows]


async def events_up_to(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, up_to: int | None, page: int = 5_000
) -> list[StoredEvent]:
    """Every event of a chronicle in sequence order (up to a sequence, if given), read in pages."""
    events: list[StoredEvent] = []
    after = 0
    while True:
        rows = await list_events(
            conn, tenant_id, chronicle_id, EventFilters(to_sequence=up_to), after_sequence=after, limit=page
        )
        events += rows
        if len(rows) < page:
            return events
        after = rows[-1].sequence
