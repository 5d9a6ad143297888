"""Ingest: one batch of events is one unit of work.

Embeddings are computed before the transaction opens, so the chronicle's row lock is never held
while the model runs; if the embedder fails, nothing has been written.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from rag.events import EventIn
from rag.store import IngestedEvent, append_events, existing_external_ids

__all__ = ["EmbedTexts", "embedding_text", "ingest_batch"]

EmbedTexts = Callable[[list[str]], Awaitable[list[list[float]]]]


EMBED_AT_ONCE = 4
"""Batches up to this size are embedded without first looking up their external ids."""


async def _known_external_ids(
    engine: AsyncEngine, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, external_ids: list[str]
) -> set[str]:
    if not external_ids:
        return set()
    async with engine.connect() as conn:
        return set(await existing_external_ids(conn, tenant_id, chronicle_id, external_ids))


def embedding_text(event: EventIn) -> str:
    """The text an event is embedded from."""
    return event.summary


async def ingest_batch(
    engine: AsyncEngine,
    embed: EmbedTexts,
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    events: Sequence[EventIn],
) -> list[IngestedEvent] | None:
    """Store a batch atomically; None when the chronicle does not exist for this tenant."""
    external_ids = [e.external_id for e in events if e.external_id is not None]
    if len(events) <= EMBED_AT_ONCE:
        # A turn-by-turn client sends one event at a time: embedding it at once, before looking
        # for its external id, saves a round trip on every new event; append_events still finds
        # duplicates under the chronicle lock. Only a re-post while the embedder is down needs
        # the lookup, so that it is still answered as a duplicate.
        try:
            embeddings = dict(enumerate(await embed([embedding_text(e) for e in events])))
        except Exception:
            known = await _known_external_ids(engine, tenant_id, chronicle_id, external_ids)
            if not all(e.external_id in known for e in events):
                raise
            embeddings = {}
    else:
        known = await _known_external_ids(engine, tenant_id, chronicle_id, external_ids)
        # Re-posted events need no embedding; a concurrent writer may still store one of the
        # others first, which append_events then reports as a duplicate.
        pending = [
            index
            for index, event in enumerate(events)
            if event.external_id is None or event.external_id not in known
        ]
        vectors = await embed([embedding_text(events[i]) for i in pending]) if pending else []
        embeddings = dict(zip(pending, vectors, strict=True))
    async with engine.begin() as conn:
        return await append_events(conn, tenant_id, chronicle_id, events, embeddings)
