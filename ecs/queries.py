"""Typed reads of the ECS read model (and point-in-time views replayed from the chronicle).

Every function takes an open connection, never commits, and is scoped by tenant (and chronicle).
Two sources build the same :class:`EntityView`:

* :func:`get_entity_view` reads the projected tables (``ecs_entities`` / ``ecs_components`` /
  ``ecs_relationships``) - the current state;
* :func:`entity_view_from_state` reads a reducer :class:`~ecs.reducer.WorldState`, e.g. one
  replayed up to a sequence (:func:`state_as_of`) for ``as_of_sequence`` reads.

For the current state the two are equal field for field (a test holds them to it). An entity's
view splits into its *own* data (:class:`EntityCore`: name, kind, aliases, components, versioned
by ``updated_sequence``), which the entity cache keeps, and what is *derived* from other entities'
rows at read time (:func:`complete_view`): the location through the holder chain, the names of
the place and holder, the inventory (items whose holder is the entity) and the relationships.

Chronicle-database reads (the timeline, event headlines, replay) take a connection to the
chronicle database, which may be a different database from the ECS one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import msgspec
from sqlalchemy import (
    and_,
    bindparam,
    exists,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from ecs.components import Holder, Position
from ecs.criteria import FieldComparison, ValenceBound
from ecs.projector import StoryTimeState, replay_stored, replay_to_story_time
from ecs.reducer import Entity, Relationship, WorldState, inventory, location_of
from ecs.schema import ecs_components, ecs_entities, ecs_relationships, ecs_valence_history
from rag.events import (
    AliasEffect,
    DestroyEffect,
    Effect,
    MoveEffect,
    RelateEffect,
    SetEffect,
    SpawnEffect,
    StatusEffect,
    TransferEffect,
    UnrelateEffect,
    UnsetEffect,
    ValenceEffect,
    normalize_name,
)
from rag.schema import chronicle_events
from rag.store import EVENT_COLUMNS, EventFilters, StoredEvent, event_ids_at, list_events

__all__ = [
    "Direction",
    "EntityCore",
    "EntityFilters",
    "EntityNode",
    "EntityRef",
    "EntitySummary",
    "EntityView",
    "EventHeadline",
    "GraphEdge",
    "GraphFilters",
    "HolderChange",
    "Interactant",
    "InteractionEvent",
    "Interactions",
    "Participant",
    "RelationType",
    "RelationshipGraph",
    "RelationshipView",
    "ValencePoint",
    "build_interactions",
    "complete_view",
    "complete_views",
    "entity_event_keys",
    "entity_view_from_state",
    "event_headlines",
    "event_references",
    "events_involving",
    "find_entity",
    "get_entity_core",
    "get_entity_view",
    "latest_event",
    "list_entities",
    "list_entities_from_state",
    "relationship_graph",
    "resolve_references",
    "state_as_of",
    "valence_history",
]

MAX_HOLDER_CHAIN: Final = 64
REPLAY_PAGE: Final = 5_000

Direction = Literal["outgoing", "incoming", "any"]


# ----------------------------------------------------------------------------------------------
# Views


class EntityRef(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str


class EntityNode(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    kind: str


class RelationType(msgspec.Struct, frozen=True):
    type: str
    data: dict[str, Any] | None
    created_sequence: int
    updated_sequence: int


class ValenceSource(msgspec.Struct, frozen=True):
    """The event that last changed one valence dimension of a relationship."""

    sequence: int
    event_id: uuid.UUID


class RelationshipView(msgspec.Struct, frozen=True):
    """One directed relationship record seen from an entity: ``outgoing`` is entity -> other."""

    direction: Literal["outgoing", "incoming"]
    other: EntityRef
    types: list[RelationType]
    valence: dict[str, float]
    created_sequence: int
    updated_sequence: int
    event_id: uuid.UUID | None = None
    """The event of ``updated_sequence``: the latest change, a relation type set or removed or a
    valence (the entity endpoint fills it in with ``cite_relationship_views``)."""
    valence_sources: dict[str, ValenceSource] = {}
    """Per valence dimension, the event that last changed it."""


class EntityCore(msgspec.Struct, frozen=True):
    """An entity's own data, versioned by ``updated_sequence``: what the entity cache keeps."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    chronicle_id: uuid.UUID
    name: str
    kind: str
    aliases: list[str]
    archetype: list[str]
    components: dict[str, Any]
    created_sequence: int
    updated_sequence: int
    created_event_id: uuid.UUID
    updated_event_id: uuid.UUID


class EntityView(msgspec.Struct, frozen=True):
    """Everything about one entity: its components plus where it is, what it holds, who it knows."""

    id: uuid.UUID
    chronicle_id: uuid.UUID
    name: str
    kind: str
    aliases: list[str]
    archetype: list[str]
    components: dict[str, Any]
    status: str | None
    location: EntityRef | None
    """Its own position, or - when held - its holder's place, transitively (``location_of``)."""
    holder: EntityRef | None
    inventory: list[EntityRef]
    relationships: list[RelationshipView]
    created_sequence: int
    updated_sequence: int
    created_event_id: uuid.UUID
    updated_event_id: uuid.UUID
    carried_by: list[EntityRef] = []
    """Who carries the holder, and so on up (a drive in a case that Mara carries: ``holder`` is
    the case, ``carried_by`` Mara); the last one's position is the ``location``."""


class EntitySummary(msgspec.Struct, frozen=True):
    id: uuid.UUID
    name: str
    kind: str
    aliases: list[str]
    archetype: list[str]
    status: str | None
    created_sequence: int
    updated_sequence: int


class EntityFilters(msgspec.Struct, frozen=True):
    """Filters of an entity listing; all given ones must hold. References are resolved ids."""

    kind: str | None = None
    location_id: uuid.UUID | None = None
    status: str | None = None
    has: tuple[str, ...] = ()
    where: tuple[FieldComparison, ...] = ()
    related_to: uuid.UUID | None = None
    relation: str | None = None
    valence: tuple[ValenceBound, ...] = ()
    direction: Direction = "outgoing"

    @property
    def wants_relationship(self) -> bool:
        return self.related_to is not None or self.relation is not None or bool(self.valence)


class GraphFilters(msgspec.Struct, frozen=True):
    types: tuple[str, ...] = ()
    """Any of these relation types (normalized)."""
    entity_id: uuid.UUID | None = None
    """Edges from or to this entity."""
    valence: tuple[ValenceBound, ...] = ()


class GraphEdge(msgspec.Struct, frozen=True):
    from_id: uuid.UUID
    to_id: uuid.UUID
    types: list[RelationType]
    valence: dict[str, float]
    created_sequence: int
    updated_sequence: int


class RelationshipGraph(msgspec.Struct, frozen=True):
    nodes: list[EntityNode]
    edges: list[GraphEdge]


class EventHeadline(msgspec.Struct, frozen=True):
    id: uuid.UUID
    sequence: int
    kind: str
    summary: str


class ValencePoint(msgspec.Struct, frozen=True):
    event_id: uuid.UUID
    sequence: int
    dimension: str
    previous: float | None
    delta: float
    value: float


class Participant(msgspec.Struct, frozen=True):
    entity: EntityRef
    roles: list[str]
    """How it took part: ``actor[:role]``, ``location``, or ``<op>[:<field>]`` of an effect."""


class InteractionEvent(msgspec.Struct, frozen=True):
    event_id: uuid.UUID
    sequence: int
    kind: str
    summary: str
    roles: list[str]
    """How the entity itself took part."""
    participants: list[Participant]


class Interactant(msgspec.Struct, frozen=True):
    entity: EntityRef
    event_ids: list[uuid.UUID]
    first_sequence: int
    last_sequence: int


class HolderChange(msgspec.Struct, frozen=True):
    event_id: uuid.UUID
    sequence: int
    holder: EntityRef | None
    """The new holder; ``None`` when the entity was put down (moved or un-held)."""


class Interactions(msgspec.Struct, frozen=True):
    events: list[InteractionEvent]
    interactants: list[Interactant]
    holders: list[HolderChange]


# ----------------------------------------------------------------------------------------------
# Helpers shared by both sources


def _status_of(components: Mapping[str, Any]) -> str | None:
    status = components.get("status")
    value = status.get("value") if isinstance(status, dict) else None
    return value if isinstance(value, str) else None


def _ref_field(components: Mapping[str, Any], component: str, field: str) -> uuid.UUID | None:
    value = components.get(component)
    raw = value.get(field) if isinstance(value, dict) else None
    if not isinstance(raw, str):
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def latest_event(provenance: Mapping[str, Any]) -> uuid.UUID | None:
    """The event of the newest entry of a relationship's provenance (``{dimension: [sequence,
    event_id]}``, as stored), so that a valence is cited like every other fact."""
    entries = [(int(sequence), str(event_id)) for sequence, event_id in provenance.values() if event_id]
    return uuid.UUID(max(entries)[1]) if entries else None


def valence_sources(provenance: Mapping[str, Any]) -> dict[str, ValenceSource]:
    """Per dimension, the event that last changed it, from a stored provenance (see
    ``latest_event``); dimensions are in name order, like the valences beside them."""
    return {
        str(dimension): ValenceSource(int(sequence), uuid.UUID(str(event_id)))
        for dimension, (sequence, event_id) in sorted(provenance.items())
        if event_id
    }


def _relation_types(raw: Mapping[str, Any]) -> list[RelationType]:
    types = []
    for name in sorted(raw):
        record = raw[name]
        types.append(
            RelationType(
                type=name,
                data=record.get("data"),
                created_sequence=int(record["created_sequence"]),
                updated_sequence=int(record["updated_sequence"]),
            )
        )
    return types


def _sorted_relationships(items: Iterable[RelationshipView]) -> list[RelationshipView]:
    return sorted(items, key=lambda r: (r.direction != "outgoing", r.created_sequence, r.other.id.int))


# ----------------------------------------------------------------------------------------------
# One entity, from the tables


_CORE_COLUMNS = (
    ecs_entities.c.id,
    ecs_entities.c.tenant_id,
    ecs_entities.c.chronicle_id,
    ecs_entities.c.name,
    ecs_entities.c.kind,
    ecs_entities.c.aliases,
    ecs_entities.c.archetype,
    ecs_entities.c.created_sequence,
    ecs_entities.c.updated_sequence,
    ecs_entities.c.created_event_id,
    ecs_entities.c.updated_event_id,
)


async def get_entity_core(
    conn: AsyncConnection, tenant_id: uuid.UUID, entity_id: uuid.UUID
) -> EntityCore | None:
    """The entity's own row and components, read in ONE statement (one consistent snapshot)."""
    components = ecs_components.alias("c")
    # (type, data) pairs as one JSON array, turned into a dict here.
    aggregated = (
        select(
            func.coalesce(
                func.jsonb_agg(func.jsonb_build_array(components.c.type, components.c.data)),
                func.jsonb_build_array(),
            )
        )
        .where(components.c.entity_id == ecs_entities.c.id)
        .scalar_subquery()
    )
    row = (
        await conn.execute(
            select(*_CORE_COLUMNS, aggregated.label("components")).where(
                ecs_entities.c.id == entity_id, ecs_entities.c.tenant_id == tenant_id
            )
        )
    ).first()
    if row is None:
        return None
    values = dict(row._mapping)
    values["components"] = {str(name): data for name, data in values["components"] or []}
    values["aliases"] = list(values["aliases"])
    values["archetype"] = list(values["archetype"])
    return EntityCore(**values)


# The statements of complete_views() are built once, with bound parameters: building a Core
# statement and its cache key costs more CPU than executing it, on every context request.
_NAMES: Final = select(ecs_entities.c.id, ecs_entities.c.name).where(
    ecs_entities.c.chronicle_id == bindparam("chronicle_id"),
    ecs_entities.c.id.in_(bindparam("ids", expanding=True)),
)
_position_c = ecs_components.alias("pos")
_holder_c = ecs_components.alias("hold")
_HOLDER_LINKS: Final = (
    select(ecs_entities.c.id, ecs_entities.c.kind, _position_c.c.location_id, _holder_c.c.holder_id)
    .select_from(
        ecs_entities.outerjoin(
            _position_c, and_(_position_c.c.entity_id == ecs_entities.c.id, _position_c.c.type == "position")
        ).outerjoin(_holder_c, and_(_holder_c.c.entity_id == ecs_entities.c.id, _holder_c.c.type == "holder"))
    )
    .where(
        ecs_entities.c.id.in_(bindparam("ids", expanding=True)),
        ecs_entities.c.chronicle_id == bindparam("chronicle_id"),
    )
)
_INVENTORIES: Final = (
    select(ecs_components.c.holder_id, ecs_entities.c.id, ecs_entities.c.name)
    .select_from(ecs_components.join(ecs_entities, ecs_entities.c.id == ecs_components.c.entity_id))
    .where(
        ecs_components.c.chronicle_id == bindparam("chronicle_id"),
        ecs_components.c.type == "holder",
        ecs_components.c.holder_id.in_(bindparam("ids", expanding=True)),
    )
    .order_by(ecs_entities.c.created_sequence, ecs_entities.c.id)
)
_from_e = ecs_entities.alias("from_e")
_to_e = ecs_entities.alias("to_e")
# Both directions in one statement. The far end must exist (an inner join, as a per-direction
# query would have it: checked where the rows are read); the near end is the entity itself.
_HOLDS: Final = or_(
    ecs_relationships.c.types != literal_column("'{}'::jsonb"),
    ecs_relationships.c.valence != literal_column("'{}'::jsonb"),
)
"""A relationship record that still says something: every relation type removed and no valence
left (an unrelate) is no relationship for the graph, the filters and the entity view, though the
record stays for its history (a context bundle shows it as ended, cited with the event that ended
it: the answer to "are they still allies?")."""


def holds(record: Relationship) -> bool:
    """``_HOLDS`` for a reducer record."""
    return bool(record.types or record.valence)


def type_data(record: Relationship) -> dict[str, dict[str, Any]]:
    """What each relation type of a reducer record was set with, for the types that have data."""
    return {name: r.data for name, r in sorted(record.types.items()) if r.data is not None}


_RELATIONSHIPS: Final = (
    select(
        ecs_relationships.c.from_id,
        ecs_relationships.c.to_id,
        _from_e.c.name.label("from_name"),
        _to_e.c.name.label("to_name"),
        ecs_relationships.c.types,
        ecs_relationships.c.valence,
        ecs_relationships.c.created_sequence,
        ecs_relationships.c.updated_sequence,
        ecs_relationships.c.provenance,
    )
    .select_from(
        ecs_relationships.outerjoin(_from_e, _from_e.c.id == ecs_relationships.c.from_id).outerjoin(
            _to_e, _to_e.c.id == ecs_relationships.c.to_id
        )
    )
    .where(
        ecs_relationships.c.chronicle_id == bindparam("chronicle_id"),
        or_(
            ecs_relationships.c.from_id.in_(bindparam("ids", expanding=True)),
            ecs_relationships.c.to_id.in_(bindparam("ids", expanding=True)),
        ),
    )
)


async def _names(
    conn: AsyncConnection, chronicle_id: uuid.UUID, ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, str]:
    wanted = sorted(set(ids), key=lambda u: u.int)
    if not wanted:
        return {}
    rows = await conn.execute(_NAMES, {"chronicle_id": chronicle_id, "ids": wanted})
    return {row.id: row.name for row in rows}


async def _location_ids(
    conn: AsyncConnection, chronicle_id: uuid.UUID, cores: Sequence[EntityCore]
) -> tuple[dict[uuid.UUID, uuid.UUID | None], dict[uuid.UUID, list[uuid.UUID]]]:
    """``reducer.location_of`` over the tables for each core: own position, else up the holder
    chain. The chains are walked in lockstep, one statement per link for all of them together
    (usually one: an item held by someone who has a position), not one per link per entity.
    Also returns, per held core, the holders walked (its holder, the holder's holder, ...)."""
    located: dict[uuid.UUID, uuid.UUID | None] = {}
    chains: dict[uuid.UUID, list[uuid.UUID]] = {}
    # core id -> the entity to look at next (the entities seen on the way are in `chains`)
    walks: dict[uuid.UUID, uuid.UUID | None] = {}
    for core in cores:
        if "position" in core.components:
            located[core.id] = _ref_field(core.components, "position", "location")
        else:
            walks[core.id] = _ref_field(core.components, "holder", "holder")
            chains[core.id] = []
    while walks:
        step: dict[uuid.UUID, uuid.UUID] = {}
        for core_id, current in walks.items():
            chain = chains[core_id]
            if current is None or current == core_id or current in chain or len(chain) >= MAX_HOLDER_CHAIN:
                located[core_id] = None
                continue
            step[core_id] = current
        if not step:
            break
        wanted = sorted(set(step.values()), key=lambda u: u.int)
        rows = await conn.execute(_HOLDER_LINKS, {"chronicle_id": chronicle_id, "ids": wanted})
        links = {row.id: row for row in rows}
        following: dict[uuid.UUID, uuid.UUID | None] = {}
        for core_id, current in step.items():
            row = links.get(current)
            if row is None:
                located[core_id] = None
                continue
            if row.kind == "location":
                located[core_id] = current  # left at a place: the place is not a holder to carry it
                continue
            chains[core_id].append(current)
            if row.location_id is not None:
                located[core_id] = row.location_id
            else:
                following[core_id] = row.holder_id
        walks = following
    return located, chains


async def complete_view(conn: AsyncConnection, core: EntityCore) -> EntityView:
    """The full view of an entity from its own data plus what other rows say about it."""
    return (await complete_views(conn, [core]))[0]


async def complete_views(conn: AsyncConnection, cores: Sequence[EntityCore]) -> list[EntityView]:
    """:func:`complete_view` of several entities (in the order given) in a few statements for all
    of them together - a context request asks about several focus entities at once, and a round
    trip per query per entity was most of its cost."""
    views: dict[uuid.UUID, EntityView] = {}
    by_chronicle: dict[uuid.UUID, list[EntityCore]] = {}
    for core in cores:
        by_chronicle.setdefault(core.chronicle_id, []).append(core)
    for chronicle_id, group in by_chronicle.items():
        views.update(await _complete_chronicle_views(conn, chronicle_id, group))
    return [views[core.id] for core in cores]


async def _complete_chronicle_views(
    conn: AsyncConnection, chronicle_id: uuid.UUID, cores: Sequence[EntityCore]
) -> dict[uuid.UUID, EntityView]:
    ids = sorted({core.id for core in cores}, key=lambda u: u.int)
    locations, chains = await _location_ids(conn, chronicle_id, cores)

    items = await conn.execute(_INVENTORIES, {"chronicle_id": chronicle_id, "ids": ids})
    held: dict[uuid.UUID, list[EntityRef]] = {}
    for item in items:
        held.setdefault(item.holder_id, []).append(EntityRef(item.id, item.name))

    rows = await conn.execute(_RELATIONSHIPS, {"chronicle_id": chronicle_id, "ids": ids})
    relationships: dict[uuid.UUID, list[RelationshipView]] = {}
    wanted = set(ids)
    for row in rows:
        ends: tuple[tuple[Literal["outgoing", "incoming"], uuid.UUID, uuid.UUID, str | None], ...] = (
            ("outgoing", row.from_id, row.to_id, row.to_name),
            ("incoming", row.to_id, row.from_id, row.from_name),
        )
        for direction, mine, theirs, their_name in ends:
            if mine not in wanted or their_name is None:
                continue
            relationships.setdefault(mine, []).append(
                RelationshipView(
                    direction=direction,
                    other=EntityRef(theirs, their_name),
                    types=_relation_types(row.types),
                    valence={str(k): float(v) for k, v in row.valence.items()},
                    created_sequence=row.created_sequence,
                    updated_sequence=row.updated_sequence,
                    event_id=latest_event(row.provenance),
                    valence_sources=valence_sources(row.provenance),
                )
            )

    holders = {core.id: _ref_field(core.components, "holder", "holder") for core in cores}
    carriers = [i for chain in chains.values() for i in chain]
    names = await _names(
        conn, chronicle_id, [i for i in (*locations.values(), *holders.values(), *carriers) if i is not None]
    )
    views: dict[uuid.UUID, EntityView] = {}
    for core in cores:
        location_id, holder_id = locations[core.id], holders[core.id]
        views[core.id] = EntityView(
            id=core.id,
            chronicle_id=core.chronicle_id,
            name=core.name,
            kind=core.kind,
            aliases=list(core.aliases),
            archetype=list(core.archetype),
            components=dict(core.components),
            status=_status_of(core.components),
            location=None
            if location_id is None or location_id not in names
            else EntityRef(location_id, names[location_id]),
            holder=None
            if holder_id is None or holder_id not in names
            else EntityRef(holder_id, names[holder_id]),
            inventory=list(held.get(core.id, [])),
            relationships=_sorted_relationships(relationships.get(core.id, [])),
            created_sequence=core.created_sequence,
            updated_sequence=core.updated_sequence,
            created_event_id=core.created_event_id,
            updated_event_id=core.updated_event_id,
            carried_by=[EntityRef(i, names[i]) for i in chains.get(core.id, [])[1:] if i in names],
        )
    return views


async def get_entity_view(
    conn: AsyncConnection, tenant_id: uuid.UUID, entity_id: uuid.UUID
) -> EntityView | None:
    """The current view of an entity of this tenant, or None."""
    core = await get_entity_core(conn, tenant_id, entity_id)
    return None if core is None else await complete_view(conn, core)


# ----------------------------------------------------------------------------------------------
# One entity, from a reducer state


def _ref(state: WorldState, entity_id: str | None) -> EntityRef | None:
    if entity_id is None or entity_id not in state.entities:
        return None
    return EntityRef(uuid.UUID(entity_id), state.entities[entity_id].name)


def _relationship_view(
    state: WorldState, record: Relationship, direction: Literal["outgoing", "incoming"]
) -> RelationshipView | None:
    other = _ref(state, record.to_id if direction == "outgoing" else record.from_id)
    if other is None:
        return None
    return RelationshipView(
        direction=direction,
        other=other,
        types=_relation_types(msgspec.to_builtins(record.types)),
        valence={k: float(v) for k, v in record.valence.items()},
        created_sequence=record.created_sequence,
        updated_sequence=record.updated_sequence,
        event_id=latest_event(msgspec.to_builtins(record.provenance)),
        valence_sources=valence_sources(msgspec.to_builtins(record.provenance)),
    )


def entity_view_from_state(state: WorldState, entity_id: str | uuid.UUID) -> EntityView | None:
    """The same view as :func:`get_entity_view`, built from a reducer state (e.g. a replay)."""
    key = str(entity_id)
    entity = state.entities.get(key)
    if entity is None:
        return None
    components: dict[str, Any] = {
        name: msgspec.to_builtins(entity.components[name]) for name in entity.components
    }
    holder = entity.get(Holder)
    relationships = []
    for record in state.relationships.values():
        for direction, end in (("outgoing", record.from_id), ("incoming", record.to_id)):
            if end == key:
                view = _relationship_view(state, record, direction)  # type: ignore[arg-type]
                if view is not None:
                    relationships.append(view)
    return EntityView(
        id=uuid.UUID(entity.id),
        chronicle_id=uuid.UUID(state.chronicle_id),
        name=entity.name,
        kind=entity.kind,
        aliases=list(entity.aliases),
        archetype=list(entity.archetype),
        components=components,
        status=entity.status,
        location=_ref(state, location_of(state, key)),
        holder=None if holder is None else _ref(state, holder.holder),
        inventory=[EntityRef(uuid.UUID(e.id), e.name) for e in inventory(state, key)],
        relationships=_sorted_relationships(relationships),
        created_sequence=entity.created_sequence,
        updated_sequence=entity.updated_sequence,
        created_event_id=uuid.UUID(entity.created_event_id),
        updated_event_id=uuid.UUID(entity.updated_event_id),
        carried_by=[EntityRef(uuid.UUID(e.id), e.name) for e in holder_chain(state, key)[1:]],
    )


async def cite_relationship_views(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, view: EntityView
) -> EntityView:
    """The view with each relationship cited by the event of its ``updated_sequence`` (a relation
    type set or removed, or a valence), as context bundles cite it; ``conn`` reads the chronicle."""

    def uncited(r: RelationshipView) -> bool:
        return not any(s.sequence == r.updated_sequence for s in r.valence_sources.values())

    wanted = [r.updated_sequence for r in view.relationships if uncited(r)]
    if not wanted:
        return view
    event_of = await event_ids_at(conn, tenant_id, chronicle_id, wanted)
    return msgspec.structs.replace(view, relationships=[
        msgspec.structs.replace(r, event_id=event_of.get(r.updated_sequence, r.event_id)) if uncited(r) else r
        for r in view.relationships
    ])  # fmt: skip


def holder_chain(state: WorldState, entity_id: str) -> list[Entity]:
    """The entity's holder, the holder's holder, and so on up to one with a place of its own (a
    place it was left at is not a holder that carries it); as ``location_of`` walks it."""
    chain: list[Entity] = []
    seen = {entity_id}
    entity = state.entities.get(entity_id)
    while entity is not None and entity.get(Position) is None and len(chain) < MAX_HOLDER_CHAIN:
        held = entity.get(Holder)
        holder = None if held is None or held.holder in seen else state.entities.get(held.holder)
        if holder is None or holder.kind == "location":
            break
        seen.add(holder.id)
        chain.append(holder)
        entity = holder
    return chain


# ----------------------------------------------------------------------------------------------
# Resolution


def _as_uuid(ref: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(ref.strip())
    except ValueError:
        return None


async def find_entity(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, ref: str
) -> EntityRef | None:
    """The entity a reference denotes in a chronicle: its id, else its name or an alias
    (case- and whitespace-insensitive), like ``reducer.lookup``."""
    scope = and_(ecs_entities.c.tenant_id == tenant_id, ecs_entities.c.chronicle_id == chronicle_id)
    as_id = _as_uuid(ref)
    if as_id is not None:
        row = (
            await conn.execute(
                select(ecs_entities.c.id, ecs_entities.c.name).where(scope, ecs_entities.c.id == as_id)
            )
        ).first()
        if row is not None:
            return EntityRef(row.id, row.name)
    key = normalize_name(ref)
    if not key:
        return None
    row = (
        await conn.execute(
            select(ecs_entities.c.id, ecs_entities.c.name)
            .where(scope, or_(ecs_entities.c.name_key == key, ecs_entities.c.alias_keys.contains([key])))
            .order_by(ecs_entities.c.created_sequence, ecs_entities.c.id)
            .limit(1)
        )
    ).first()
    return None if row is None else EntityRef(row.id, row.name)


async def resolve_references(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, refs: Iterable[str]
) -> dict[str, EntityRef]:
    """Many references at once: normalized reference -> entity (unknown ones are left out).

    A name or alias, once bound in a chronicle, never moves to another entity (the reducer never
    rebinds one), so resolving an old event's references against today's names is exact.
    """
    keys = sorted({normalize_name(r) for r in refs} - {""})
    if not keys:
        return {}
    ids = sorted({u for u in (_as_uuid(k) for k in keys) if u is not None}, key=lambda u: u.int)
    rows = await conn.execute(
        select(
            ecs_entities.c.id, ecs_entities.c.name, ecs_entities.c.name_key, ecs_entities.c.alias_keys
        ).where(
            ecs_entities.c.tenant_id == tenant_id,
            ecs_entities.c.chronicle_id == chronicle_id,
            or_(
                ecs_entities.c.name_key.in_(keys),
                ecs_entities.c.alias_keys.overlap(keys),
                ecs_entities.c.id.in_(ids) if ids else false(),
            ),
        )
    )
    resolved: dict[str, EntityRef] = {}
    by_id: dict[str, EntityRef] = {}
    for row in rows:
        ref = EntityRef(row.id, row.name)
        by_id[str(row.id)] = ref
        for key in (row.name_key, *row.alias_keys):
            resolved.setdefault(key, ref)
    for key in keys:
        as_id = _as_uuid(key)
        if as_id is not None and str(as_id) in by_id:
            resolved[key] = by_id[str(as_id)]  # an id wins over a name, as in reducer.lookup
    return {k: v for k, v in resolved.items() if k in keys}


# ----------------------------------------------------------------------------------------------
# Listings


def _located_at(location_id: uuid.UUID, chronicle_id: uuid.UUID) -> ColumnElement[bool]:
    """Entities whose ``location_of`` is ``location_id``, following holder chains (recursive CTE).

    ``anchors`` are the entities whose items are at the place: the place itself when it is of
    kind location, and non-location entities positioned there or (recursively) held by an anchor.
    """
    entity = ecs_entities.alias("anchor_e")
    position = ecs_components.alias("anchor_c")
    base = (
        select(entity.c.id.label("id"))
        .select_from(
            entity.outerjoin(
                position, and_(position.c.entity_id == entity.c.id, position.c.type == "position")
            )
        )
        .where(
            entity.c.chronicle_id == chronicle_id,
            or_(
                and_(entity.c.id == location_id, entity.c.kind == "location"),
                and_(position.c.location_id == location_id, entity.c.kind != "location"),
            ),
        )
        .cte("anchors", recursive=True)
    )
    held = ecs_components.alias("held_c")
    held_entity = ecs_entities.alias("held_e")
    anchors = base.union(
        select(held.c.entity_id)
        .select_from(
            held.join(base, held.c.holder_id == base.c.id).join(
                held_entity, held_entity.c.id == held.c.entity_id
            )
        )
        .where(held.c.chronicle_id == chronicle_id, held.c.type == "holder", held_entity.c.kind != "location")
    )
    positioned = select(ecs_components.c.entity_id).where(
        ecs_components.c.chronicle_id == chronicle_id,
        ecs_components.c.type == "position",
        ecs_components.c.location_id == location_id,
    )
    carried = select(ecs_components.c.entity_id).where(
        ecs_components.c.chronicle_id == chronicle_id,
        ecs_components.c.type == "holder",
        ecs_components.c.holder_id.in_(select(anchors.c.id)),
    )
    return or_(ecs_entities.c.id.in_(positioned), ecs_entities.c.id.in_(carried))


def _relationship_condition(filters: EntityFilters, chronicle_id: uuid.UUID) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = []
    for mine, theirs, direction in (
        (ecs_relationships.c.from_id, ecs_relationships.c.to_id, "outgoing"),
        (ecs_relationships.c.to_id, ecs_relationships.c.from_id, "incoming"),
    ):
        if filters.direction not in (direction, "any"):
            continue
        clauses: list[ColumnElement[bool]] = [
            ecs_relationships.c.chronicle_id == chronicle_id,
            mine == ecs_entities.c.id,
            _HOLDS,
        ]
        if filters.related_to is not None:
            clauses.append(theirs == filters.related_to)
        if filters.relation is not None:
            clauses.append(ecs_relationships.c.types.has_key(filters.relation))
        clauses.extend(b.condition(ecs_relationships.c.valence) for b in filters.valence)
        conditions.append(exists().where(*clauses))
    return or_(*conditions) if conditions else true()


async def list_entities(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    filters: EntityFilters,
    *,
    after: tuple[int, uuid.UUID] | None,
    limit: int,
) -> list[EntitySummary]:
    """Entities of a chronicle matching every filter, in creation order, after a cursor."""
    status_c = ecs_components.alias("status_c")
    query = (
        select(
            ecs_entities.c.id,
            ecs_entities.c.name,
            ecs_entities.c.kind,
            ecs_entities.c.aliases,
            ecs_entities.c.archetype,
            status_c.c.status,
            ecs_entities.c.created_sequence,
            ecs_entities.c.updated_sequence,
        )
        .select_from(
            ecs_entities.outerjoin(
                status_c, and_(status_c.c.entity_id == ecs_entities.c.id, status_c.c.type == "status")
            )
        )
        .where(ecs_entities.c.tenant_id == tenant_id, ecs_entities.c.chronicle_id == chronicle_id)
    )
    if filters.kind is not None:
        query = query.where(ecs_entities.c.kind == normalize_name(filters.kind))
    if filters.status is not None:
        query = query.where(func.lower(status_c.c.status) == normalize_name(filters.status))
    for name in filters.has:
        query = query.where(
            exists().where(
                ecs_components.c.entity_id == ecs_entities.c.id, ecs_components.c.type == normalize_name(name)
            )
        )
    for comparison in filters.where:
        query = query.where(
            exists().where(
                ecs_components.c.entity_id == ecs_entities.c.id,
                ecs_components.c.type == comparison.component,
                comparison.condition(ecs_components.c.data),
            )
        )
    if filters.location_id is not None:
        query = query.where(_located_at(filters.location_id, chronicle_id))
    if filters.wants_relationship:
        query = query.where(_relationship_condition(filters, chronicle_id))
    if after is not None:
        query = query.where(
            tuple_(ecs_entities.c.created_sequence, ecs_entities.c.id)
            > tuple_(literal(after[0]), literal(after[1]))
        )
    rows = await conn.execute(query.order_by(ecs_entities.c.created_sequence, ecs_entities.c.id).limit(limit))
    return [
        EntitySummary(
            id=row.id,
            name=row.name,
            kind=row.kind,
            aliases=list(row.aliases),
            archetype=list(row.archetype),
            status=row.status,
            created_sequence=row.created_sequence,
            updated_sequence=row.updated_sequence,
        )
        for row in rows
    ]


def _state_relationship_match(state: WorldState, entity_id: str, filters: EntityFilters) -> bool:
    related = None if filters.related_to is None else str(filters.related_to)
    for record in state.relationships.values():
        if not holds(record):
            continue
        for direction, mine, theirs in (
            ("outgoing", record.from_id, record.to_id),
            ("incoming", record.to_id, record.from_id),
        ):
            if filters.direction not in (direction, "any") or mine != entity_id:
                continue
            if related is not None and theirs != related:
                continue
            if filters.relation is not None and filters.relation not in record.types:
                continue
            if all(b.matches(record.valence) for b in filters.valence):
                return True
    return False


def list_entities_from_state(
    state: WorldState, filters: EntityFilters, *, after: tuple[int, uuid.UUID] | None, limit: int
) -> list[EntitySummary]:
    """:func:`list_entities` over a reducer state (point-in-time listings)."""
    matched = []
    location = None if filters.location_id is None else str(filters.location_id)
    for entity in state.entities.values():
        entity_uuid = uuid.UUID(entity.id)
        if after is not None and (entity.created_sequence, entity_uuid.int) <= (after[0], after[1].int):
            continue
        components = {name: msgspec.to_builtins(value) for name, value in entity.components.items()}
        status = entity.status
        if filters.kind is not None and entity.kind != normalize_name(filters.kind):
            continue
        if filters.status is not None and (
            status is None or normalize_name(status) != normalize_name(filters.status)
        ):
            continue
        if any(normalize_name(name) not in components for name in filters.has):
            continue
        if not all(c.matches(components) for c in filters.where):
            continue
        if location is not None and location_of(state, entity.id) != location:
            continue
        if filters.wants_relationship and not _state_relationship_match(state, entity.id, filters):
            continue
        matched.append(
            EntitySummary(
                id=entity_uuid,
                name=entity.name,
                kind=entity.kind,
                aliases=list(entity.aliases),
                archetype=list(entity.archetype),
                status=status,
                created_sequence=entity.created_sequence,
                updated_sequence=entity.updated_sequence,
            )
        )
    matched.sort(key=lambda e: (e.created_sequence, e.id.int))
    return matched[:limit]


# ----------------------------------------------------------------------------------------------
# Relationships


async def relationship_graph(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    filters: GraphFilters,
    *,
    after: tuple[int, uuid.UUID, uuid.UUID] | None,
    limit: int,
) -> RelationshipGraph:
    """A page of directed edges (creation order) and the entities they connect."""
    r = ecs_relationships
    query = select(
        r.c.from_id, r.c.to_id, r.c.types, r.c.valence, r.c.created_sequence, r.c.updated_sequence
    ).where(r.c.tenant_id == tenant_id, r.c.chronicle_id == chronicle_id, _HOLDS)
    if filters.types:
        query = query.where(or_(*(r.c.types.has_key(t) for t in filters.types)))
    if filters.entity_id is not None:
        query = query.where(or_(r.c.from_id == filters.entity_id, r.c.to_id == filters.entity_id))
    for bound in filters.valence:
        query = query.where(bound.condition(r.c.valence))
    if after is not None:
        query = query.where(
            tuple_(r.c.created_sequence, r.c.from_id, r.c.to_id)
            > tuple_(literal(after[0]), literal(after[1]), literal(after[2]))
        )
    # One statement, one round trip: the page of edges and the entities they connect come back as
    # two JSON documents that msgspec decodes straight into the response structs (two queries and
    # row-by-row conversion cost more than the query itself on a busy machine).
    page = query.order_by(r.c.created_sequence, r.c.from_id, r.c.to_id).limit(limit).cte("page")
    row: Any = (
        await conn.execute(
            select(
                literal_column(_GRAPH_EDGES_JSON).label("edges"),
                literal_column(_GRAPH_NODES_JSON).label("nodes"),
            ).add_cte(page)
        )
    ).one()
    edges = _GRAPH_EDGES.decode(row.edges)
    order: dict[uuid.UUID, int] = {}
    for edge in edges:
        for node_id in (edge.from_id, edge.to_id):
            order.setdefault(node_id, len(order))
    nodes = sorted(_GRAPH_NODES.decode(row.nodes), key=lambda n: order[n.id])
    return RelationshipGraph(nodes=nodes, edges=edges)


# Relation types are stored as {name: {data, created_sequence, updated_sequence}}; listed by name
# in code-point order (COLLATE "C"), as `_relation_types` does in Python. Sent as text, so that
# the driver's JSON codec does not build dicts first.
_GRAPH_EDGES_JSON: Final = """(
    SELECT coalesce(json_agg(json_build_object(
        'from_id', p.from_id, 'to_id', p.to_id,
        'types', (SELECT coalesce(json_agg(json_build_object(
                        'type', t.key, 'data', t.value -> 'data',
                        'created_sequence', t.value -> 'created_sequence',
                        'updated_sequence', t.value -> 'updated_sequence') ORDER BY t.key COLLATE "C"), '[]')
                  FROM jsonb_each(p.types) AS t),
        'valence', p.valence, 'created_sequence', p.created_sequence, 'updated_sequence', p.updated_sequence
    ) ORDER BY p.created_sequence, p.from_id, p.to_id), '[]')::text
    FROM page AS p)"""
_GRAPH_NODES_JSON: Final = """(
    SELECT coalesce(json_agg(json_build_object('id', e.id, 'name', e.name, 'kind', e.kind)), '[]')::text
    FROM ecs_entities AS e
    WHERE e.id IN (SELECT from_id FROM page UNION SELECT to_id FROM page))"""
_GRAPH_EDGES: Final = msgspec.json.Decoder(list[GraphEdge])
_GRAPH_NODES: Final = msgspec.json.Decoder(list[EntityNode])


async def valence_history(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    from_id: uuid.UUID,
    to_id: uuid.UUID,
    dimension: str | None = None,
) -> list[ValencePoint]:
    """Every valence change from one entity to another, in order, with the event that made it."""
    h = ecs_valence_history
    query = select(h.c.event_id, h.c.sequence, h.c.dimension, h.c.previous, h.c.delta, h.c.new_value).where(
        h.c.tenant_id == tenant_id,
        h.c.chronicle_id == chronicle_id,
        h.c.from_id == from_id,
        h.c.to_id == to_id,
    )
    if dimension is not None:
        query = query.where(h.c.dimension == normalize_name(dimension))
    rows = await conn.execute(query.order_by(h.c.sequence, h.c.id))
    return [
        ValencePoint(
            event_id=row.event_id,
            sequence=row.sequence,
            dimension=row.dimension,
            previous=row.previous,
            delta=row.delta,
            value=row.new_value,
        )
        for row in rows
    ]


# ----------------------------------------------------------------------------------------------
# The chronicle side: timelines, headlines, replay


def entity_event_keys(name: str, aliases: Iterable[str], entity_id: uuid.UUID) -> list[str]:
    """The ``entity_keys`` an event mentioning this entity carries: its name, aliases or id."""
    keys = {normalize_name(name), str(entity_id)} | {normalize_name(a) for a in aliases}
    return sorted(keys - {""})


async def events_involving(
    conn: AsyncConnection,
    tenant_id: uuid.UUID,
    chronicle_id: uuid.UUID,
    keys: Sequence[str],
    *,
    after_sequence: int,
    limit: int,
    to_sequence: int | None = None,
) -> list[StoredEvent]:
    """Chronicle events (as actor, location or effect reference) naming any of ``keys``."""
    query = select(*EVENT_COLUMNS).where(
        chronicle_events.c.tenant_id == tenant_id,
        chronicle_events.c.chronicle_id == chronicle_id,
        chronicle_events.c.sequence > after_sequence,
        chronicle_events.c.entity_keys.overlap(list(keys)),
    )
    if to_sequence is not None:
        query = query.where(chronicle_events.c.sequence <= to_sequence)
    rows = await conn.execute(query.order_by(chronicle_events.c.sequence).limit(limit))
    return [StoredEvent(**row._mapping) for row in rows]


async def event_headlines(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, event_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, EventHeadline]:
    ids = sorted(set(event_ids), key=lambda u: u.int)
    if not ids:
        return {}
    rows = await conn.execute(
        select(
            chronicle_events.c.id,
            chronicle_events.c.sequence,
            chronicle_events.c.kind,
            chronicle_events.c.summary,
        ).where(
            chronicle_events.c.tenant_id == tenant_id,
            chronicle_events.c.chronicle_id == chronicle_id,
            chronicle_events.c.id.in_(ids),
        )
    )
    return {row.id: EventHeadline(row.id, row.sequence, row.kind, row.summary) for row in rows}


async def state_as_of(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, sequence: int
) -> WorldState:
    """The world state right after event ``sequence``, replayed from the chronicle's events."""
    state, _, _ = replay_stored(await _events_up_to(conn, tenant_id, chronicle_id, sequence), chronicle_id)
    return state


async def state_at_story_time(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, occurred_by: dt.datetime
) -> StoryTimeState:
    """The world state at a story time: what had happened by then, replayed in story order (a
    report entered late of something earlier is recorded after what it precedes)."""
    return replay_to_story_time(
        await _events_up_to(conn, tenant_id, chronicle_id, None), chronicle_id, occurred_by
    )


async def _events_up_to(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, sequence: int | None
) -> list[StoredEvent]:
    events: list[StoredEvent] = []
    after = 0
    while sequence is None or after < sequence:
        page = await list_events(
            conn, tenant_id, chronicle_id, EventFilters(to_sequence=sequence), after_sequence=after,
            limit=REPLAY_PAGE,
        )  # fmt: skip
        events.extend(page)
        if len(page) < REPLAY_PAGE:
            break
        after = page[-1].sequence
    return events


# ----------------------------------------------------------------------------------------------
# Interactions


def _effects(event: StoredEvent) -> list[Effect | None]:
    decoded: list[Effect | None] = []
    for raw in event.effects:
        try:
            decoded.append(msgspec.convert(raw, Effect))
        except msgspec.ValidationError:
            decoded.append(None)
    return decoded


def _component_ref(value: Any, field: str) -> str | None:
    raw = value.get(field) if isinstance(value, dict) else value
    return raw if isinstance(raw, str) else None


def _effect_roles(effect: Effect) -> list[tuple[str, str]]:
    """(role, reference) pairs of an effect, like ``rag.events.effect_entities`` with roles."""
    match effect:
        case SpawnEffect(entity=e) | SetEffect(entity=e) | UnsetEffect(entity=e):
            return [(str(effect.__struct_config__.tag), e)]
        case StatusEffect(entity=e) | DestroyEffect(entity=e) | AliasEffect(entity=e):
            return [(str(effect.__struct_config__.tag), e)]
        case MoveEffect(entity=e, to=to):
            return [("move", e), ("move:to", to)]
        case TransferEffect(item=item, to=to, from_=source):
            pairs = [("transfer:item", item)]
            if source is not None:
                pairs.append(("transfer:from", source))
            return [*pairs, ("transfer:to", to)]
        case RelateEffect(from_=a, to=b) | UnrelateEffect(from_=a, to=b) | ValenceEffect(from_=a, to=b):
            tag = effect.__struct_config__.tag
            return [(f"{tag}:from", a), (f"{tag}:to", b)]
    return []  # pragma: no cover - every effect type is matched above


def _holder_refs(effect: Effect) -> list[str]:
    """References inside an effect's holder component value (a ``set``/``spawn`` of ``holder``)."""
    if isinstance(effect, SetEffect) and normalize_name(effect.component) == "holder":
        ref = _component_ref(effect.value, "holder")
        return [] if ref is None else [ref]
    if isinstance(effect, SpawnEffect):
        for name, value in effect.components.items():
            if normalize_name(name) == "holder":
                ref = _component_ref(value, "holder")
                return [] if ref is None else [ref]
    return []


def event_references(events: Iterable[StoredEvent]) -> set[str]:
    """Every entity reference the events make (to resolve in one go before building interactions)."""
    refs: set[str] = set()
    for event in events:
        refs.update(str(a["name"]) for a in event.actors if "name" in a)
        if event.location is not None:
            refs.add(event.location)
        for effect in _effects(event):
            if effect is not None:
                refs.update(ref for _, ref in _effect_roles(effect))
                refs.update(_holder_refs(effect))
    return refs


def _holder_change(effect: Effect, target: uuid.UUID, refs: _Refs) -> tuple[bool, EntityRef | None]:
    """(does it change the target's holder?, the new holder) for one effect."""
    if isinstance(effect, TransferEffect) and refs.id(effect.item) == target:
        return True, refs.get(effect.to)
    if isinstance(effect, MoveEffect | DestroyEffect) and refs.id(effect.entity) == target:
        return True, None  # put down, or destroyed in the hand: no one holds it any more
    if isinstance(effect, UnsetEffect) and refs.id(effect.entity) == target:
        return normalize_name(effect.component) == "holder", None
    if isinstance(effect, SetEffect | SpawnEffect) and refs.id(effect.entity) == target:
        holder_refs = _holder_refs(effect)
        if holder_refs:
            return True, refs.get(holder_refs[0])
        if isinstance(effect, SetEffect) and normalize_name(effect.component) == "position":
            return True, None
    return False, None


class _Refs:
    """Resolved references of a set of events."""

    def __init__(self, refs: Mapping[str, EntityRef]) -> None:
        self.refs = refs

    def get(self, ref: str) -> EntityRef | None:
        return self.refs.get(normalize_name(ref))

    def id(self, ref: str) -> uuid.UUID | None:
        found = self.get(ref)
        return None if found is None else found.id


class _EventRoles:
    """Who took part in one event and how, split into the target and the others."""

    def __init__(self, target: uuid.UUID, refs: _Refs) -> None:
        self.target = target
        self.refs = refs
        self.own: list[str] = []
        self.others: dict[uuid.UUID, tuple[EntityRef, list[str]]] = {}

    def note(self, role: str, ref: str) -> None:
        entity = self.refs.get(ref)
        if entity is None:
            return
        roles = self.own if entity.id == self.target else self.others.setdefault(entity.id, (entity, []))[1]
        if role not in roles:
            roles.append(role)


class _Interactant:
    def __init__(self, entity: EntityRef, sequence: int) -> None:
        self.entity = entity
        self.event_ids: list[uuid.UUID] = []
        self.first = self.last = sequence


def build_interactions(
    target: EntityRef, events: Sequence[StoredEvent], refs: Mapping[str, EntityRef]
) -> Interactions:
    """Who took part with ``target`` in each event, who they are overall, and its holders.

    ``refs`` resolves the events' references (:func:`resolve_references` of
    :func:`event_references`). Participants of an event are its actors and the references of the
    effects that involve the target (all effects when the target is an actor or the location).
    Holder changes come from transfers, ``set``/``spawn`` of a holder, and moves, unsets and
    destroys (which put a held item down, or end it), as the chronicle states them; a change to
    the current holder (as far as these events tell) is not repeated.
    """
    resolved = _Refs(refs)
    out: list[InteractionEvent] = []
    interactants: dict[uuid.UUID, _Interactant] = {}
    holders: list[HolderChange] = []
    current_holder: uuid.UUID | None = None
    for event in events:
        effects = [e for e in _effects(event) if e is not None]
        roles = _EventRoles(target.id, resolved)
        for actor in event.actors:
            if "name" in actor:
                role = actor.get("role")
                roles.note(f"actor:{role}" if role else "actor", str(actor["name"]))
        if event.location is not None and resolved.id(event.location) == target.id:
            roles.note("location", event.location)
        central = bool(roles.own)
        for effect in effects:
            pairs = _effect_roles(effect)
            if central or any(resolved.id(ref) == target.id for _, ref in pairs):
                for role, ref in pairs:
                    roles.note(role, ref)
            changed, holder = _holder_change(effect, target.id, resolved)
            holder_id = None if holder is None else holder.id
            if changed and holder_id != current_holder:
                holders.append(HolderChange(event_id=event.id, sequence=event.sequence, holder=holder))
                current_holder = holder_id
        if not roles.own and not roles.others:
            continue
        participants = [Participant(entity=entity, roles=r) for entity, r in roles.others.values()]
        out.append(
            InteractionEvent(
                event_id=event.id,
                sequence=event.sequence,
                kind=event.kind,
                summary=event.summary,
                roles=roles.own,
                participants=participants,
            )
        )
        for participant in participants:
            entry = interactants.setdefault(
                participant.entity.id, _Interactant(participant.entity, event.sequence)
            )
            entry.event_ids.append(event.id)
            entry.last = event.sequence
    return Interactions(
        events=out,
        interactants=[Interactant(i.entity, i.event_ids, i.first, i.last) for i in interactants.values()],
        holders=holders,
    )
