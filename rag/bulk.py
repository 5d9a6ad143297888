"""Bulk ingest: a JSON Lines file of events, each optionally with a precomputed embedding.

The file is streamed in chunks (one transaction each): a million events are never held at once.
Every line is validated exactly like an API event (`rag.events.EventIn`) plus an optional
``"embedding": [floats]`` of the configured dimension; a bad line stops the load naming it, before
anything of its chunk is written (chunks before it stay committed, and a re-run skips them by
``external_id``). Lines without an embedding are embedded with the configured embedder, a chunk at
a time. Storage is `rag.store.bulk_append_events` (COPY under the chronicle's row lock).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt
from sqlalchemy.ext.asyncio import AsyncEngine

from rag.events import Effect, EventIn
from rag.ingest import EmbedTexts, embedding_text
from rag.store import bulk_append_events, existing_external_ids

__all__ = [
    "DEFAULT_CHUNK_EVENTS",
    "BulkEventIn",
    "BulkLineError",
    "BulkTotals",
    "bulk_ingest",
    "chunk_vectors",
    "decode_line",
    "read_chunks",
]

DEFAULT_CHUNK_EVENTS: Final = 10_000
"""Events per transaction: large enough that COPY dominates, small enough to keep a chunk of
parsed lines (about 120 MB with 384-dimension embeddings as Python floats) and one lock hold short."""

EMBED_BATCH: Final = 256
"""Texts per embedder call for lines without an embedding."""

_FLOAT32_MAX: Final = float(np.finfo(np.float32).max)


class BulkEventIn(EventIn, frozen=True, forbid_unknown_fields=True):
    """An API event plus an optional precomputed embedding."""

    embedding: list[float] | None = None


class BulkLineError(ValueError):
    """A line that is not a valid event; the message starts with ``source:line:``."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.line = line


class BulkTotals(msgspec.Struct):
    lines: int = 0
    stored: int = 0
    duplicates: int = 0
    embedded: int = 0
    last_sequence: int = 0


def decode_line(raw: bytes | str, dimension: int) -> BulkEventIn:
    """One validated line; ValueError (or msgspec's errors) with a message naming the field."""
    event = msgspec.json.decode(raw, type=BulkEventIn)
    vector = event.embedding
    if vector is not None:
        if len(vector) != dimension:
            raise ValueError(f"embedding has {len(vector)} dimensions, expected {dimension}")
        # Finite in float32 as stored: 1e39 parses as a float64 but becomes inf in `vector`.
        if not all(math.isfinite(x) and abs(x) <= _FLOAT32_MAX for x in vector):
            raise ValueError("embedding has a non-finite value")
        if not any(vector):
            raise ValueError("embedding is the zero vector (it has no cosine distance to anything)")
    return event


RefusedValues = Callable[[Sequence[Effect]], list[tuple[str, str]]]
"""What the state side refuses in an event's effects, as ``(field, reason)`` pairs."""


def read_chunks(
    lines: Iterable[bytes | str],
    *,
    dimension: int,
    source: str,
    chunk_size: int = DEFAULT_CHUNK_EVENTS,
    refused: RefusedValues | None = None,
) -> Iterator[list[BulkEventIn]]:
    """Validated events in chunks of ``chunk_size``; blank lines are skipped.

    Raises BulkLineError for the first bad line, before the chunk holding it is yielded.
    ``refused``: a check of the effects' values beyond their shape (the API refuses them too).
    """
    chunk: list[BulkEventIn] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            event = decode_line(raw, dimension)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as error:
            raise BulkLineError(source, number, str(error)) from None
        if refused is not None and (problems := refused(event.effects)):
            field, reason = problems[0]
            raise BulkLineError(source, number, f"{field}: {reason}")
        chunk.append(event)
        if len(chunk) >= chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def chunk_vectors(events: list[BulkEventIn], dimension: int) -> tuple[npt.NDArray[np.float32], list[int]]:
    """The chunk's embeddings as one float32 matrix, and the positions that still need one (zeros)."""
    matrix = np.zeros((len(events), dimension), dtype=np.float32)
    missing: list[int] = []
    for index, event in enumerate(events):
        if event.embedding is None:
            missing.append(index)
        else:
            matrix[index] = event.embedding
    return matrix, missing


async def bulk_ingest(
    engine: AsyncEngine,
    embed: EmbedTexts,
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    chunks: Iterable[list[BulkEventIn]],
    *,
    dimension: int,
    on_chunk: Callable[[BulkTotals], Awaitable[None] | None] | None = None,
) -> BulkTotals | None:
    """Store every chunk, one transaction each; None if the chronicle does not exist."""
    totals = BulkTotals()
    for chunk in chunks:
        matrix, missing = chunk_vectors(chunk, dimension)
        if missing:
            # Embedding is the slow part: events a previous run stored are not embedded again.
            ids = [e for i in missing if (e := chunk[i].external_id) is not None]
            known: set[str] = set()
            async with engine.connect() as conn:
                for start in range(0, len(ids), 5_000):  # within a statement's parameter limit
                    known.update(
                        await existing_external_ids(conn, tenant_id, chronicle_id, ids[start : start + 5_000])
                    )
            pending = [i for i in missing if chunk[i].external_id not in known]
            for start in range(0, len(pending), EMBED_BATCH):
                batch = pending[start : start + EMBED_BATCH]
                vectors = await embed([embedding_text(chunk[i]) for i in batch])
                matrix[batch] = np.asarray(vectors, dtype=np.float32)
            totals.embedded += len(pending)
        async with engine.begin() as conn:
            result = await bulk_append_events(conn, tenant_id, chronicle_id, chunk, matrix)
        if result is None:
            return None
        totals.lines += len(chunk)
        totals.stored += result.stored
        totals.duplicates += result.duplicates
        totals.last_sequence = result.last_sequence
        if on_chunk is not None:
            pending_callback = on_chunk(totals)
            if pending_callback is not None:
                await pending_callback
    return totals
