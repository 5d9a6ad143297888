"""State sources for context bundles: the ECS tables, or a replay of the chronicle.

`EcsStateSource` reads the projected state (through the entity cache when there is one).
`ChronicleReplayStateSource` is degraded mode: it folds the most recent events of the focus
entities through the same pure reducer, bounded per entity, so "where is X now" is still answered
from the authoritative log when ECS storage is unavailable.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from ecs.cache import EntityCache
from ecs.components import Holder, Position, Status
from ecs.projector import replay_stored, to_chronicle_event
from ecs.queries import (
    EntityFilters,
    EntitySummary,
    ValenceSource,
    complete_views,
    get_entity_core,
    holder_chain,
    latest_event,
    list_entities,
    type_data,
    valence_sources,
)
from ecs.reducer import (
    AliasAdded,
    Entity,
    EntityCreated,
    Provenance,
    WorldState,
    apply_change,
    apply_event,
    entity_id_for,
    location_of,
)
from ecs.repository import Checkpoint, read_checkpoint
from ecs.schema import ecs_components, ecs_entities
from rag.context import Citation, EntityState, Fact, Present, RelationFact
from rag.events import normalize_name
from rag.query_analysis import KnownEntity
from rag.schema import chronicle_events
from rag.store import StoredEvent, event_ids_at, events_at, events_up_to, first_mentions, last_mentions

__all__ = [
    "ChronicleReplayStateSource",
    "EcsStateSource",
    "KnownNamesCache",
    "alias_groups",
    "named_by_id",
    "named_in_event",
    "names_for_ids",
    "seeded_world",
    "state_from_world",
]

_HOT = ("position", "holder", "status")
# Built once, with bound parameters: building a statement costs more CPU than running this one.
_PROVENANCE = select(
    ecs_components.c.entity_id, ecs_components.c.type, ecs_components.c.sequence, ecs_components.c.event_id
).where(ecs_components.c.entity_id.in_(bindparam("ids", expanding=True)))
KNOWN_ENTITY_LIMIT = 5_000


def _fact(value: Any, provenance: Provenance | None) -> Fact:
    if provenance is None:
        return Fact(value=value)
    return Fact(value=value, sequence=provenance.sequence, event_id=provenance.event_id)


def _citations(sources: dict[str, ValenceSource]) -> dict[str, Citation]:
    return {dimension: Citation(s.sequence, str(s.event_id)) for dimension, s in sources.items()}


def _uncited(state: EntityState) -> list[int]:
    """Sequences of relationships whose ``event_id`` is not the event of their ``sequence``: the
    reducer cites valences by event, relation types by sequence only."""
    return [
        r.sequence
        for r in state.relationships
        if r.sequence is not None and not any(c.sequence == r.sequence for c in r.valence_sources.values())
    ]


async def cite_relationships(
    conn: AsyncConnection, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, states: list[EntityState]
) -> list[EntityState]:
    """Each relationship cited with the event of its ``sequence`` (its latest change: a relation
    type set or removed, or a valence), so that ``sequence`` and ``event_id`` name one event; one
    read of the chronicle, and none when every relationship is cited already."""
    uncited = [set(_uncited(state)) for state in states]
    wanted = sorted(set().union(*uncited))
    if not wanted:
        return states
    found = await event_ids_at(conn, tenant_id, chronicle_id, wanted)
    return [
        msgspec.structs.replace(state, relationships=[
            msgspec.structs.replace(r, event_id=str(found[r.sequence]))
            if r.sequence in sequences and r.sequence in found
            else r
            for r in state.relationships
        ])
        if sequences
        else state
        for state, sequences in zip(states, uncited, strict=True)
    ]  # fmt: skip


def state_from_world(state: WorldState, entity_id: str) -> EntityState | None:
    """An entity's current state, with provenance, from a reducer state (replay or as-of)."""
    entity = state.entities.get(entity_id)
    if entity is None:
        return None
    holder_component = entity.get(Holder)
    status_component = entity.get(Status)
    location_id = location_of(state, entity_id)
    location_source = _location_provenance(state, entity)
    inventory = sorted(
        (e for e in state.entities.values() if (h := e.get(Holder)) is not None and h.holder == entity_id),
        key=lambda e: (e.created_sequence, e.id),
    )
    relationships = []
    for record in sorted(
        state.relationships.values(), key=lambda r: (r.created_sequence, r.from_id, r.to_id)
    ):
        if entity_id not in (record.from_id, record.to_id):
            continue
        outgoing = record.from_id == entity_id
        other = state.entities[record.to_id if outgoing else record.from_id]
        latest = latest_event(msgspec.to_builtins(record.provenance))
        relationships.append(
            RelationFact(
                other_id=other.id,
                other=other.name,
                direction="outgoing" if outgoing else "incoming",
                types=sorted(record.types),
                type_data=type_data(record),
                valence={k: record.valence[k] for k in sorted(record.valence)},
                sequence=record.updated_sequence,
                event_id=None if latest is None else str(latest),
                valence_sources=_citations(valence_sources(msgspec.to_builtins(record.provenance))),
            )
        )
    return EntityState(
        id=entity.id,
        name=entity.name,
        kind=entity.kind,
        aliases=list(entity.aliases),
        location=None if location_id is None else _fact(state.entities[location_id].name, location_source),
        location_id=location_id,
        status=None
        if status_component is None
        else _fact(status_component.value, entity.provenance.get("status")),
        # An item left at a place has the place as its holder: it is where it lies, not held.
        holder=None
        if holder_component is None or state.entities[holder_component.holder].kind == "location"
        else _fact(state.entities[holder_component.holder].name, entity.provenance.get("holder")),
        carried_by=[e.name for e in holder_chain(state, entity_id)[1:]],
        inventory=[_fact(item.name, item.provenance.get("holder")) for item in inventory],
        components={
            name: _fact(_plain(value), entity.provenance.get(name))
            for name, value in sorted(entity.components.items())
            if name not in _HOT
        },
        relationships=relationships,
    )


def _location_provenance(state: WorldState, entity: Entity) -> Provenance | None:
    """The latest event that decided where the entity is: its own move, or for a held item the
    later of being taken and its holder's last move (the item goes where its holder goes)."""
    seen: set[str] = set()
    sources: list[Provenance] = []
    current: Entity | None = entity
    while current is not None and current.id not in seen:
        seen.add(current.id)
        if current.get(Position) is not None:
            if (position := current.provenance.get("position")) is not None:
                sources.append(position)
            break
        holder = current.get(Holder)
        if holder is not None and (taken := current.provenance.get("holder")) is not None:
            sources.append(taken)
        current = state.entities.get(holder.holder) if holder is not None else None
    return max(sources, key=lambda p: p.sequence, default=None)


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _state_version(checkpoint: Checkpoint) -> Hashable:
    """Names one ECS state of a chronicle: every write to it saves the checkpoint (sequence and
    time) in the same transaction, a rebuild at the same sequence included."""
    return (checkpoint.last_sequence, checkpoint.updated_at)


class EcsStateSource:
    label = "ecs"

    def __init__(
        self,
        chronicle_engine: AsyncEngine,
        ecs_engine: AsyncEngine,
        tenant_id: uuid.UUID,
        chronicle_id: uuid.UUID,
        *,
        cache: EntityCache | None = None,
        names: KnownNamesCache | None = None,
        states: StateViewCache | None = None,
    ) -> None:
        self.chronicle_engine = chronicle_engine
        self.ecs_engine = ecs_engine
        self.tenant_id = tenant_id
        self.chronicle_id = chronicle_id
        self.cache = cache
        self.names = names
        self.states = states
        self._checkpoint: Checkpoint | None = None
        self._checkpoint_read = False
        self._as_of: tuple[int, WorldState] | None = None

    async def checkpoint(self) -> Checkpoint | None:
        """The chronicle's checkpoint (without its snapshot), read once per source: the staleness
        check, the known names and the position of one request all look at the same one."""
        if not self._checkpoint_read:
            async with self.ecs_engine.connect() as conn:
                self._checkpoint = await read_checkpoint(conn, self.chronicle_id)
            self._checkpoint_read = True
        return self._checkpoint

    async def known_entities(self) -> tuple[KnownEntity, ...]:
        # The names change only when the projector (or a rebuild) saves the checkpoint, which moves
        # its sequence or its time: keyed by both, the list is read and built once per change
        # instead of once per request (thousands of names in a long chronicle).
        checkpoint = await self.checkpoint()
        version = None if checkpoint is None else _state_version(checkpoint)
        if self.names is not None and version is not None:
            cached = self.names.get(self.chronicle_id, version)
            if cached is not None:
                return cached
        async with self.ecs_engine.connect() as conn:
            rows = await conn.execute(
                select(ecs_entities.c.id, ecs_entities.c.name, ecs_entities.c.aliases, ecs_entities.c.kind)
                .where(
                    ecs_entities.c.tenant_id == self.tenant_id,
                    ecs_entities.c.chronicle_id == self.chronicle_id,
                )
                .order_by(ecs_entities.c.created_sequence, ecs_entities.c.id)
                .limit(KNOWN_ENTITY_LIMIT)
            )
            known = tuple(
                KnownEntity(id=str(r.id), name=r.name, aliases=list(r.aliases), kind=r.kind) for r in rows
            )
        if self.names is not None and version is not None:
            self.names.put(self.chronicle_id, version, known)
        return known

    def forget_checkpoint(self) -> None:
        """Read the checkpoint again on next use: a catch-up has just moved it."""
        self._checkpoint_read = False

    async def position(self) -> int | None:
        checkpoint = await self.checkpoint()
        return checkpoint.last_sequence if checkpoint is not None else 0

    async def entity_states(self, entity_ids: Sequence[str], as_of_sequence: int | None) -> list[EntityState]:
        if not entity_ids:
            return []
        position = await self.position()
        if as_of_sequence is not None and as_of_sequence < (position or 0):
            return await self.replayed(entity_ids, as_of_sequence)
        checkpoint = await self.checkpoint()
        if self.states is None or checkpoint is None:
            return await self._read_states(entity_ids)
        # Every write to the ECS state saves the checkpoint in the same transaction, so the
        # checkpoint's version names one state: what was read under it can be served again.
        chronicle = (self.tenant_id, self.chronicle_id)
        version = _state_version(checkpoint)
        found = {i: self.states.get(chronicle, version, i) for i in entity_ids}
        missing = [i for i, state in found.items() if state is None]
        if missing:
            for state in await self._read_states(missing):
                found[state.id] = state
                self.states.put(chronicle, version, state)
        return [state for state in (found[i] for i in entity_ids) if state is not None]

    async def _read_states(self, entity_ids: Sequence[str]) -> list[EntityState]:
        # In a transaction, though a read only: the same reads through an AUTOCOMMIT connection
        # (`rag.store.without_transaction`) saved two round trips but, in 2-minute runs of the
        # mixed load test with the projector writing, ran out of the request's ECS time budget far
        # more often (111 against 4 chronicle-only answers; 41 against 52 requests/s).
        wanted = [uuid.UUID(raw_id) for raw_id in entity_ids]
        async with self.ecs_engine.connect() as conn:
            if self.cache is not None:
                found = await asyncio.gather(*(self.cache.get(self.tenant_id, i) for i in wanted))
            else:
                found = [await get_entity_core(conn, self.tenant_id, i) for i in wanted]
            cores = [core for core in found if core is not None]
            views = await complete_views(conn, cores)
            related: list[uuid.UUID] = []
            for view in views:
                related += [view.id, *(i.id for i in view.inventory)]
                if view.location is not None:
                    related.append(view.location.id)
                if view.holder is not None:
                    related.append(view.holder.id)
                related += [c.id for c in view.carried_by]
            provenance = await self._provenance(conn, sorted(set(related), key=lambda u: u.int))
        states = [self._from_view(view, provenance) for view in views]
        if not any(_uncited(s) for s in states):
            return states
        async with self.chronicle_engine.connect() as chronicle:
            return await cite_relationships(chronicle, self.tenant_id, self.chronicle_id, states)

    async def _provenance(
        self, conn: Any, entity_ids: list[uuid.UUID]
    ) -> dict[tuple[uuid.UUID, str], Provenance]:
        rows = await conn.execute(_PROVENANCE, {"ids": entity_ids})
        return {(r.entity_id, r.type): Provenance(r.sequence, str(r.event_id)) for r in rows}

    @staticmethod
    def _from_view(view: Any, provenance: dict[tuple[uuid.UUID, str], Provenance]) -> EntityState:
        own = {name: provenance.get((view.id, name)) for name in view.components}
        location_source = own.get("position")
        if view.holder is not None:
            # A held item is where its holder is: its place changed when it was taken, whenever
            # its holder changed hands (a case it is in) and whenever the last carrier moved.
            carriers = [view.holder.id, *(c.id for c in view.carried_by)]
            candidates = [
                own.get("holder"),
                *(provenance.get((c, "holder")) for c in carriers),
                provenance.get((carriers[-1], "position")),
            ]
            location_source = max(
                (c for c in candidates if c is not None), key=lambda p: p.sequence, default=None
            )
        return EntityState(
            id=str(view.id),
            name=view.name,
            kind=view.kind,
            aliases=list(view.aliases),
            location=None if view.location is None else _fact(view.location.name, location_source),
            location_id=None if view.location is None else str(view.location.id),
            status=None if view.status is None else _fact(view.status, own.get("status")),
            holder=None
            if view.holder is None or (view.location is not None and view.location.id == view.holder.id)
            else _fact(view.holder.name, own.get("holder")),
            carried_by=[c.name for c in view.carried_by],
            inventory=[_fact(i.name, provenance.get((i.id, "holder"))) for i in view.inventory],
            components={
                name: _fact(value, own.get(name))
                for name, value in sorted(view.components.items())
                if name not in _HOT
            },
            relationships=[
                RelationFact(
                    other_id=str(r.other.id),
                    other=r.other.name,
                    direction=r.direction,
                    types=sorted(t.type for t in r.types),
                    type_data={
                        t.type: t.data for t in sorted(r.types, key=lambda t: t.type) if t.data is not None
                    },
                    valence={k: r.valence[k] for k in sorted(r.valence)},
                    sequence=r.updated_sequence,
                    event_id=None if r.event_id is None else str(r.event_id),
                    valence_sources=_citations(r.valence_sources),
                )
                for r in view.relationships
            ],
        )

    async def present_at(self, location_id: str, as_of_sequence: int | None, limit: int) -> list[Present]:
        """The characters at the place (now, or as of a sequence: replayed), in order of
        appearance."""
        position = await self.position()
        if as_of_sequence is not None and as_of_sequence < (position or 0):
            return present_in_world(await self._world_as_of(as_of_sequence), location_id, limit)
        found = await self._listed_at(location_id, PRESENT_KIND, limit)
        return [Present(summary.name, summary.status) for summary in found]

    async def items_at(self, location_id: str, as_of_sequence: int | None, limit: int) -> list[EntityState]:
        """The items at the place (now, or as of a sequence: replayed), whoever holds them, in
        order of appearance. A few times ``limit`` are read: those that someone there carries
        are not left there, and the caller leaves them out."""
        position = await self.position()
        if as_of_sequence is not None and as_of_sequence < (position or 0):
            world = await self._world_as_of(as_of_sequence)
            items = items_in_world(world, location_id)[: ITEMS_READ * limit]
            return await self.replayed(items, as_of_sequence)
        found = await self._listed_at(location_id, ITEM_KIND, ITEMS_READ * limit)
        return await self.entity_states([str(summary.id) for summary in found], None)

    async def _listed_at(self, location_id: str, kind: str, limit: int) -> list[EntitySummary]:
        """The entities of ``kind`` whose place is ``location_id`` now, in order of appearance."""
        try:
            place = uuid.UUID(location_id)
        except ValueError:
            return []
        filters = EntityFilters(kind=kind, location_id=place)
        async with self.ecs_engine.connect() as conn:
            return await list_entities(
                conn, self.tenant_id, self.chronicle_id, filters, after=None, limit=limit
            )

    async def replayed(self, entity_ids: Sequence[str], as_of_sequence: int) -> list[EntityState]:
        """The entities as they were at `as_of_sequence`, replayed from the chronicle."""
        state = await self._world_as_of(as_of_sequence)
        found = [s for i in entity_ids if (s := state_from_world(state, i)) is not None]
        async with self.chronicle_engine.connect() as chronicle:
            return await cite_relationships(chronicle, self.tenant_id, self.chronicle_id, found)

    async def _world_as_of(self, as_of_sequence: int) -> WorldState:
        """The chronicle replayed to `as_of_sequence`, once per source (one request): the focus
        states and who is at a place then come from the same replay."""
        if self._as_of is None or self._as_of[0] != as_of_sequence:
            async with self.chronicle_engine.connect() as conn:
                events = await events_up_to(conn, self.tenant_id, self.chronicle_id, as_of_sequence)
            state, _, _ = replay_stored(events, self.chronicle_id)
            self._as_of = (as_of_sequence, state)
        return self._as_of[1]


class KnownNamesCache:
    """Names known in each chronicle, kept a few seconds: degraded mode serves many requests from
    the same chronicle, and scanning its recent events for names on each one would be wasteful.

    Alias declarations are kept apart and without expiry: they only accumulate, so each scan for
    them starts after the last sequence already read."""

    def __init__(self, ttl_seconds: float = 60.0, max_chronicles: int = 1_000) -> None:
        self._ttl = ttl_seconds
        self._max = max_chronicles
        # Keyed by a version of the chronicle too (its last sequence, or the ECS checkpoint): a new
        # event may bring a new name.
        self._entries: dict[uuid.UUID, tuple[float, Hashable, tuple[KnownEntity, ...]]] = {}
        self._aliases: dict[uuid.UUID, tuple[int, list[tuple[str, str]]]] = {}
        # The first event naming a name never changes (the chronicle only grows): kept without
        # expiry, like the alias declarations. None: not named (yet), asked again next time.
        self._first: dict[uuid.UUID, dict[str, int]] = {}

    def first_mentions(self, chronicle_id: uuid.UUID) -> dict[str, int]:
        """Normalized name -> the sequence of the first event naming it, as found so far."""
        if chronicle_id not in self._first:
            if len(self._first) >= self._max:
                self._first.clear()
            self._first[chronicle_id] = {}
        return self._first[chronicle_id]

    def aliases(self, chronicle_id: uuid.UUID) -> tuple[int, list[tuple[str, str]]]:
        """(sequence read through, the ``(entity, alias)`` declarations up to it, in order)."""
        return self._aliases.get(chronicle_id, (0, []))

    def put_aliases(self, chronicle_id: uuid.UUID, through: int, declarations: list[tuple[str, str]]) -> None:
        if len(self._aliases) >= self._max and chronicle_id not in self._aliases:
            self._aliases.clear()
        self._aliases[chronicle_id] = (through, declarations)

    def get(self, chronicle_id: uuid.UUID, version: Hashable) -> tuple[KnownEntity, ...] | None:
        entry = self._entries.get(chronicle_id)
        if entry is None or entry[0] < time.monotonic() or entry[1] != version:
            return None
        return entry[2]

    def put(self, chronicle_id: uuid.UUID, version: Hashable, known: tuple[KnownEntity, ...]) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[chronicle_id] = (time.monotonic() + self._ttl, version, known)


class StateViewCache:
    """Entity states as read at a chronicle's latest checkpoint version, kept in the process.

    A state view joins an entity's components with the names of its place, holder, inventory and
    relations, plus the provenance of each fact: five statements. Between two projections of a
    chronicle every request about the same characters would read the same rows again; keyed by
    the checkpoint's version (sequence and save time), a view is served until the state moves.
    Only the newest version seen of each chronicle is kept: under steady writes the checkpoint
    moves several times a second, and views of older versions, never served again, would pile up
    (thousands of long-lived objects for the garbage collector to walk: the 10-minute load test
    slowed down by half with a cache keyed by every version).
    """

    def __init__(self, max_chronicles: int = 32, max_entities: int = 256) -> None:
        self._max_chronicles = max_chronicles
        self._max_entities = max_entities
        self._chronicles: OrderedDict[Hashable, tuple[Hashable, dict[str, EntityState]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, chronicle: Hashable, version: Hashable, entity_id: str) -> EntityState | None:
        kept = self._chronicles.get(chronicle)
        state = kept[1].get(entity_id) if kept is not None and kept[0] == version else None
        if state is None:
            self.misses += 1
            return None
        self._chronicles.move_to_end(chronicle)
        self.hits += 1
        return state

    def put(self, chronicle: Hashable, version: Hashable, state: EntityState) -> None:
        kept = self._chronicles.get(chronicle)
        if kept is None or kept[0] != version:
            kept = (version, {})  # a newer state of the chronicle: the older views go
            self._chronicles[chronicle] = kept
        if len(kept[1]) < self._max_entities:
            kept[1][state.id] = state
        self._chronicles.move_to_end(chronicle)
        while len(self._chronicles) > self._max_chronicles:
            self._chronicles.popitem(last=False)


class ChronicleReplayStateSource:
    """Degraded mode: state of the focus entities replayed from their most recent events.

    Entities are identified by their normalized name here (there is no ECS id to use). Replay is
    bounded: the last `events_per_entity` events that involve the entity (under its name or an
    alias), and for a held entity those of its holder too, then stop.

    Names (`known_entities`): the entities named in the last `scan_events` events; every alias
    declared in the whole chronicle (declarations are few, and a recent event may use an alias
    declared thousands of events ago); and the `focus` names of the request, looked up in the whole
    chronicle when the recent events do not name them (a character dead long ago, an item lying
    forgotten is still asked about).

    Each replay starts from the known alias groups (`seeded_world`): a bounded window rarely holds
    the event that declared an alias, and without it the events that use the alias would make a
    second entity, splitting holders, feelings and carried bodies between the two. (The ECS keeps a
    name used *before* its alias was declared apart; the seeded replay merges it. Degraded mode
    accepts that.)
    """

    label = "chronicle replay"

    def __init__(
        self,
        chronicle_engine: AsyncEngine,
        tenant_id: uuid.UUID,
        chronicle_id: uuid.UUID,
        *,
        events_per_entity: int = 200,
        scan_events: int = 5_000,
        known_cache: KnownNamesCache | None = None,
        chronicle_sequence: int | None = None,
        focus: Sequence[str] = (),
    ) -> None:
        self.engine = chronicle_engine
        self.tenant_id = tenant_id
        self.chronicle_id = chronicle_id
        self.events_per_entity = events_per_entity
        self.scan_events = scan_events
        self.known_cache = known_cache
        self.chronicle_sequence = chronicle_sequence
        self.focus = list(focus)
        self._known: tuple[KnownEntity, ...] | None = None
        self._ids: dict[str, str | None] = {}
        """Normalized name -> the id ECS gives the entity first named so (None: never named)."""

    async def position(self) -> int | None:
        return None

    def _in_chronicle(self) -> list[ColumnElement[bool]]:
        return [
            chronicle_events.c.tenant_id == self.tenant_id,
            chronicle_events.c.chronicle_id == self.chronicle_id,
        ]

    async def _replay_events_of(
        self,
        conn: Any,
        keys: set[str],
        as_of_sequence: int | None,
        known: Sequence[KnownEntity],
        holders: Sequence[set[str]] = (),
    ) -> tuple[WorldState, int, str | None]:
        """Replay the most recent events that involve `keys` (bounded), and those of each of
        `holders` (each bounded on its own: a busy courier's events must not push the drive's own
        out of the window), oldest first, from the seeded alias groups; also how many events that
        was, and the last holder the entity of `keys` had in them (None: never held)."""
        sequences: set[int] = set()
        ids = await self._ids_of(conn, [key for group in (keys, *holders) for key in group])
        for group in (keys, *holders):
            # An event may name the entity by the id a client read from the entity endpoints.
            named = sorted(group | {ids[key] for key in group if key in ids})
            conditions = [*self._in_chronicle(), chronicle_events.c.entity_keys.overlap(named)]
            if as_of_sequence is not None:
                conditions.append(chronicle_events.c.sequence <= as_of_sequence)
            rows = await conn.execute(
                select(chronicle_events.c.sequence)
                .where(*conditions)
                .order_by(chronicle_events.c.sequence.desc())
                .limit(self.events_per_entity)
            )
            sequences.update(row[0] for row in rows)
        events = await events_at(conn, self.tenant_id, self.chronicle_id, sorted(sequences))
        if any(named_by_id(event) for event in events):
            # This replay gives entities ids of its own (it starts where its window does): read
            # each id the events use as the name of the entity ECS gave it to.
            every = await self._ids_of(
                conn, [*(k.id for k in known), *keys, *(k for g in holders for k in g)]
            )
            display = {normalize_name(k.name): k.name for k in known}
            events = [
                names_for_ids(event, {i: display.get(k, k) for k, i in every.items()}) for event in events
            ]
        world = seeded_world(str(self.chronicle_id), known)
        last_holder: str | None = None
        for event in events:
            apply_event(world, to_chronicle_event(event))
            entity_id = next((world.names[k] for k in keys if k in world.names), None)
            holder = world.entities[entity_id].get(Holder) if entity_id in world.entities else None
            if holder is not None:
                last_holder = holder.holder
        return world, len(events), last_holder

    async def _ids_of(self, conn: Any, keys: Iterable[str]) -> dict[str, str]:
        """The ECS id of the entity each of ``keys`` first named, for those the chronicle names.
        ECS derives an entity's id from the event that first names it (``entity_id_for``), so the
        chronicle alone tells it."""
        wanted = [key for key in dict.fromkeys(keys) if key not in self._ids and not _is_id(key)]
        if wanted:
            cached = (
                self.known_cache.first_mentions(self.chronicle_id) if self.known_cache is not None else {}
            )
            found = {key: cached[key] for key in wanted if key in cached}
            unknown = [key for key in wanted if key not in found]
            if unknown:
                found |= await first_mentions(conn, self.tenant_id, self.chronicle_id, unknown)
                cached.update((key, found[key]) for key in unknown if key in found)
            for key in wanted:
                self._ids[key] = (
                    entity_id_for(str(self.chronicle_id), found[key], key) if key in found else None
                )
        return {key: entity_id for key in keys if (entity_id := self._ids.get(key)) is not None}

    async def known_entities(self) -> tuple[KnownEntity, ...]:
        """Names seen as actors, locations and effect targets in the recent chronicle, every alias
        group of the chronicle, and the request's focus names found anywhere in it."""
        if self._known is not None:
            return self._known
        known = self.known_cache.get(self.chronicle_id, self.chronicle_sequence) if self.known_cache else None
        if known is None:
            known = await self._scan_known()
            if self.known_cache is not None:
                self.known_cache.put(self.chronicle_id, self.chronicle_sequence, known)
        self._known = known + tuple(await self._focus_entities(known))
        return self._known

    async def _scan_known(self) -> tuple[KnownEntity, ...]:
        names: dict[str, KnownEntity] = {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(chronicle_events.c.actors, chronicle_events.c.location, chronicle_events.c.effects)
                .where(*self._in_chronicle())
                .order_by(chronicle_events.c.sequence.desc())
                .limit(self.scan_events)
            )
            for actors, location, effects in rows:
                for key, entity in named_in_event(actors, location, effects):
                    names.setdefault(key, entity)
            groups = alias_groups(await self._alias_declarations(conn))
        alias_keys = {normalize_name(a) for _, aliases in groups.values() for a in aliases}
        for key, (name, _) in groups.items():
            # An entity with aliases may be named lately only by one of them.
            kind = next(
                (names[k].kind for k in (key, *map(normalize_name, groups[key][1])) if k in names),
                "character",
            )
            names.setdefault(key, KnownEntity(id=key, name=name, kind=kind))
        known = []
        for key, entity in sorted(names.items()):
            if key in alias_keys and key not in groups:
                continue  # an alias is a name of another entity, not an entity of its own
            aliases = groups[key][1] if key in groups else []
            known.append(KnownEntity(id=key, name=entity.name, aliases=sorted(aliases), kind=entity.kind))
        return tuple(known)

    async def _alias_declarations(self, conn: Any) -> list[tuple[str, str]]:
        """Every ``(entity, alias)`` declared in the chronicle, in order: the cached ones, then those
        after them. (No index serves this, so the scan reads the chronicle's rows once.)"""
        cache = self.known_cache if self.chronicle_sequence is not None else None
        through, declarations = cache.aliases(self.chronicle_id) if cache is not None else (0, [])
        conditions = [
            *self._in_chronicle(),
            chronicle_events.c.sequence > through,
            chronicle_events.c.effects.contains([{"op": "alias"}]),
        ]
        if self.chronicle_sequence is not None:
            conditions.append(chronicle_events.c.sequence <= self.chronicle_sequence)
        rows = await conn.execute(
            select(chronicle_events.c.effects).where(*conditions).order_by(chronicle_events.c.sequence)
        )
        declarations = declarations + [
            (str(e.get("entity", "")), str(e.get("alias", "")))
            for (effects,) in rows
            for e in effects
            if e.get("op") == "alias"
        ]
        if cache is not None and self.chronicle_sequence is not None and self.chronicle_sequence > through:
            cache.put_aliases(self.chronicle_id, self.chronicle_sequence, declarations)
        return declarations

    async def _focus_entities(self, known: Sequence[KnownEntity]) -> list[KnownEntity]:
        """Focus names the scan did not see, as the latest event naming them names them (found
        through the entity-keys index, however old that event is)."""
        covered = {normalize_name(n) for k in known for n in (k.id, k.name, *k.aliases)}
        wanted = [key for key in dict.fromkeys(map(normalize_name, self.focus)) if key and key not in covered]
        if not wanted:
            return []
        found = []
        async with self.engine.connect() as conn:
            for key in wanted:
                row = (
                    await conn.execute(
                        select(
                            chronicle_events.c.actors, chronicle_events.c.location, chronicle_events.c.effects
                        )
                        .where(*self._in_chronicle(), chronicle_events.c.entity_keys.contains([key]))
                        .order_by(chronicle_events.c.sequence.desc())
                        .limit(1)
                    )
                ).first()
                if row is None:
                    continue
                entity = dict(named_in_event(*row)).get(key)
                if entity is not None:
                    found.append(KnownEntity(id=key, name=entity.name, kind=entity.kind))
        return found

    async def present_at(self, location_id: str, as_of_sequence: int | None, limit: int) -> list[Present]:
        """The characters named in the place's recent events (``PRESENCE_SCAN_EVENTS``) whose
        replay puts them there, newest-named first."""
        return [
            Present(state.name, None if state.status is None else str(state.status.value))
            for state in await self._found_at(location_id, as_of_sequence, PRESENT_KIND, limit)
        ]

    async def items_at(self, location_id: str, as_of_sequence: int | None, limit: int) -> list[EntityState]:
        """The items named in the place's recent events whose replay puts them there (whoever
        holds them), newest-named first."""
        return await self._found_at(location_id, as_of_sequence, ITEM_KIND, limit)

    async def _found_at(
        self, location_id: str, as_of_sequence: int | None, kind: str, limit: int
    ) -> list[EntityState]:
        known = {k.id: k for k in await self.known_entities()}
        place = known.get(location_id)
        keys = sorted({location_id, *(normalize_name(a) for a in place.aliases)} if place else {location_id})
        conditions = [*self._in_chronicle(), chronicle_events.c.entity_keys.overlap(keys)]
        if as_of_sequence is not None:
            conditions.append(chronicle_events.c.sequence <= as_of_sequence)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(chronicle_events.c.entity_keys)
                .where(*conditions)
                .order_by(chronicle_events.c.sequence.desc())
                .limit(PRESENCE_SCAN_EVENTS)
            )
            named = [key for (entity_keys,) in rows for key in entity_keys]
        # The name scan's guess of a kind is a guess (an item that is moved looks like someone
        # who moves): for items, anything not a place is a candidate; the replay decides.
        candidates = [
            key
            for key in dict.fromkeys(named)
            if key in known
            and key not in keys
            and (known[key].kind == kind if kind == PRESENT_KIND else known[key].kind != "location")
        ][: 2 * limit]
        found = []
        for state in await self.entity_states(candidates, as_of_sequence):
            # The kind the replay found (a spawn says "item") over the name scan's guess.
            if state.kind != kind or state.location is None:
                continue
            if normalize_name(str(state.location.value)) in keys:
                found.append(state)
        return found[:limit]

    async def entity_states(self, entity_ids: Sequence[str], as_of_sequence: int | None) -> list[EntityState]:
        """`entity_ids` are normalized names (from `known_entities`)."""
        if not entity_ids:
            return []
        known_list = await self.known_entities()
        known = {k.id: k for k in known_list}
        states = []
        async with self.engine.connect() as conn:
            for key in entity_ids:
                entity = known.get(key)
                keys = {key, *(normalize_name(a) for a in entity.aliases)} if entity else {key}
                world, replayed, last_holder = await self._replay_events_of(
                    conn, keys, as_of_sequence, known_list
                )
                entity_id = next((world.names[k] for k in sorted(keys) if k in world.names), None)
                if entity_id is None or not replayed:
                    continue  # not in the chronicle (by then): the seed alone does not make it exist
                # A held item goes where its holder goes, and one destroyed while held lies where
                # its last holder was then: follow the holder's events too, and its holder's (a
                # drive in a case that someone carries), up to HOLDER_DEPTH holders.
                replayed_keys, holder = set(keys), last_holder
                holder_groups: list[set[str]] = []
                for _ in range(HOLDER_DEPTH):
                    if holder is None or holder not in world.entities:
                        break
                    holder_entity = world.entities[holder]
                    holder_keys = {normalize_name(n) for n in (holder_entity.name, *holder_entity.aliases)}
                    if holder_keys <= replayed_keys:
                        break
                    replayed_keys |= holder_keys
                    holder_groups.append(holder_keys)
                    world, _, _ = await self._replay_events_of(
                        conn, keys, as_of_sequence, known_list, holders=holder_groups
                    )
                    entity_id = next((world.names[k] for k in sorted(keys) if k in world.names), entity_id)
                    holder_id = next((world.names[k] for k in sorted(holder_keys) if k in world.names), None)
                    held_by = None if holder_id is None else world.entities[holder_id].get(Holder)
                    holder = None if held_by is None else held_by.holder
                state = state_from_world(world, entity_id)
                if state is not None:
                    state = await self._still_held(conn, state, keys, as_of_sequence, known_list)
                    if as_of_sequence is not None and state.aliases:
                        state = await self._aliases_by(conn, state, keys, as_of_sequence)
                    states.append(msgspec.structs.replace(state, id=key))
            return await cite_relationships(conn, self.tenant_id, self.chronicle_id, states)

    async def _aliases_by(
        self, conn: Any, state: EntityState, keys: set[str], as_of_sequence: int
    ) -> EntityState:
        """``state`` with only the aliases declared by ``as_of_sequence``: the replay knows every
        alias from the start (an event may use one before the replay reaches its declaration)."""
        rows = await conn.execute(
            select(chronicle_events.c.effects).where(
                *self._in_chronicle(),
                chronicle_events.c.sequence <= as_of_sequence,
                chronicle_events.c.effects.contains([{"op": "alias"}]),
                chronicle_events.c.entity_keys.overlap(sorted(keys)),
            )
        )
        declared = {
            normalize_name(str(effect.get("alias", "")))
            for (effects,) in rows
            for effect in effects
            if effect.get("op") == "alias"
        }
        return msgspec.structs.replace(
            state, aliases=[a for a in state.aliases if normalize_name(a) in declared]
        )

    async def _still_held(
        self,
        conn: Any,
        state: EntityState,
        keys: set[str],
        as_of_sequence: int | None,
        known: Sequence[KnownEntity],
    ) -> EntityState:
        """``state`` without the items it no longer holds. A hand-over need not name the one who
        gave the thing ("Carl takes the lamp"), so the holder's own events cannot tell that the
        lamp left: an item named in any event after it was handed over is replayed on its own,
        and kept only if it is still this entity's."""
        if not state.inventory:
            return state
        by_name = {normalize_name(k.name): k for k in known}
        names_of: dict[str, set[str]] = {}
        for fact in state.inventory:
            item = by_name.get(normalize_name(str(fact.value)))
            names_of[str(fact.value)] = {
                normalize_name(n) for n in (str(fact.value), *(item.aliases if item else ()))
            }
        last = await last_mentions(
            conn, self.tenant_id, self.chronicle_id, sorted(set().union(*names_of.values())),
            as_of_sequence if as_of_sequence is not None else self.chronicle_sequence or 2**63 - 1,
        )  # fmt: skip
        kept: list[Fact] = []
        for fact in state.inventory:
            item_keys = names_of[str(fact.value)]
            if max((last.get(k, 0) for k in item_keys), default=0) <= (fact.sequence or 0):
                kept.append(fact)
                continue
            world, _, _ = await self._replay_events_of(conn, item_keys, as_of_sequence, known)
            item_id = next((world.names[k] for k in sorted(item_keys) if k in world.names), None)
            holder = None if item_id is None else world.entities[item_id].get(Holder)
            holder_entity = None if holder is None else world.entities.get(holder.holder)
            if (
                holder_entity is not None
                and {normalize_name(n) for n in (holder_entity.name, *holder_entity.aliases)} & keys
            ):
                kept.append(fact)
        return msgspec.structs.replace(state, inventory=kept)


HOLDER_DEPTH: Final = 4
"""How many holders up the degraded replay follows an item (drive -> case -> courier)."""
PRESENT_KIND = "character"
"""Who is "at" a place: its characters (the items they carry are in their inventories)."""
ITEM_KIND = "item"
"""What can be left at a place (``rag.context.lying_at``)."""
ITEMS_READ = 3
"""``items_at`` from ECS reads this many times its limit: the items someone at the place carries
are there too, but not left there."""
PRESENCE_SCAN_EVENTS: Final = 500
"""Degraded presence (context bundles and the ``present_at`` question alike): the place's most
recent events, whose entities are replayed to see who is still there (an entity that arrived
before them and never left is missed)."""


def present_in_world(state: WorldState, location_id: str, limit: int) -> list[Present]:
    """The characters whose place in a reducer state is ``location_id``, in order of appearance."""
    present = [
        entity
        for entity in state.entities.values()
        if entity.kind == PRESENT_KIND and location_of(state, entity.id) == location_id
    ]
    present.sort(key=lambda e: (e.created_sequence, e.id))
    return [
        Present(entity.name, status.value if (status := entity.get(Status)) is not None else None)
        for entity in present[:limit]
    ]


def items_in_world(state: WorldState, location_id: str) -> list[str]:
    """The ids of the items whose place in a reducer state is ``location_id`` (whoever holds them),
    in order of appearance."""
    items = [
        entity
        for entity in state.entities.values()
        if entity.kind == ITEM_KIND and location_of(state, entity.id) == location_id
    ]
    items.sort(key=lambda e: (e.created_sequence, e.id))
    return [entity.id for entity in items]


def named_in_event(
    actors: Sequence[dict[str, Any]], location: str | None, effects: Sequence[dict[str, Any]]
) -> list[tuple[str, KnownEntity]]:
    """The names one stored event uses, keyed by normalized name, with the kind their role implies
    (actor or recipient: character, location, transferred item: item; aliases are not names)."""
    out = [
        (normalize_name(a["name"]), KnownEntity(id="", name=a["name"]))
        for a in actors
        if not _is_id(a["name"])
    ]
    if location:
        out.append((normalize_name(location), KnownEntity(id="", name=location, kind="location")))
    for effect in effects:
        if effect.get("op") == "valence":
            continue
        for field, kind in (("entity", "character"), ("item", "item"), ("to", "character")):
            value = effect.get(field)
            if isinstance(value, str) and not _is_id(value):  # an id is a reference, not a name
                out.append((normalize_name(value), KnownEntity(id="", name=value, kind=kind)))
    return out


_REFERENCE_FIELDS: Final = ("entity", "item", "to", "from")


def _is_id(reference: str) -> bool:
    """Whether a reference is an entity id (a UUID) rather than a name."""
    try:
        uuid.UUID(reference.strip())
    except ValueError:
        return False
    return True


def named_by_id(event: StoredEvent) -> bool:
    """Whether an event names an entity by its id (as actor or in an effect)."""
    return any(_is_id(a["name"]) for a in event.actors) or any(
        isinstance(value := effect.get(field), str) and _is_id(value)
        for effect in event.effects
        for field in _REFERENCE_FIELDS
    )


def names_for_ids(event: StoredEvent, names: Mapping[str, str]) -> StoredEvent:
    """The event with each entity id it uses replaced by the name in ``names`` (ids not there are
    kept: a replay then knows the entity by that id only)."""

    def name(reference: str) -> str:
        return names.get(reference.strip().lower(), reference) if _is_id(reference) else reference

    actors = [{**actor, "name": name(actor["name"])} for actor in event.actors]
    effects = [
        {field: name(value) if field in _REFERENCE_FIELDS and isinstance(value, str) else value
         for field, value in effect.items()}
        for effect in event.effects
    ]  # fmt: skip
    return msgspec.structs.replace(event, actors=actors, effects=effects)


def alias_groups(declarations: Iterable[tuple[str, str]]) -> dict[str, tuple[str, list[str]]]:
    """Alias declarations ``(entity, alias)`` in chronicle order -> ``{normalized name: (name,
    aliases)}``, as the reducer would accept them: an alias of an alias belongs to the same
    entity, and an alias already given to another entity stays with the first (``alias_conflict``)."""
    owner: dict[str, str] = {}
    groups: dict[str, tuple[str, list[str]]] = {}
    for entity, alias in declarations:
        key, alias_key = normalize_name(entity), normalize_name(alias)
        if not key or not alias_key:
            continue
        key = owner.get(key, key)
        if alias_key == key or alias_key in owner or alias_key in groups:
            continue
        owner[alias_key] = key
        groups.setdefault(key, (" ".join(entity.split()), []))[1].append(" ".join(alias.split()))
    return groups


def seeded_world(chronicle_id: str, known: Sequence[KnownEntity]) -> WorldState:
    """An empty world that already knows every entity that has aliases, under all its names."""
    world = WorldState(chronicle_id=chronicle_id)
    for entity in known:
        key = normalize_name(entity.name)
        if not entity.aliases or not key or key in world.names:
            continue
        entity_id = entity_id_for(chronicle_id, 0, key)
        apply_change(
            world,
            EntityCreated(
                event_id="", sequence=0, entity_id=entity_id, name=entity.name, entity_kind=entity.kind
            ),
        )
        for alias in entity.aliases:
            if normalize_name(alias) and normalize_name(alias) not in world.names:
                apply_change(world, AliasAdded(event_id="", sequence=0, entity_id=entity_id, alias=alias))
    return world
