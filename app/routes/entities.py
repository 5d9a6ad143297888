"""Entities, their relationships and their history: reads over the projected ECS state.

Current-state reads come from the ECS tables (an entity's own state through the Redis entity
cache); ``as_of_sequence`` reads replay the chronicle's events up to that sequence instead.
Timelines and interactions come from the chronicle's event log.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec
from litestar import Controller, get
from litestar.params import FromPath, QueryParameter

from app.database import translate_database_errors
from app.dependencies import ServicesDep, TenantId
from app.errors import FieldError, ProblemError, bad_parameter, invalid_parameter, not_found
from app.pagination import MAX_SEQUENCE, decode_cursor, encode_cursor
from app.schemas import ActorOut, EventOut, EventPage
from app.services import Services
from ecs.criteria import FieldComparison, ValenceBound, parse_comparison, parse_valence
from ecs.queries import (
    EntityCore,
    EntityFilters,
    EntityNode,
    EntityRef,
    EntitySummary,
    EntityView,
    GraphEdge,
    GraphFilters,
    HolderChange,
    Interactant,
    InteractionEvent,
    build_interactions,
    cite_relationship_views,
    complete_view,
    entity_event_keys,
    entity_view_from_state,
    event_headlines,
    event_references,
    events_involving,
    find_entity,
    get_entity_core,
    list_entities,
    list_entities_from_state,
    relationship_graph,
    resolve_references,
    state_as_of,
    valence_history,
)
from rag.events import normalize_name
from rag.store import StoredEvent, get_chronicle

__all__ = ["EntityController"]

MAX_PAGE = 500
MAX_FILTERS = 20

Criteria = Annotated[list[str] | None, QueryParameter(max_items=MAX_FILTERS)]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)]
Cursor = Annotated[str | None, QueryParameter(max_length=1000)]
AsOf = Annotated[
    int | None,
    QueryParameter(
        ge=0,
        le=MAX_SEQUENCE,
        description="Read the state right after this event sequence, replayed from the chronicle.",
    ),
]


class EntityPage(msgspec.Struct, frozen=True):
    items: list[EntitySummary]
    next_cursor: str | None
    as_of_sequence: int | None = None


class RelationshipGraphPage(msgspec.Struct, frozen=True):
    nodes: list[EntityNode]
    edges: list[GraphEdge]
    next_cursor: str | None


class ValenceChangeOut(msgspec.Struct, frozen=True):
    event_id: uuid.UUID
    sequence: int
    dimension: str
    previous: float | None
    delta: float
    value: float
    event_kind: str | None
    event_summary: str | None


class RelationshipHistory(msgspec.Struct, frozen=True, rename={"from_": "from"}):
    from_: EntityRef
    to: EntityRef
    valence: dict[str, float]
    """The current value of each dimension (after the last change)."""
    history: list[ValenceChangeOut]


class InteractionsPage(msgspec.Struct, frozen=True):
    entity: EntityRef
    events: list[InteractionEvent]
    interactants: list[Interactant]
    """Everyone who took part with the entity in this page's events, by first appearance."""
    holders: list[HolderChange]
    """Who held the entity, in order, as this page's events state it (transfers and the like)."""
    next_cursor: str | None


class _EntityCursor(msgspec.Struct, frozen=True):
    s: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQUENCE)]
    id: uuid.UUID


class _EdgeCursor(msgspec.Struct, frozen=True):
    s: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQUENCE)]
    f: uuid.UUID
    t: uuid.UUID


class _SequenceCursor(msgspec.Struct, frozen=True):
    s: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQUENCE)]


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


def _comparisons(values: list[str] | None) -> tuple[FieldComparison, ...]:
    try:
        return tuple(parse_comparison(v) for v in values or [])
    except ValueError as error:
        raise bad_parameter("where", str(error)) from None


def _valence_bounds(values: list[str] | None) -> tuple[ValenceBound, ...]:
    try:
        return tuple(parse_valence(v) for v in values or [])
    except ValueError as error:
        raise bad_parameter("valence", str(error)) from None


def _names(values: list[str] | None, field: str) -> tuple[str, ...]:
    names = []
    for value in values or []:
        name = normalize_name(value)
        if not name or len(name) > 100:
            raise bad_parameter(field, f"{value[:50]!r} is not a valid name (1 to 100 characters)")
        names.append(name)
    return tuple(names)


async def _require_chronicle(
    services: Services,
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    *,
    current: bool = False,
    as_of_sequence: int | None = None,
) -> None:
    """404 unless the tenant has this chronicle; `current`: the caller reads the present state, so
    events appended just before must be projected first. An `as_of_sequence` after the last event
    is a 422, as in context requests: that past has not happened yet."""
    async with translate_database_errors(), services.engine.connect() as conn:
        chronicle = await get_chronicle(conn, tenant_id, chronicle_id)
    if chronicle is None:
        raise not_found("chronicle", chronicle_id)
    if as_of_sequence is not None and as_of_sequence > chronicle.last_sequence:
        raise invalid_parameter(
            "as_of_sequence",
            f"{as_of_sequence} is after the chronicle's last event (#{chronicle.last_sequence})",
        )
    if current:
        async with translate_database_errors():
            await services.ensure_projected(chronicle_id, chronicle.last_sequence)


def _without_ended(view: EntityView) -> EntityView:
    """An ended relationship (every type removed, no valence) is not listed, as in the graph and
    the filters; context bundles show it as ended, cited with the event that ended it."""
    ongoing = [r for r in view.relationships if r.types or r.valence]
    return msgspec.structs.replace(view, relationships=ongoing)


def _unknown_end(field: str, ref: str) -> ProblemError:
    message = f"no entity {ref!r} in this chronicle"
    return ProblemError(
        404, "Not found", f"{field}: {message}", problem_type="not-found",
        errors=[FieldError(field=field, message=message)],
    )  # fmt: skip


async def _resolve(
    services: Services, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, ref: str | None, field: str
) -> uuid.UUID | None:
    """A reference given as a filter: unknown is a 400 naming the parameter."""
    if ref is None:
        return None
    async with translate_database_errors(), services.ecs_engine.connect() as conn:
        found = await find_entity(conn, tenant_id, chronicle_id, ref)
    if found is None:
        raise bad_parameter(field, f"no entity {ref!r} in this chronicle")
    return found.id


async def _entity_core(services: Services, tenant_id: uuid.UUID, entity_id: uuid.UUID) -> EntityCore:
    """The entity's own state (through the cache); another tenant's entity is a 404."""
    cache = getattr(services, "cache", None)
    core: EntityCore | None
    async with translate_database_errors():
        if cache is not None:
            core = await cache.get(tenant_id, entity_id)
        else:
            async with services.ecs_engine.connect() as conn:
                core = await get_entity_core(conn, tenant_id, entity_id)
    if core is None:
        raise not_found("entity", entity_id)
    return core


class EntityController(Controller):
    path = "/api"
    tags = ["entities"]  # noqa: RUF012 - Litestar reads these as class attributes

    @get(
        "/chronicles/{chronicle_id:uuid}/entities",
        summary="List and filter a chronicle's entities",
        description=(
            "Every filter given must hold. `where` compares a component field "
            '(`health.hp<10`, `status.value=dead`, `oath.task="deliver the Salt Ledger"`; '
            "operators `= != < <= > >=`); `has` requires a component; `related_to` (id or name) "
            "requires a relationship with that entity, in `direction` (`outgoing`: from the listed "
            "entity, the default; `incoming`; `any`), optionally of type `relation` and with "
            "valence bounds such as `valence=trust>0.5` (which also work without `related_to`). "
            "`location` (id or name) follows holder chains: items are where their holder is."
        ),
    )
    async def list_page(
        self,
        chronicle_id: FromPath[uuid.UUID],
        services: ServicesDep,
        tenant_id: TenantId,
        kind: Annotated[str | None, QueryParameter(max_length=100)] = None,
        location: Annotated[str | None, QueryParameter(max_length=200)] = None,
        status: Annotated[str | None, QueryParameter(max_length=100)] = None,
        has: Criteria = None,
        where: Criteria = None,
        related_to: Annotated[str | None, QueryParameter(max_length=200)] = None,
        relation: Annotated[str | None, QueryParameter(max_length=100)] = None,
        valence: Criteria = None,
        direction: Annotated[
            Literal["outgoing", "incoming", "any"], QueryParameter(description="of `related_to`")
        ] = "outgoing",
        as_of_sequence: AsOf = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> EntityPage:
        comparisons = _comparisons(where)
        bounds = _valence_bounds(valence)
        has_names = _names(has, "has")
        relation_name = _names([relation], "relation")[0] if relation is not None else None
        after = None
        if cursor is not None:
            position = decode_cursor(cursor, _EntityCursor)
            after = (position.s, position.id)
        await _require_chronicle(
            services, tenant_id, chronicle_id, current=as_of_sequence is None, as_of_sequence=as_of_sequence
        )
        filters = EntityFilters(
            kind=kind,
            location_id=await _resolve(services, tenant_id, chronicle_id, location, "location"),
            status=status,
            has=has_names,
            where=comparisons,
            related_to=await _resolve(services, tenant_id, chronicle_id, related_to, "related_to"),
            relation=relation_name,
            valence=bounds,
            direction=direction,
        )
        if as_of_sequence is None:
            async with translate_database_errors(), services.ecs_engine.connect() as conn:
                rows = await list_entities(
                    conn, tenant_id, chronicle_id, filters, after=after, limit=limit + 1
                )
        else:
            async with translate_database_errors(), services.engine.connect() as conn:
                state = await state_as_of(conn, tenant_id, chronicle_id, as_of_sequence)
            rows = list_entities_from_state(state, filters, after=after, limit=limit + 1)
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = encode_cursor({"s": page[-1].created_sequence, "id": str(page[-1].id)})
        return EntityPage(items=page, next_cursor=next_cursor, as_of_sequence=as_of_sequence)

    @get(
        "/entities/{entity_id:uuid}",
        summary="Get an entity: components, location, inventory, relationships",
    )
    async def read(
        self,
        entity_id: FromPath[uuid.UUID],
        services: ServicesDep,
        tenant_id: TenantId,
        as_of_sequence: AsOf = None,
    ) -> EntityView:
        core = await _entity_core(services, tenant_id, entity_id)
        if as_of_sequence is None:
            async with translate_database_errors(), services.ecs_engine.connect() as conn:
                view: EntityView | None = await complete_view(conn, core)
        else:
            await _require_chronicle(services, tenant_id, core.chronicle_id, as_of_sequence=as_of_sequence)
            async with translate_database_errors(), services.engine.connect() as conn:
                state = await state_as_of(conn, tenant_id, core.chronicle_id, as_of_sequence)
            view = entity_view_from_state(state, entity_id)
        if view is None:
            raise ProblemError(
                404, "Not found", f"entity {entity_id} did not exist yet at sequence {as_of_sequence}",
                problem_type="not-found",
            )  # fmt: skip
        # An ended relationship (every type removed, no valence) is not listed here, as in the
        # graph; context bundles show it as ended.
        view = msgspec.structs.replace(
            view, relationships=[r for r in view.relationships if r.types or r.valence]
        )
        async with translate_database_errors(), services.engine.connect() as conn:
            return await cite_relationship_views(conn, tenant_id, core.chronicle_id, _without_ended(view))

    @get(
        "/entities/{entity_id:uuid}/timeline",
        summary="The chronicle events that involve an entity, in order",
        description="Events naming the entity (by name, alias or id) as actor, location or in an effect.",
    )
    async def timeline(
        self,
        entity_id: FromPath[uuid.UUID],
        services: ServicesDep,
        tenant_id: TenantId,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> EventPage:
        after = decode_cursor(cursor, _SequenceCursor).s if cursor is not None else 0
        core = await _entity_core(services, tenant_id, entity_id)
        keys = entity_event_keys(core.name, core.aliases, core.id)
        async with translate_database_errors(), services.engine.connect() as conn:
            rows = await events_involving(
                conn, tenant_id, core.chronicle_id, keys, after_sequence=after, limit=limit + 1
            )
        page = rows[:limit]
        next_cursor = encode_cursor({"s": page[-1].sequence}) if len(rows) > limit else None
        return EventPage(items=[_event_out(e) for e in page], next_cursor=next_cursor)

    @get(
        "/entities/{entity_id:uuid}/interactions",
        summary="Who interacted with an entity or item, and in which events",
        description=(
            "For each event involving the entity: the other entities taking part and how (actor "
            "roles, effect roles such as `transfer:to`). `interactants` aggregates them; `holders` "
            "lists who held it, in order. Paged by events; aggregates cover the page."
        ),
    )
    async def interactions(
        self,
        entity_id: FromPath[uuid.UUID],
        services: ServicesDep,
        tenant_id: TenantId,
        limit: Limit = 200,
        cursor: Cursor = None,
    ) -> InteractionsPage:
        after = decode_cursor(cursor, _SequenceCursor).s if cursor is not None else 0
        core = await _entity_core(services, tenant_id, entity_id)
        keys = entity_event_keys(core.name, core.aliases, core.id)
        async with translate_database_errors(), services.engine.connect() as conn:
            rows = await events_involving(
                conn, tenant_id, core.chronicle_id, keys, after_sequence=after, limit=limit + 1
            )
        page = rows[:limit]
        async with translate_database_errors(), services.ecs_engine.connect() as conn:
            refs = await resolve_references(conn, tenant_id, core.chronicle_id, event_references(page))
        result = build_interactions(EntityRef(core.id, core.name), page, refs)
        return InteractionsPage(
            entity=EntityRef(core.id, core.name),
            events=result.events,
            interactants=result.interactants,
            holders=result.holders,
            next_cursor=encode_cursor({"s": page[-1].sequence}) if len(rows) > limit else None,
        )

    @get(
        "/chronicles/{chronicle_id:uuid}/relationships",
        summary="The relationship graph: nodes and directed edges",
        description=(
            "Filters: `type` (any of the given relation types), `entity` (id or name; edges from or "
            "to it), `valence` bounds such as `trust>0.5` (all must hold). Paged by edges; `nodes` "
            "are the entities the page's edges connect."
        ),
    )
    async def graph(
        self,
        chronicle_id: FromPath[uuid.UUID],
        services: ServicesDep,
        tenant_id: TenantId,
        type: Criteria = None,
        entity: Annotated[str | None, QueryParameter(max_length=200)] = None,
        valence: Criteria = None,
        limit: Limit = 200,
        cursor: Cursor = None,
    ) -> RelationshipGraphPage:
        types = _names(type, "type")
        bounds = _valence_bounds(valence)
        after = None
        if cursor is not None:
            position = decode_cursor(cursor, _EdgeCursor)
            after = (position.s, position.f, position.t)
        await _require_chronicle(services, tenant_id, chronicle_id, current=True)
        filters = GraphFilters(
            types=types,
            entity_id=await _resolve(services, tenant_id, chronicle_id, entity, "entity"),
            valence=bounds,
        )
        async with translate_database_errors(), services.ecs_engine.connect() as conn:
            graph = await relationship_graph(
                conn, tenant_id, chronicle_id, filters, after=after, limit=limit + 1
            )
        edges = graph.edges[:limit]
        nodes = graph.nodes
        next_cursor = None
        if len(graph.edges) > limit:
            last = edges[-1]
            next_cursor = encode_cursor(
                {"s": last.created_sequence, "f": str(last.from_id), "t": str(last.to_id)}
            )
            used = {e.from_id for e in edges} | {e.to_id for e in edges}
            nodes = [n for n in nodes if n.id in used]
        return RelationshipGraphPage(nodes=nodes, edges=edges, next_cursor=next_cursor)

    @get(
        "/chronicles/{chronicle_id:uuid}/relationships/{a:str}/{b:str}/history",
        summary="Valence from one entity to another over time, with the events that changed it",
        description="`a` and `b` are entity ids or names (or aliases); the relationship is a -> b.",
    )
    async def history(
        self,
        chronicle_id: FromPath[uuid.UUID],
        a: FromPath[str],
        b: FromPath[str],
        services: ServicesDep,
        tenant_id: TenantId,
        dimension: Annotated[str | None, QueryParameter(max_length=100)] = None,
    ) -> RelationshipHistory:
        # Read-your-writes, like the other current-state reads: a change posted just before is in.
        await _require_chronicle(services, tenant_id, chronicle_id, current=True)
        async with translate_database_errors(), services.ecs_engine.connect() as conn:
            source = await find_entity(conn, tenant_id, chronicle_id, a)
            if source is None:
                raise _unknown_end("a", a)
            target = await find_entity(conn, tenant_id, chronicle_id, b)
            if target is None:
                raise _unknown_end("b", b)
            points = await valence_history(conn, tenant_id, chronicle_id, source.id, target.id, dimension)
        async with translate_database_errors(), services.engine.connect() as conn:
            headlines = await event_headlines(conn, tenant_id, chronicle_id, [p.event_id for p in points])
        current: dict[str, float] = {}
        changes = []
        for point in points:
            current[point.dimension] = point.value
            headline = headlines.get(point.event_id)
            changes.append(
                ValenceChangeOut(
                    event_id=point.event_id,
                    sequence=point.sequence,
                    dimension=point.dimension,
                    previous=point.previous,
                    delta=point.delta,
                    value=point.value,
                    event_kind=None if headline is None else headline.kind,
                    event_summary=None if headline is None else headline.summary,
                )
            )
        return RelationshipHistory(from_=source, to=target, valence=current, history=changes)
