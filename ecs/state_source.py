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
from collections.abc import Hashable, Sequence
from typing import Any

import msgspec
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ecs.cache import EntityCache
from ecs.components import Holder, Position, Status
from ecs.projector import replay_stored, to_chronicle_event
from ecs.queries import complete_views, get_entity_core
from ecs.reducer import Entity, Provenance, WorldState, apply_event, location_of
from ecs.repository import Checkpoint, read_checkpoint
from ecs.schema import ecs_components, ecs_entities
from rag.context import EntityState, Fact, RelationFact
from rag.events import normalize_name
from rag.query_analysis import KnownEntity
from rag.schema import chronicle_events
from rag.store import events_at, events_up_to

__all__ = ["ChronicleReplayStateSource", "EcsStateSource", "KnownNamesCache", "state_from_world"]

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
        latest = max(record.provenance.values(), key=lambda p: p.sequence, default=None)
        relationships.append(
            RelationFact(
                other_id=other.id,
                other=other.name,
                direction="outgoing" if outgoing else "incoming",
                types=sorted(record.types),
                valence={k: record.valence[k] for k in sorted(record.valence)},
                sequence=record.updated_sequence,
                event_id=latest.event_id if latest is not None else None,
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
        holder=None
        if holder_component is None
        else _fact(state.entities[holder_component.holder].name, entity.provenance.get("holder")),
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
    ) -> None:
        self.chronicle_engine = chronicle_engine
        self.ecs_engine = ecs_engine
        self.tenant_id = tenant_id
        self.chronicle_id = chronicle_id
        self.cache = cache
        self.names = names
        self._checkpoint: Checkpoint | None = None
        self._checkpoint_read = False

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
        version = None if checkpoint is None else (checkpoint.last_sequence, checkpoint.updated_at)
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
            provenance = await self._provenance(conn, sorted(set(related), key=lambda u: u.int))
        return [self._from_view(view, provenance) for view in views]

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
            # A held item is where its holder is: its place changed when it was taken and
            # whenever the holder moved since.
            candidates = [own.get("holder"), provenance.get((view.holder.id, "position"))]
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
            holder=None if view.holder is None else _fact(view.holder.name, own.get("holder")),
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
                    valence={k: r.valence[k] for k in sorted(r.valence)},
                    sequence=r.updated_sequence,
                )
                for r in view.relationships
            ],
        )

    async def replayed(self, entity_ids: Sequence[str], as_of_sequence: int) -> list[EntityState]:
        """The entities as they were at `as_of_sequence`, replayed from the chronicle."""
        async with self.chronicle_engine.connect() as conn:
            events = await events_up_to(conn, self.tenant_id, self.chronicle_id, as_of_sequence)
        state, _, _ = replay_stored(events, self.chronicle_id)
        return [s for i in entity_ids if (s := state_from_world(state, i)) is not None]


class KnownNamesCache:
    """Names known in each chronicle, kept a few seconds: degraded mode serves many requests from
    the same chronicle, and scanning its recent events for names on each one would be wasteful."""

    def __init__(self, ttl_seconds: float = 60.0, max_chronicles: int = 1_000) -> None:
        self._ttl = ttl_seconds
        self._max = max_chronicles
        # Keyed by a version of the chronicle too (its last sequence, or the ECS checkpoint): a new
        # event may bring a new name.
        self._entries: dict[uuid.UUID, tuple[float, Hashable, tuple[KnownEntity, ...]]] = {}

    def get(self, chronicle_id: uuid.UUID, version: Hashable) -> tuple[KnownEntity, ...] | None:
        entry = self._entries.get(chronicle_id)
        if entry is None or entry[0] < time.monotonic() or entry[1] != version:
            return None
        return entry[2]

    def put(self, chronicle_id: uuid.UUID, version: Hashable, known: tuple[KnownEntity, ...]) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[chronicle_id] = (time.monotonic() + self._ttl, version, known)


class ChronicleReplayStateSource:
    """Degraded mode: state of the focus entities replayed from their most recent events.

    Entities are identified by their normalized name here (there is no ECS id to use). Replay is
    bounded: the last `events_per_entity` events that involve each focus entity, then stop.
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
    ) -> None:
        self.engine = chronicle_engine
        self.tenant_id = tenant_id
        self.chronicle_id = chronicle_id
        self.events_per_entity = events_per_entity
        self.scan_events = scan_events
        self.known_cache = known_cache
        self.chronicle_sequence = chronicle_sequence

    async def position(self) -> int | None:
        return None

    async def _replay_events_of(self, conn: Any, keys: set[str], as_of_sequence: int | None) -> WorldState:
        """Replay the most recent events that involve any of `keys` (bounded), oldest first."""
        conditions = [
            chronicle_events.c.tenant_id == self.tenant_id,
            chronicle_events.c.chronicle_id == self.chronicle_id,
            chronicle_events.c.entity_keys.overlap(sorted(keys)),
        ]
        if as_of_sequence is not None:
            conditions.append(chronicle_events.c.sequence <= as_of_sequence)
        rows = await conn.execute(
            select(chronicle_events.c.sequence)
            .where(*conditions)
            .order_by(chronicle_events.c.sequence.desc())
            .limit(self.events_per_entity)
        )
        events = await events_at(conn, self.tenant_id, self.chronicle_id, [r[0] for r in rows])
        world = WorldState(chronicle_id=str(self.chronicle_id))
        for event in events:
            apply_event(world, to_chronicle_event(event))
        return world

    async def known_entities(self) -> tuple[KnownEntity, ...]:
        """Names seen as actors, locations and effect targets in the recent chronicle."""
        if self.known_cache is not None:
            cached = self.known_cache.get(self.chronicle_id, self.chronicle_sequence)
            if cached is not None:
                return cached
        known = await self._scan_known()
        if self.known_cache is not None:
            self.known_cache.put(self.chronicle_id, self.chronicle_sequence, known)
        return known

    async def _scan_known(self) -> tuple[KnownEntity, ...]:
        names: dict[str, KnownEntity] = {}
        aliases: dict[str, set[str]] = {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(chronicle_events.c.actors, chronicle_events.c.location, chronicle_events.c.effects)
                .where(
                    chronicle_events.c.tenant_id == self.tenant_id,
                    chronicle_events.c.chronicle_id == self.chronicle_id,
                )
                .order_by(chronicle_events.c.sequence.desc())
                .limit(self.scan_events)
            )
            for actors, location, effects in rows:
                for actor in actors:
                    names.setdefault(normalize_name(actor["name"]), KnownEntity(id="", name=actor["name"]))
                if location:
                    names.setdefault(
                        normalize_name(location), KnownEntity(id="", name=location, kind="location")
                    )
                for effect in effects:
                    if effect.get("op") == "alias":
                        aliases.setdefault(normalize_name(effect["entity"]), set()).add(effect["alias"])
                    for field, kind in (("entity", "character"), ("item", "item"), ("to", "character")):
                        value = effect.get(field)
                        if isinstance(value, str) and effect.get("op") != "valence":
                            names.setdefault(normalize_name(value), KnownEntity(id="", name=value, kind=kind))
        alias_keys = {normalize_name(a) for group in aliases.values() for a in group}
        known = []
        for key, entity in sorted(names.items()):
            if key in alias_keys and key not in aliases:
                continue  # an alias is a name of another entity, not an entity of its own
            known.append(
                KnownEntity(id=key, name=entity.name, aliases=sorted(aliases.get(key, ())), kind=entity.kind)
            )
        return tuple(known)

    async def entity_states(self, entity_ids: Sequence[str], as_of_sequence: int | None) -> list[EntityState]:
        """`entity_ids` are normalized names (from `known_entities`)."""
        if not entity_ids:
            return []
        known = {k.id: k for k in await self.known_entities()}
        states = []
        async with self.engine.connect() as conn:
            for key in entity_ids:
                entity = known.get(key)
                keys = {key, *(normalize_name(a) for a in entity.aliases)} if entity else {key}
                world = await self._replay_events_of(conn, keys, as_of_sequence)
                entity_id = next((world.names[k] for k in sorted(keys) if k in world.names), None)
                if entity_id is None:
                    continue
                holder = world.entities[entity_id].get(Holder)
                if holder is not None and holder.holder in world.entities:
                    # A held item goes where its holder goes: follow the holder's events too.
                    holder_entity = world.entities[holder.holder]
                    holder_keys = {normalize_name(n) for n in (holder_entity.name, *holder_entity.aliases)}
                    world = await self._replay_events_of(conn, keys | holder_keys, as_of_sequence)
                    entity_id = next((world.names[k] for k in sorted(keys) if k in world.names), entity_id)
                state = state_from_world(world, entity_id)
                if state is not None:
                    states.append(msgspec.structs.replace(state, id=key))
        return states
