"""Chronicles and their events."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from app.database import translate_database_errors
from app.dependencies import ServicesDep, TenantId
from app.errors import FieldError, bad_parameter, invalid_events, not_found
from app.pagination import MAX_SEQUENCE, decode_cursor, encode_cursor
from app.schemas import (
    ActorOut,
    ChronicleCreate,
    ChronicleOut,
    ChroniclePage,
    EventOut,
    EventPage,
    IngestResponse,
    IngestResultOut,
)
from app.services import Services
from ecs.components import refused_values
from ecs.guard import is_ecs_failure
from ecs.queries import EntityCore, find_entity, get_entity_core
from rag.events import EventBatchIn, EventIn
from rag.ingest import ingest_batch
from rag.store import (
    ChronicleRow,
    EventFilters,
    StoredEvent,
    create_chronicle,
    get_chronicle,
    list_chronicles,
    list_events,
)

__all__ = ["ChronicleController"]

MAX_PAGE = 500


class _ChronicleCursor(msgspec.Struct, frozen=True):
    t: dt.datetime
    id: uuid.UUID


class _EventCursor(msgspec.Struct, frozen=True):
    s: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQUENCE)]


def _chronicle_out(row: ChronicleRow) -> ChronicleOut:
    return ChronicleOut(
        id=row.id,
        title=row.title,
        description=row.description,
        metadata=row.metadata,
        embedding_model=row.embedding_model,
        event_count=row.last_sequence,  # sequences are gap-free from 1
        last_sequence=row.last_sequence,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _event_out(event: StoredEvent) -> EventOut:
    return EventOut(
        id=event.id,
        chronicle_id=event.chronicle_id,
        sequence=event.sequence,
        external_id=event.external_id,
        kind=event.kind,
        summary=event.summary,
        actors=[ActorOut(name=a["name"], role=a.get("role")) for a in event.actors],
        location=event.location,
        effects=event.effects,
        occurred_at=event.occurred_at,
        recorded_at=event.recorded_at,
        tags=event.tags,
        importance=event.importance,
    )


class ChronicleController(Controller):
    path = "/api/chronicles"
    tags = ["chronicles"]  # noqa: RUF012 - Litestar reads these as class attributes

    @post("/", summary="Create a chronicle")
    async def create_one(
        self, data: JSONBody[ChronicleCreate], services: ServicesDep, tenant_id: TenantId
    ) -> ChronicleOut:
        async with translate_database_errors(), services.engine.begin() as conn:
            row = await create_chronicle(
                conn,
                tenant_id,
                title=data.title,
                description=data.description,
                metadata=data.metadata,
                embedding_model=services.embedder.model_id,
            )
        return _chronicle_out(row)

    @get("/", summary="List the caller's chronicles")
    async def list_page(
        self,
        services: ServicesDep,
        tenant_id: TenantId,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=1000)] = None,
    ) -> ChroniclePage:
        after = None
        if cursor is not None:
            position = decode_cursor(cursor, _ChronicleCursor)
            after = (position.t, position.id)
        async with translate_database_errors(), services.engine.connect() as conn:
            rows = await list_chronicles(conn, tenant_id, limit=limit + 1, after=after)
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = encode_cursor({"t": page[-1].created_at.isoformat(), "id": str(page[-1].id)})
        return ChroniclePage(items=[_chronicle_out(r) for r in page], next_cursor=next_cursor)

    @get("/{chronicle_id:uuid}", summary="Get a chronicle")
    async def read(
        self, chronicle_id: FromPath[uuid.UUID], services: ServicesDep, tenant_id: TenantId
    ) -> ChronicleOut:
        async with translate_database_errors(), services.engine.connect() as conn:
            row = await get_chronicle(conn, tenant_id, chronicle_id)
        if row is None:
            raise not_found("chronicle", chronicle_id)
        return _chronicle_out(row)

    @post(
        "/{chronicle_id:uuid}/events",
        summary="Append a batch of 1..1000 events",
        description=(
            "Atomic: either every event is stored or none is. Results come back in input order; an "
            "`external_id` seen before returns the original event with `duplicate: true`, and "
            "`content_differs: true` when the event posted again does not say what the stored one "
            "says (the stored one is kept; nothing is overwritten)."
        ),
        status_code=200,
    )
    async def append_batch(
        self,
        chronicle_id: FromPath[uuid.UUID],
        data: JSONBody[EventBatchIn],
        services: ServicesDep,
        tenant_id: TenantId,
    ) -> IngestResponse:
        refused = refused_component_values(data.events)
        if refused:
            raise invalid_events(refused)
        async with translate_database_errors():
            results = await ingest_batch(
                services.engine, services.embed, tenant_id, chronicle_id, data.events
            )
        if results is None:
            raise not_found("chronicle", chronicle_id)
        return IngestResponse(
            events=[
                IngestResultOut(r.id, r.sequence, r.external_id, r.duplicate, r.content_differs)
                for r in results
            ]
        )

    @get("/{chronicle_id:uuid}/events", summary="Page through events in sequence order")
    async def event_page(
        self,
        chronicle_id: FromPath[uuid.UUID],
        services: ServicesDep,
        tenant_id: TenantId,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 100,
        cursor: Annotated[str | None, QueryParameter(max_length=1000)] = None,
        actor: Annotated[str | None, QueryParameter(max_length=200)] = None,
        kind: Annotated[str | None, QueryParameter(max_length=100)] = None,
        from_sequence: Annotated[int | None, QueryParameter(ge=0, le=MAX_SEQUENCE)] = None,
        to_sequence: Annotated[int | None, QueryParameter(ge=0, le=MAX_SEQUENCE)] = None,
        occurred_after: FromQuery[dt.datetime | None] = None,
        occurred_before: FromQuery[dt.datetime | None] = None,
    ) -> EventPage:
        if from_sequence is not None and to_sequence is not None and from_sequence > to_sequence:
            raise bad_parameter("from_sequence", "must not be greater than to_sequence")
        after = decode_cursor(cursor, _EventCursor).s if cursor is not None else 0
        filters = EventFilters(
            actor=actor,
            actor_names=await _names_and_id(services, tenant_id, chronicle_id, actor) if actor else (),
            kind=kind,
            from_sequence=from_sequence,
            to_sequence=to_sequence,
            occurred_after=occurred_after,
            occurred_before=occurred_before,
        )
        async with translate_database_errors(), services.engine.connect() as conn:
            if await get_chronicle(conn, tenant_id, chronicle_id) is None:
                raise not_found("chronicle", chronicle_id)
            rows = await list_events(
                conn, tenant_id, chronicle_id, filters, after_sequence=after, limit=limit + 1
            )
        page = rows[:limit]
        next_cursor = encode_cursor({"s": page[-1].sequence}) if len(rows) > limit else None
        return EventPage(items=[_event_out(e) for e in page], next_cursor=next_cursor)


def refused_component_values(events: Sequence[EventIn]) -> list[FieldError]:
    """Values a registered component would refuse (``health: "very"``): the reducer would skip
    the effect, and the client would never know, so the batch is refused whole instead."""
    return [
        FieldError(field=f"events[{index}].{field}", message=reason, index=index)
        for index, event in enumerate(events)
        for field, reason in refused_values(event.effects)
    ]


async def _names_and_id(
    services: Services, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, ref: str
) -> tuple[str, ...]:
    """The name, aliases and id of the entity ``ref`` denotes (ECS): events name a character by any
    of them ("the Grey Heron" for Wren). Nothing with ECS unavailable: the listing then matches
    ``ref`` as written, which is what the chronicle alone can do. The lookup goes through the ECS
    breaker, so that with ECS down a listing neither waits for it nor keeps probing it, and is
    skipped while ECS enrichment is switched off."""

    async def lookup() -> EntityCore | None:
        async with services.ecs_engine.connect() as conn:
            found = await find_entity(conn, tenant_id, chronicle_id, ref)
            return await get_entity_core(conn, tenant_id, found.id) if found is not None else None

    if not await services.flags.get("ecs_enrichment"):
        return ()
    try:
        core = await services.breaker.call(lookup, timeout=services.settings.ecs_timeout_ms / 1000)
    except Exception as error:
        if not is_ecs_failure(error):
            raise
        return ()
    # And its id: a client may name an actor by the id it read from the entity endpoints.
    return () if core is None else (core.name, *core.aliases, str(core.id))
