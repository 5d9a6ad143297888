"""Hybrid questions: typed answers that combine the ECS read model with the chronicle's event log.

Each question this service exists to answer is one request type (a tagged union on ``type``) with
one result type, and every fact in a result carries its provenance (event sequence and id):

``entity_fate``
    What happened to X and where is X now: the current state (ECS) and the key events - moves,
    holder changes, items gained and lost, status changes, deaths - from a replay of the events
    that name X.
``event_participants``
    Who was present at event Y (its actors, plus whoever the replay up to Y puts at its location)
    and how they now stand toward each other (current relationships, ECS).
``present_at``
    Who is at place X now (dead ones flagged), optionally with their valence toward Y, filtered by
    exclusive bounds.
``relationship_history``
    Every valence change from A to B, with the event that made it, and the current values.
``item_interactions``
    Who held item Z, in order, with the event that made each the holder, and the other events that
    involved it.
``state_as_of``
    X's state right after a sequence, or at a story time (the last event that occurred by then),
    always replayed from the chronicle.

Degraded mode: when the ECS database is unreachable (or has not projected a referenced entity
yet), every answer falls back to the chronicle - name resolution through the names the chronicle
uses, current state by a bounded replay of the entity's recent events (``ChronicleReplayStateSource``),
valence histories by replaying the events that name both entities - and each result says where it
came from (``answered_from``) and which parts it could not give (``unavailable``, with the reason).
Errors that are not outages are never swallowed.

Functions take a :class:`Scope` (engines and tenant/chronicle ids), never commit, and know
nothing of HTTP: unknown references raise :class:`UnknownReference` (naming the request field).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Final, Literal, TypeVar, assert_never

import msgspec
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from ecs.breaker import BreakerOpen, CircuitBreaker, SlowCall
from ecs.cache import EntityCache
from ecs.components import DEAD_STATUSES
from ecs.criteria import ValenceBound
from ecs.projector import replay_stored
from ecs.queries import (
    EntityFilters,
    EntityRef,
    EntitySummary,
    ValencePoint,
    build_interactions,
    entity_event_keys,
    event_references,
    find_entity,
    get_entity_core,
    list_entities,
    resolve_references,
    state_at_story_time,
    type_data,
    valence_history,
)
from ecs.queries import state_as_of as replay_until
from ecs.reducer import (
    ComponentRemoved,
    ComponentSet,
    EventChanges,
    RelationshipRemoved,
    RelationshipSet,
    ValenceChanged,
    WorldState,
    location_of,
    lookup,
    relationship_key,
)
from ecs.schema import ecs_components, ecs_entities, ecs_relationships, ecs_valence_history
from ecs.state_source import (
    KNOWN_ENTITY_LIMIT,
    PRESENCE_SCAN_EVENTS,
    ChronicleReplayStateSource,
    EcsStateSource,
    cite_relationships,
    named_by_id,
    names_for_ids,
    state_from_world,
)
from rag.context import EntityState
from rag.events import Effect, TransferEffect, normalize_name
from rag.outages import is_unavailable_error
from rag.query_analysis import KnownEntity, name_words
from rag.schema import chronicle_events
from rag.store import StoredEvent, events_at, get_chronicle

__all__ = [
    "MAX_EVENTS",
    "MAX_MEMBERS",
    "PRESENCE_SCAN_EVENTS",
    "EntityFateQuery",
    "EntityFateResult",
    "EventInfo",
    "EventParticipant",
    "EventParticipantsQuery",
    "EventParticipantsResult",
    "FateChange",
    "FateEvent",
    "Holding",
    "HybridQuery",
    "HybridResult",
    "InvalidQuery",
    "ItemEvent",
    "ItemInteractionsQuery",
    "ItemInteractionsResult",
    "PresentAtQuery",
    "PresentAtResult",
    "PresentMember",
    "Provenance",
    "QueryError",
    "Ref",
    "ReferenceUnavailable",
    "RelationshipHistoryQuery",
    "RelationshipHistoryResult",
    "RoleOf",
    "Scope",
    "Standing",
    "StateAsOfQuery",
    "StateAsOfResult",
    "TypeChange",
    "Unavailable",
    "UnknownReference",
    "ValenceChange",
    "ValenceFact",
    "answer",
    "entity_fate",
    "event_participants",
    "item_interactions",
    "present_at",
    "relationship_history",
    "state_as_of",
]

log = logging.getLogger("lore.hybrid")

MAX_EVENTS: Final = 5_000
"""Events naming an entity (or a pair) that one answer replays: the most recent ones."""
MAX_MEMBERS: Final = 1_000
"""Entities one ``present_at`` answer lists."""
MAX_HOLDER_HOPS: Final = 8
_PAGE: Final = 500

T = TypeVar("T")

# ----------------------------------------------------------------------------------------------
# Errors


class QueryError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownReference(QueryError):
    """A reference (entity or event) that this chronicle does not know."""


class ReferenceUnavailable(QueryError):
    """A reference that only the (unavailable) ECS can resolve, such as an entity id."""


class InvalidQuery(QueryError):
    """A request whose fields do not fit together."""


# ----------------------------------------------------------------------------------------------
# Requests

Reference = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
"""An entity id, name or alias (case- and whitespace-insensitive)."""
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Bound = Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)]


class _Query(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class EntityFateQuery(_Query, frozen=True, tag="entity_fate"):
    entity: Reference


class EventParticipantsQuery(_Query, frozen=True, tag="event_participants"):
    event: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    """The event's id, its ``external_id`` or its sequence (``#48`` or ``48``)."""
    dimension: Label | None = None
    """Only this valence dimension in ``standing`` (all when omitted)."""


class PresentAtQuery(_Query, frozen=True, tag="present_at"):
    location: Reference
    toward: Reference | None = None
    """Give each one's valence toward this entity (and filter by ``min``/``max``)."""
    dimension: Label = "trust"
    min: Bound | None = None
    """Exclusive: keep those whose valence toward ``toward`` is greater than this."""
    max: Bound | None = None
    """Exclusive: keep those whose valence toward ``toward`` is less than this."""
    kind: Label | None = "character"
    """Only entities of this kind; ``null`` for every kind."""

    def check(self) -> None:
        if self.toward is None:
            for field in ("min", "max"):
                if getattr(self, field) is not None:
                    raise InvalidQuery(field, "bounds the valence toward `toward`, which is missing")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise InvalidQuery("max", "must be greater than `min`")


class RelationshipHistoryQuery(_Query, frozen=True, tag="relationship_history"):
    a: Reference
    """The relationship is directed: from ``a`` to ``b``."""
    b: Reference
    dimension: Label | None = None


class ItemInteractionsQuery(_Query, frozen=True, tag="item_interactions"):
    item: Reference


class StateAsOfQuery(_Query, frozen=True, tag="state_as_of"):
    entity: Reference
    sequence: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """The state right after this event sequence."""
    occurred_at: Annotated[dt.datetime, msgspec.Meta(tz=True)] | None = None
    """The state after the last event (by story time) that occurred at or before this time."""

    def check(self) -> None:
        if self.sequence is not None and self.occurred_at is not None:
            raise InvalidQuery("occurred_at", "give either `sequence` or `occurred_at`, not both")
        if self.sequence is None and self.occurred_at is None:
            raise InvalidQuery("sequence", "one of `sequence` or `occurred_at` is required")


HybridQuery = (
    EntityFateQuery
    | EventParticipantsQuery
    | PresentAtQuery
    | RelationshipHistoryQuery
    | ItemInteractionsQuery
    | StateAsOfQuery
)

# ----------------------------------------------------------------------------------------------
# Results

Source = Literal["ecs", "chronicle"]


class Unavailable(msgspec.Struct, frozen=True):
    part: str
    """The result field (or aspect, such as ``ids``) that could not be given."""
    reason: str


class Ref(msgspec.Struct, frozen=True):
    id: uuid.UUID | None
    """The ECS entity id; ``None`` when the answer came from the chronicle without one."""
    name: str


class Provenance(msgspec.Struct, frozen=True):
    sequence: int
    event_id: uuid.UUID


class EventInfo(msgspec.Struct, frozen=True):
    event_id: uuid.UUID
    sequence: int
    external_id: str | None
    kind: str
    summary: str
    occurred_at: dt.datetime | None


class ValenceFact(msgspec.Struct, frozen=True):
    value: float
    sequence: int | None = None
    event_id: uuid.UUID | None = None


class _Result(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    answered_from: Source
    """``ecs``: current state came from the ECS read model; ``chronicle``: replayed from the
    event log (degraded mode, or a question that is a replay by nature, like ``state_as_of``)."""
    unavailable: list[Unavailable] = []


FateWhat = Literal[
    "moved", "held_by", "put_down", "status", "died", "received", "lost", "component_set", "component_removed"
]


class FateChange(msgspec.Struct, frozen=True, omit_defaults=True):
    what: FateWhat
    other: Ref | None = None
    """The place (moved), holder (held_by) or item (received, lost)."""
    counterpart: Ref | None = None
    """Who the item came from (received) or went to (lost)."""
    value: str | None = None
    """The status (status, died) or component name (component_set, component_removed)."""


class FateEvent(msgspec.Struct, frozen=True):
    event: EventInfo
    changes: list[FateChange]


class EntityFateResult(_Result, frozen=True, tag="entity_fate"):
    entity: Ref
    dead: bool
    current: EntityState | None
    """Location, status, holder, inventory... each with the event that established it."""
    death: EventInfo | None
    events: list[FateEvent]
    """The key events, in order."""


class EventParticipant(msgspec.Struct, frozen=True):
    entity: Ref
    roles: list[str]
    """``actor`` or ``actor:<role>``, or ``present`` (at the location, not an actor)."""
    status: str | None
    """At the time of the event."""
    dead: bool


class Standing(msgspec.Struct, frozen=True, rename={"from_": "from"}):
    from_: Ref
    to: Ref
    types: list[str]
    valence: dict[str, ValenceFact]


class EventParticipantsResult(_Result, frozen=True, tag="event_participants"):
    event: EventInfo
    location: Ref | None
    participants: list[EventParticipant]
    standing: list[Standing]
    """How each ordered pair of participants stands now (pairs with a relationship only)."""


class PresentMember(msgspec.Struct, frozen=True):
    entity: Ref
    kind: str
    status: str | None
    dead: bool
    since: Provenance | None
    """The event that put it there (or gave it to the holder that is there)."""
    valence: ValenceFact | None
    """Toward ``toward``, in ``dimension``."""


class PresentAtResult(_Result, frozen=True, tag="present_at"):
    location: Ref
    toward: Ref | None
    dimension: str | None
    present: list[PresentMember]


class ValenceChange(msgspec.Struct, frozen=True):
    sequence: int
    event_id: uuid.UUID
    external_id: str | None
    kind: str | None
    summary: str | None
    dimension: str
    previous: float | None
    delta: float
    value: float


class TypeChange(msgspec.Struct, frozen=True):
    """A relation type set (``relate``) or removed (``unrelate``) from ``a`` to ``b``."""

    sequence: int
    event_id: uuid.UUID
    external_id: str | None
    kind: str | None
    summary: str | None
    type: str
    change: Literal["related", "unrelated"]
    data: dict[str, Any] | None = None
    """What a ``relate`` said of the relation (``{"charge": "embezzlement"}``); a relate of a type
    already set with new data is a change too."""


class RelationshipHistoryResult(_Result, frozen=True, tag="relationship_history", rename={"from_": "from"}):
    from_: Ref
    to: Ref
    changes: list[ValenceChange]
    current: dict[str, ValenceFact]
    type_changes: list[TypeChange] = []
    """Relation types set and removed, in order (both modes: replayed from the events naming both)."""
    current_types: list[str] = []
    current_type_data: dict[str, dict[str, Any]] = {}
    """The data of each current type that has some."""


class RoleOf(msgspec.Struct, frozen=True):
    entity: Ref
    roles: list[str]


class Holding(msgspec.Struct, frozen=True):
    holder: Ref | None
    """``None`` when the item was put down (moved, un-held) or destroyed in the hand."""
    previous: Ref | None
    event: EventInfo
    participants: list[RoleOf]


class ItemEvent(msgspec.Struct, frozen=True):
    event: EventInfo
    roles: list[str]
    """How the item took part."""
    participants: list[RoleOf]


class ItemInteractionsResult(_Result, frozen=True, tag="item_interactions"):
    item: Ref
    holders: list[Holding]
    events: list[ItemEvent]
    """The other events that involved the item (not holder changes, but its destruction, which
    also ends a holding, is here too)."""


class StateAsOfResult(_Result, frozen=True, tag="state_as_of"):
    entity: Ref
    sequence: int
    """The state is the one right after this sequence (by ``occurred_at``: the last event recorded
    that had happened by then, without those in ``later_in_story``)."""
    event: EventInfo | None
    """The last event at or before ``sequence`` (by ``occurred_at``: the last to happen by then)."""
    state: EntityState | None
    """``None`` when the entity did not exist yet."""
    later_in_story: list[int] = []
    """By ``occurred_at``: events recorded before ``sequence`` that happen after that story time,
    left out of the state (a chronicle that is not in story order)."""


HybridResult = (
    EntityFateResult
    | EventParticipantsResult
    | PresentAtResult
    | RelationshipHistoryResult
    | ItemInteractionsResult
    | StateAsOfResult
)

# ----------------------------------------------------------------------------------------------
# Scope and resolved references


class _NotProjected(Exception):
    """ECS is up but does not know the reference (yet): answer from the chronicle instead."""

    def __init__(self, field: str, ref: str) -> None:
        super().__init__(f"{field} {ref!r} is not in the ECS read model (yet)")


@dataclasses.dataclass(frozen=True)
class Scope:
    chronicle_engine: AsyncEngine
    ecs_engine: AsyncEngine
    """The ECS database's engine (may be the chronicle's)."""
    tenant_id: uuid.UUID
    chronicle_id: uuid.UUID
    cache: EntityCache | None = None
    breaker: CircuitBreaker | None = None
    """Guards every ECS read; all reads of one question share `ecs_budget_seconds`."""
    ecs_budget_seconds: float = 0.25
    ecs_disabled: str | None = None
    """Why ECS must not be used at all for this question (runtime flag, open breaker), or None."""


@dataclasses.dataclass(frozen=True)
class _Named:
    """A resolved entity: by ECS (``id`` set) or by the chronicle's names (``id`` None)."""

    key: str
    """Normalized canonical name."""
    name: str
    aliases: list[str]
    kind: str
    keys: list[str]
    """The ``entity_keys`` events naming it carry."""
    id: uuid.UUID | None = None
    kind_known: bool = True
    """False for a name only seen in events (a replay takes it for a character)."""

    @property
    def ref(self) -> Ref:
        return Ref(self.id, self.name)


def _as_uuid(ref: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(ref.strip())
    except ValueError:
        return None


def _unknown(field: str, ref: str) -> UnknownReference:
    return UnknownReference(field, f"no entity {ref!r} in this chronicle")


# ----------------------------------------------------------------------------------------------
# The chronicle's own names (degraded resolution)


SUGGESTIONS = 3
"""Names an unknown-entity error suggests at most."""


class _Directory:
    """Names and aliases the chronicle's recent events use (from ``known_entities``)."""

    def __init__(self, known: Iterable[KnownEntity]) -> None:
        self.entities = {k.id: k for k in known if k.id}
        self.owner: dict[str, str] = {}
        for entity in self.entities.values():
            for alias in entity.aliases:
                self.owner.setdefault(normalize_name(alias), entity.id)

    def canonical(self, key: str) -> str:
        return key if key in self.entities else self.owner.get(key, key)

    def display(self, name: str) -> str:
        entity = self.entities.get(self.canonical(normalize_name(name)))
        return entity.name if entity is not None else " ".join(name.split())

    def meant(self, ref: str) -> str | None:
        """The one entity a reference made of words of its name means ("Idris" for Idris Mollo, as
        in context questions); None when no entity or several have all those words."""
        words = name_words(ref)
        if not words:
            return None
        found = {
            entity.name
            for entity in self.entities.values()
            if any(words <= name_words(label) for label in (entity.name, *entity.aliases))
        }
        return found.pop() if len(found) == 1 else None

    def suggestions(self, ref: str, limit: int = SUGGESTIONS) -> list[str]:
        """Names sharing a word with an unknown reference ("Silas" -> "Silas Crane"), for its error."""
        words = name_words(ref)
        found = {
            entity.name
            for entity in self.entities.values()
            if any(words & name_words(label) for label in (entity.name, *entity.aliases))
        }
        return sorted(found, key=lambda n: (n.casefold(), n))[:limit]


class _Names:
    """Display references for names found in events: ECS ids and names, else the chronicle's."""

    def __init__(self, ecs: Mapping[str, EntityRef] | None, directory: _Directory | None) -> None:
        self.ecs = ecs
        self.directory = directory

    def ref(self, name: str) -> Ref:
        if self.ecs is not None:
            found = self.ecs.get(normalize_name(name))
            if found is not None:
                return Ref(found.id, found.name)
        if self.directory is not None:
            return Ref(None, self.directory.display(name))
        return Ref(None, name)

    def world_ref(self, world: WorldState, entity_id: str | None) -> Ref | None:
        if entity_id is None or entity_id not in world.entities:
            return None
        return self.ref(world.entities[entity_id].name)


# ----------------------------------------------------------------------------------------------
# One request: ECS while it answers, the chronicle after


async def _ecs_known(conn: AsyncConnection, scope: Scope) -> list[KnownEntity]:
    """The chronicle's entities as ECS names them (at most ``KNOWN_ENTITY_LIMIT``)."""
    e = ecs_entities.c
    rows = await conn.execute(
        select(e.id, e.name, e.aliases, e.kind)
        .where(e.tenant_id == scope.tenant_id, e.chronicle_id == scope.chronicle_id)
        .order_by(e.created_sequence, e.id)
        .limit(KNOWN_ENTITY_LIMIT)
    )
    return [KnownEntity(id=str(r.id), name=r.name, aliases=list(r.aliases), kind=r.kind) for r in rows]


class _Session:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.reason: str | None = None
        self.outage = False
        """ECS is unreachable (not merely lacking an entity it has not projected yet)."""
        self._directory: _Directory | None = None
        self._deadline: float | None = None
        if scope.ecs_disabled is not None:
            self.reason, self.outage = scope.ecs_disabled, True

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        breaker = self.scope.breaker
        if breaker is None:
            return await call()
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + self.scope.ecs_budget_seconds
        remaining = self._deadline - loop.time()
        if remaining <= 0:
            breaker.record_failure("slow: question's ECS time budget used up")
            raise SlowCall("the question's ECS time budget is used up")

        # "ECS does not know this name" is an answer from a healthy ECS, not a failure: it must
        # not count against the breaker, so it travels through the guarded call as a value.
        async def answered() -> tuple[T | None, _NotProjected | None]:
            try:
                return await call(), None
            except _NotProjected as missing:
                return None, missing

        result, missing = await breaker.call(answered, timeout=remaining)
        if missing is not None:
            raise missing
        return result  # type: ignore[return-value]

    @property
    def answered_from(self) -> Source:
        return "ecs" if self.reason is None else "chronicle"

    def missing(self, part: str) -> Unavailable:
        return Unavailable(part=part, reason=self.reason or "ECS unavailable")

    def ids_missing(self) -> list[Unavailable]:
        if self.reason is None:
            return []
        return [Unavailable(part="ids", reason=f"entity ids come from the ECS read model ({self.reason})")]

    async def attempt(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """The call's result, or None once ECS is known to be down or lacking (then never again)."""
        if self.reason is not None:
            return None
        try:
            return await self._guarded(call)
        except _NotProjected as error:
            self.reason = str(error)
        except Exception as error:
            if not (is_unavailable_error(error) or isinstance(error, BreakerOpen | SlowCall)):
                raise
            log.warning("ECS unavailable for a hybrid query on %s: %s", self.scope.chronicle_id, error)
            self.reason = f"ECS unavailable: {type(error).__name__}"
            self.outage = True
        return None

    async def ecs(self, call: Callable[[AsyncConnection], Awaitable[T]]) -> T | None:
        async def run() -> T:
            async with self.scope.ecs_engine.connect() as conn:
                return await call(conn)

        return await self.attempt(run)

    async def directory(self) -> _Directory:
        if self._directory is None:
            source = ChronicleReplayStateSource(
                self.scope.chronicle_engine, self.scope.tenant_id, self.scope.chronicle_id
            )
            self._directory = _Directory(await source.known_entities())
        return self._directory

    async def resolve(self, ref: str, field: str) -> _Named:
        scope = self.scope

        async def from_ecs(conn: AsyncConnection) -> _Named:
            found = await find_entity(conn, scope.tenant_id, scope.chronicle_id, ref)
            if found is None:
                # "Idris" for Idris Mollo: words of one entity's name, as context questions take
                # them, from ECS's own names (ECS not knowing them is no outage).
                meant = _Directory(await _ecs_known(conn, scope)).meant(ref)
                if meant is not None:
                    found = await find_entity(conn, scope.tenant_id, scope.chronicle_id, meant)
            if found is None:
                raise _NotProjected(field, ref)
            core = await get_entity_core(conn, scope.tenant_id, found.id)
            if core is None:  # pragma: no cover - deleted between two reads
                raise _NotProjected(field, ref)
            return _Named(
                key=normalize_name(core.name), name=core.name, aliases=list(core.aliases), kind=core.kind,
                keys=entity_event_keys(core.name, core.aliases, core.id), id=core.id,
            )  # fmt: skip

        named = await self.ecs(from_ecs)
        if named is not None:
            return named
        key = normalize_name(ref)
        directory = await self.directory() if key else None
        if directory is not None and directory.entities.get(directory.canonical(key)) is None:
            meant = directory.meant(ref)
            if meant is not None:
                return await self.resolve(meant, field)
        return await self._from_chronicle(ref, field)

    async def _from_chronicle(self, ref: str, field: str) -> _Named:
        key = normalize_name(ref)
        if key:
            directory = await self.directory()
            canonical = directory.canonical(key)
            known = directory.entities.get(canonical)
            if known is not None:
                keys = sorted({canonical, *(normalize_name(a) for a in known.aliases)})
                return _Named(canonical, known.name, list(known.aliases), known.kind, keys)
            if await _named_in_chronicle(self.scope, key):
                return _Named(key, " ".join(ref.split()), [], "character", [key], kind_known=False)
        if _as_uuid(ref) is not None and self.outage:
            raise ReferenceUnavailable(
                field, f"entity ids are resolved by the ECS read model ({self.reason}); use a name instead"
            )
        suggested = (await self.directory()).suggestions(ref) if key else []
        if suggested:
            raise UnknownReference(
                field,
                f"no entity {ref!r} in this chronicle; did you mean {', '.join(map(repr, suggested))}?",
            )
        raise _unknown(field, ref)

    async def names(self, names: Iterable[str], *, ecs: bool = True) -> _Names:
        wanted = sorted({n for n in names if normalize_name(n)})
        scope = self.scope

        async def from_ecs(conn: AsyncConnection) -> dict[str, EntityRef]:
            return await resolve_references(conn, scope.tenant_id, scope.chronicle_id, wanted)

        refs = await self.ecs(from_ecs) if ecs else None
        if refs is not None:
            return _Names(refs, None)
        return _Names(None, await self.directory())

    async def current_state(self, subject: _Named) -> EntityState | None:
        scope = self.scope
        if subject.id is not None:
            source = EcsStateSource(
                scope.chronicle_engine,
                scope.ecs_engine,
                scope.tenant_id,
                scope.chronicle_id,
                cache=scope.cache,
            )
            entity_id = str(subject.id)

            async def from_ecs() -> list[EntityState]:
                return await source.entity_states([entity_id], None)

            states = await self.attempt(from_ecs)
            if states is not None:
                return states[0] if states else None
        return await self.replayed_state(subject.key)

    async def replayed_state(self, key: str) -> EntityState | None:
        """Degraded current state: the entity's recent events replayed; a held entity is where its
        holder's own recent events put it."""
        directory = await self.directory()
        source = ChronicleReplayStateSource(
            self.scope.chronicle_engine, self.scope.tenant_id, self.scope.chronicle_id
        )
        found = await source.entity_states([directory.canonical(key)], None)
        if not found:
            return None
        return await self.placed(source, directory, found[0])

    async def placed(
        self, source: ChronicleReplayStateSource, directory: _Directory, state: EntityState
    ) -> EntityState:
        place = state
        seen = {directory.canonical(normalize_name(state.name))}
        for _ in range(MAX_HOLDER_HOPS):
            if place.holder is None:
                break
            holder_key = directory.canonical(normalize_name(str(place.holder.value)))
            if holder_key in seen:
                break
            seen.add(holder_key)
            holders = await source.entity_states([holder_key], None)
            if not holders:
                break
            place = holders[0]
        # Ids of a bounded replay are not the ECS ids: leave them out.
        return msgspec.structs.replace(state, location=place.location, location_id=None)


# ----------------------------------------------------------------------------------------------
# Chronicle reads

_STORED_COLUMNS = tuple(chronicle_events.c[name] for name in StoredEvent.__struct_fields__)
_INFO_COLUMNS = (
    chronicle_events.c.id,
    chronicle_events.c.sequence,
    chronicle_events.c.external_id,
    chronicle_events.c.kind,
    chronicle_events.c.summary,
    chronicle_events.c.occurred_at,
)


def _info(event: StoredEvent) -> EventInfo:
    return EventInfo(
        event_id=event.id, sequence=event.sequence, external_id=event.external_id, kind=event.kind,
        summary=event.summary, occurred_at=event.occurred_at,
    )  # fmt: skip


def _row_info(row: Any) -> EventInfo:
    return EventInfo(row.id, row.sequence, row.external_id, row.kind, row.summary, row.occurred_at)


def _scoped(scope: Scope) -> list[ColumnElement[bool]]:
    return [
        chronicle_events.c.tenant_id == scope.tenant_id,
        chronicle_events.c.chronicle_id == scope.chronicle_id,
    ]


async def _named_in_chronicle(scope: Scope, key: str) -> bool:
    async with scope.chronicle_engine.connect() as conn:
        found = await conn.scalar(
            select(chronicle_events.c.sequence)
            .where(*_scoped(scope), chronicle_events.c.entity_keys.overlap([key]))
            .limit(1)
        )
    return found is not None


async def _events_naming(
    scope: Scope, key_groups: Sequence[Sequence[str]], limit: int = MAX_EVENTS
) -> tuple[list[StoredEvent], bool]:
    """The most recent ``limit`` events naming one key of every group, in order; and whether
    older ones were left out."""
    conditions = _scoped(scope) + [chronicle_events.c.entity_keys.overlap(list(keys)) for keys in key_groups]
    async with scope.chronicle_engine.connect() as conn:
        rows = await conn.execute(
            select(*_STORED_COLUMNS)
            .where(*conditions)
            .order_by(chronicle_events.c.sequence.desc())
            .limit(limit + 1)
        )
        events = [StoredEvent(**row._mapping) for row in rows]
    return list(reversed(events[:limit])), len(events) > limit


async def _event_infos(scope: Scope, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, EventInfo]:
    wanted = sorted(set(ids), key=lambda u: u.int)
    if not wanted:
        return {}
    async with scope.chronicle_engine.connect() as conn:
        rows = await conn.execute(
            select(*_INFO_COLUMNS).where(*_scoped(scope), chronicle_events.c.id.in_(wanted))
        )
        return {row.id: _row_info(row) for row in rows}


async def _find_event(scope: Scope, ref: str) -> StoredEvent | None:
    """An event by id, else by external id, else by sequence."""
    as_id = _as_uuid(ref)
    async with scope.chronicle_engine.connect() as conn:
        if as_id is not None:
            row = (
                await conn.execute(
                    select(*_STORED_COLUMNS).where(*_scoped(scope), chronicle_events.c.id == as_id)
                )
            ).first()
            if row is not None:
                return StoredEvent(**row._mapping)
        row = (
            await conn.execute(
                select(*_STORED_COLUMNS)
                .where(*_scoped(scope), chronicle_events.c.external_id == ref)
                .order_by(chronicle_events.c.sequence)
                .limit(1)
            )
        ).first()
        sequence = _SEQUENCE_REF.fullmatch(ref.strip())
        if row is None and sequence is not None:
            # "#48", as the templates print it (an external id "48" came first).
            found = await events_at(conn, scope.tenant_id, scope.chronicle_id, [int(sequence.group(1))])
            return found[0] if found else None
    return None if row is None else StoredEvent(**row._mapping)


_SEQUENCE_REF: Final = re.compile(r"#?(\d{1,18})")


MAX_LATER_IN_STORY: Final = 100
"""At most this many sequences in ``later_in_story`` (all of them are left out of the state)."""


async def _last_event(
    scope: Scope, *, sequence: int | None = None, occurred_by: dt.datetime | None = None
) -> EventInfo | None:
    """The last event at or before a sequence, or the latest (by story time) that occurred by a time."""
    query = select(*_INFO_COLUMNS).where(*_scoped(scope))
    if occurred_by is not None:
        query = query.where(chronicle_events.c.occurred_at <= occurred_by).order_by(
            chronicle_events.c.occurred_at.desc(), chronicle_events.c.sequence.desc()
        )
    else:
        query = query.where(chronicle_events.c.sequence <= (sequence or 0)).order_by(
            chronicle_events.c.sequence.desc()
        )
    async with scope.chronicle_engine.connect() as conn:
        row = (await conn.execute(query.limit(1))).first()
    return None if row is None else _row_info(row)


async def _replay_to(scope: Scope, sequence: int) -> WorldState:
    if sequence <= 0:
        return WorldState(chronicle_id=str(scope.chronicle_id))
    async with scope.chronicle_engine.connect() as conn:
        return await replay_until(conn, scope.tenant_id, scope.chronicle_id, sequence)


def _replay_seeded(
    events: Sequence[StoredEvent], chronicle_id: uuid.UUID, subjects: Sequence[_Named]
) -> tuple[WorldState, list[EventChanges]]:
    """Replay a subset of the chronicle (the events naming some entities).

    The subjects' aliases are declared first (in a synthetic event at sequence 0), so that an event
    naming one by an alias whose ``alias`` event is not in the subset still means that entity.
    """
    effects: list[dict[str, Any]] = []
    for subject in subjects:
        aliases = [a for a in subject.aliases if normalize_name(a) != subject.key]
        if aliases:
            effects.append({"op": "spawn", "entity": subject.name, "kind": subject.kind})
            effects += [{"op": "alias", "entity": subject.name, "alias": alias} for alias in aliases]
    seeded = bool(effects) and bool(events) and events[0].sequence > 0
    # The seed gives the subjects ids of its own: an event naming one by its ECS id names it.
    ids = {str(subject.id): subject.name for subject in subjects if subject.id is not None}
    stored = [names_for_ids(event, ids) if ids and named_by_id(event) else event for event in events]
    if seeded:
        seed = StoredEvent(
            id=uuid.UUID(int=0), chronicle_id=chronicle_id, sequence=0, external_id=None, kind="seed",
            summary="aliases", actors=[], location=None, effects=effects, occurred_at=None,
            recorded_at=dt.datetime.now(dt.UTC), tags=[], importance=0.0,
        )  # fmt: skip
        stored.insert(0, seed)
    world, history, _ = replay_stored(stored, chronicle_id)
    return world, history[1:] if seeded else history


def _dead(status: str | None) -> bool:
    return status is not None and normalize_name(status) in DEAD_STATUSES


def _fact_status(state: EntityState | None) -> str | None:
    if state is None or state.status is None:
        return None
    return str(state.status.value)


def _event_uuid(raw: str | None) -> uuid.UUID | None:
    return None if raw is None else _as_uuid(raw)


# ----------------------------------------------------------------------------------------------
# ECS reads shared by several answers


class _Pair(msgspec.Struct, frozen=True):
    types: list[str]
    valence: dict[str, ValenceFact]


async def _pairs(
    conn: AsyncConnection,
    scope: Scope,
    from_ids: Sequence[uuid.UUID],
    to_ids: Sequence[uuid.UUID],
    dimension: str | None,
) -> dict[tuple[uuid.UUID, uuid.UUID], _Pair]:
    """Current relationships between the given ends, each valence with the event that set it."""
    if not from_ids or not to_ids:
        return {}
    r = ecs_relationships
    rows = await conn.execute(
        select(r.c.from_id, r.c.to_id, r.c.types, r.c.valence).where(
            r.c.tenant_id == scope.tenant_id, r.c.chronicle_id == scope.chronicle_id,
            r.c.from_id.in_(list(from_ids)), r.c.to_id.in_(list(to_ids)),
        )
    )  # fmt: skip
    records = {(row.from_id, row.to_id): (sorted(row.types), dict(row.valence)) for row in rows}
    h = ecs_valence_history
    latest = await conn.execute(
        select(h.c.from_id, h.c.to_id, h.c.dimension, h.c.sequence, h.c.event_id)
        .where(
            h.c.tenant_id == scope.tenant_id, h.c.chronicle_id == scope.chronicle_id,
            h.c.from_id.in_(list(from_ids)), h.c.to_id.in_(list(to_ids)),
        )
        .ext(distinct_on(h.c.from_id, h.c.to_id, h.c.dimension))
        .order_by(h.c.from_id, h.c.to_id, h.c.dimension, h.c.sequence.desc(), h.c.id.desc())
    )  # fmt: skip
    provenance = {(row.from_id, row.to_id, row.dimension): (row.sequence, row.event_id) for row in latest}
    pairs = {}
    for (from_id, to_id), (types, valence) in records.items():
        facts = {}
        for name in sorted(valence):
            if dimension is not None and name != dimension:
                continue
            sequence, event_id = provenance.get((from_id, to_id, name), (None, None))
            facts[name] = ValenceFact(float(valence[name]), sequence, event_id)
        pairs[(from_id, to_id)] = _Pair(types=types, valence=facts)
    return pairs


# ----------------------------------------------------------------------------------------------
# entity_fate


def _holder_of(value: Any) -> str | None:
    raw = value.get("holder") if isinstance(value, dict) else None
    return raw if isinstance(raw, str) else None


def _transfer_sources(world: WorldState, event: StoredEvent) -> dict[str, str]:
    """Item id -> the ``from`` its transfer in this event names (a subset replay may not know it)."""
    sources = {}
    for raw in event.effects:
        try:
            effect = msgspec.convert(raw, Effect)
        except msgspec.ValidationError:
            continue
        if isinstance(effect, TransferEffect) and effect.from_ is not None:
            item = lookup(world, effect.item)
            if item is not None:
                sources[item] = effect.from_
    return sources


def _holding_partners(world: WorldState, history: Sequence[EventChanges], target: str | None) -> set[str]:
    """Names (normalized, aliases too) of the items ``target`` held and of those that held it."""
    if target is None:
        return set()
    partners: set[str] = set()
    for changes in history:
        for change in changes.changes:
            if not isinstance(change, ComponentSet | ComponentRemoved) or change.component != "holder":
                continue
            value = change.value if isinstance(change, ComponentSet) else None
            holders = {_holder_of(value), _holder_of(change.previous)}
            if change.entity_id == target:
                partners.update(h for h in holders if h is not None)
            elif target in holders:
                partners.add(change.entity_id)
    return {
        normalize_name(name)
        for partner in partners
        if partner in world.entities
        for name in (world.entities[partner].name, *world.entities[partner].aliases)
    }


def _fate_changes(
    world: WorldState, event: StoredEvent, changes: EventChanges, target: str, names: _Names
) -> list[FateChange]:
    out: list[FateChange] = []
    for change in changes.changes:
        if isinstance(change, ComponentSet) and change.entity_id == target:
            value = change.value if isinstance(change.value, dict) else {}
            if change.component == "position":
                out.append(FateChange("moved", other=names.world_ref(world, value.get("location"))))
            elif change.component == "holder":
                out.append(FateChange("held_by", other=names.world_ref(world, value.get("holder"))))
            elif change.component == "status":
                status = str(value.get("value"))
                out.append(FateChange("died" if _dead(status) else "status", value=status))
            else:
                out.append(FateChange("component_set", value=change.component))
        elif isinstance(change, ComponentRemoved) and change.entity_id == target:
            if change.component == "holder":
                out.append(FateChange("put_down"))
            elif change.component == "status":
                out.append(FateChange("status"))
            elif change.component != "position":  # a position gives way to a holder: held_by says it
                out.append(FateChange("component_removed", value=change.component))
        elif isinstance(change, ComponentSet | ComponentRemoved) and change.component == "holder":
            before = _holder_of(change.previous)
            after = _holder_of(change.value) if isinstance(change, ComponentSet) else None
            item = names.world_ref(world, change.entity_id)
            if after == target and before != target:
                giver = names.world_ref(world, before)
                if giver is None and change.entity_id in (sources := _transfer_sources(world, event)):
                    giver = names.ref(sources[change.entity_id])
                if giver is None:  # picked up where it lay: from that place
                    giver = next(
                        (
                            names.world_ref(world, c.previous.get("location"))
                            for c in changes.changes
                            if isinstance(c, ComponentRemoved) and c.entity_id == change.entity_id
                            and c.component == "position" and isinstance(c.previous, dict)
                        ),
                        None,
                    )  # fmt: skip
                out.append(FateChange("received", other=item, counterpart=giver))
            elif before == target and after != target:
                out.append(FateChange("lost", other=item, counterpart=names.world_ref(world, after)))
    return out


async def entity_fate(scope: Scope, query: EntityFateQuery) -> EntityFateResult:
    """What happened to an entity and where it is now."""
    session = _Session(scope)
    subject = await session.resolve(query.entity, "entity")
    events, truncated = await _events_naming(scope, [subject.keys])
    world, history = _replay_seeded(events, scope.chronicle_id, [subject])
    target = lookup(world, subject.name)
    partners = _holding_partners(world, history, target)
    if partners:
        # The subject's events alone tell who handed it an item only when every earlier hand-over
        # of that item named the subject too, and where an item destroyed while carried lies only
        # when they hold its holder's moves: the partners' events are replayed with them.
        more, _ = await _events_naming(scope, [sorted(partners)])
        events = sorted({e.id: e for e in (*events, *more)}.values(), key=lambda e: e.sequence)
        world, history = _replay_seeded(events, scope.chronicle_id, [subject])
        target = lookup(world, subject.name)
    world_names = {name for e in world.entities.values() for name in (e.name, *e.aliases)}
    names = await session.names(world_names, ecs=subject.id is not None)
    current = await session.current_state(subject)

    key_events: list[FateEvent] = []
    death: EventInfo | None = None
    if target is not None:
        for event, changes in zip(events, history, strict=True):
            found = _fate_changes(world, event, changes, target, names)
            if found:
                key_events.append(FateEvent(event=_info(event), changes=found))
                if any(c.what == "died" for c in found):
                    death = _info(event)
                elif any(c.what == "status" for c in found):
                    death = None  # revived, or a new status after a death
    status = _fact_status(current)
    dead = _dead(status) if current is not None else death is not None
    if dead and death is None and current is not None and current.status is not None:
        status_event = _event_uuid(current.status.event_id)
        if status_event is not None:
            death = (await _event_infos(scope, [status_event])).get(status_event)

    unavailable = session.ids_missing()
    if current is None and session.reason is not None:
        unavailable.append(session.missing("current"))
    if truncated:
        unavailable.append(Unavailable(
            "events", f"only the last {MAX_EVENTS} events naming {subject.name} were replayed"
        ))  # fmt: skip
    return EntityFateResult(
        answered_from=session.answered_from, unavailable=unavailable, entity=subject.ref, dead=dead,
        current=current, death=death, events=key_events,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# event_participants


def _participants(world: WorldState, event: StoredEvent) -> tuple[Ref | None, list[EventParticipant]]:
    roles: dict[str, list[str]] = {}
    for actor in event.actors:
        entity_id = lookup(world, str(actor.get("name", "")))
        if entity_id is None:
            continue
        role = actor.get("role")
        label = f"actor:{role}" if role else "actor"
        held = roles.setdefault(entity_id, [])
        if label not in held:
            held.append(label)
    location_id = None if event.location is None else lookup(world, event.location)
    if location_id is not None:
        present = sorted(
            (
                e
                for e in world.entities.values()
                if e.id not in roles
                and e.id != location_id
                and e.kind not in ("item", "location")
                and location_of(world, e.id) == location_id
            ),
            key=lambda e: (e.created_sequence, e.id),
        )
        for entity in present:
            roles[entity.id] = ["present"]
    participants = []
    for entity_id, entity_roles in roles.items():
        entity = world.entities[entity_id]
        participants.append(
            EventParticipant(
                entity=Ref(uuid.UUID(entity_id), entity.name), roles=entity_roles, status=entity.status,
                dead=_dead(entity.status),
            )
        )  # fmt: skip
    location = None
    if location_id is not None:
        location = Ref(uuid.UUID(location_id), world.entities[location_id].name)
    return location, participants


async def event_participants(scope: Scope, query: EventParticipantsQuery) -> EventParticipantsResult:
    """Who took part in or was present at an event, and how they stand toward each other now."""
    session = _Session(scope)
    event = await _find_event(scope, query.event)
    if event is None:
        raise UnknownReference(
            "event", f"no event with id, external_id or sequence {query.event!r} in this chronicle"
        )
    world = await _replay_to(scope, event.sequence)
    location, participants = _participants(world, event)
    ids = [p.entity.id for p in participants if p.entity.id is not None]
    dimension = None if query.dimension is None else normalize_name(query.dimension)

    async def current(conn: AsyncConnection) -> dict[tuple[uuid.UUID, uuid.UUID], _Pair]:
        return await _pairs(conn, scope, ids, ids, dimension)

    pairs = await session.ecs(current)
    standing: list[Standing] = []
    unavailable: list[Unavailable] = []
    if pairs is None:
        unavailable.append(session.missing("standing"))
    else:
        for a in participants:
            for b in participants:
                if a.entity.id is None or b.entity.id is None or a.entity.id == b.entity.id:
                    continue
                pair = pairs.get((a.entity.id, b.entity.id))
                if pair is not None and (pair.types or pair.valence):
                    standing.append(
                        Standing(from_=a.entity, to=b.entity, types=pair.types, valence=pair.valence)
                    )
    return EventParticipantsResult(
        answered_from=session.answered_from, unavailable=unavailable, event=_info(event), location=location,
        participants=participants, standing=standing,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# present_at


def _bounds(query: PresentAtQuery, dimension: str) -> list[ValenceBound]:
    bounds = []
    if query.min is not None:
        bounds.append(ValenceBound(dimension=dimension, op=">", value=query.min))
    if query.max is not None:
        bounds.append(ValenceBound(dimension=dimension, op="<", value=query.max))
    return bounds


async def _present_from_ecs(
    conn: AsyncConnection,
    scope: Scope,
    location_id: uuid.UUID,
    toward_id: uuid.UUID | None,
    dimension: str,
    kind: str | None,
) -> tuple[list[PresentMember], bool]:
    summaries: list[EntitySummary] = []
    after: tuple[int, uuid.UUID] | None = None
    filters = EntityFilters(kind=kind, location_id=location_id)
    while len(summaries) <= MAX_MEMBERS:
        page = await list_entities(
            conn, scope.tenant_id, scope.chronicle_id, filters, after=after, limit=_PAGE
        )
        summaries += page
        if len(page) < _PAGE:
            break
        after = (page[-1].created_sequence, page[-1].id)
    truncated = len(summaries) > MAX_MEMBERS
    summaries = summaries[:MAX_MEMBERS]
    ids = [s.id for s in summaries]
    placed: dict[uuid.UUID, dict[str, Provenance]] = {}
    if ids:
        rows = await conn.execute(
            select(ecs_components.c.entity_id, ecs_components.c.type, ecs_components.c.sequence,
                   ecs_components.c.event_id)
            .where(ecs_components.c.tenant_id == scope.tenant_id, ecs_components.c.entity_id.in_(ids),
                   ecs_components.c.type.in_(["position", "holder"]))
        )  # fmt: skip
        for row in rows:
            placed.setdefault(row.entity_id, {})[row.type] = Provenance(row.sequence, row.event_id)
    pairs = await _pairs(conn, scope, ids, [toward_id], dimension) if toward_id is not None else {}
    members = []
    for summary in summaries:
        where = placed.get(summary.id, {})
        pair = pairs.get((summary.id, toward_id)) if toward_id is not None else None
        members.append(
            PresentMember(
                entity=Ref(summary.id, summary.name), kind=summary.kind, status=summary.status,
                dead=_dead(summary.status), since=where.get("holder") or where.get("position"),
                valence=None if pair is None else pair.valence.get(dimension),
            )
        )  # fmt: skip
    return members, truncated


async def _present_from_chronicle(
    scope: Scope, session: _Session, location: _Named, toward: _Named | None, dimension: str, kind: str | None
) -> tuple[list[PresentMember], bool]:
    """Degraded: the entities named in the place's recent events, each replayed to see where it is."""
    directory = await session.directory()
    async with scope.chronicle_engine.connect() as conn:
        rows = await conn.execute(
            select(chronicle_events.c.entity_keys)
            .where(*_scoped(scope), chronicle_events.c.entity_keys.overlap(location.keys))
            .order_by(chronicle_events.c.sequence.desc())
            .limit(PRESENCE_SCAN_EVENTS)
        )
        scanned = [list(row.entity_keys) for row in rows]
    place = directory.canonical(location.key)
    candidates: list[str] = []
    for keys in scanned:
        for key in keys:
            canonical = directory.canonical(key)
            if canonical != place and canonical not in candidates:
                candidates.append(canonical)
    truncated = len(candidates) > MAX_MEMBERS
    source = ChronicleReplayStateSource(scope.chronicle_engine, scope.tenant_id, scope.chronicle_id)
    target = None if toward is None else directory.canonical(toward.key)
    members = []
    for state in await source.entity_states(candidates[:MAX_MEMBERS], None):
        state = await session.placed(source, directory, state)
        if state.location is None or directory.canonical(normalize_name(str(state.location.value))) != place:
            continue
        if kind is not None and state.kind != kind:
            continue
        valence = None
        for relation in state.relationships:
            other = directory.canonical(normalize_name(relation.other))
            if relation.direction == "outgoing" and other == target and dimension in relation.valence:
                cited = relation.valence_sources.get(dimension)
                valence = ValenceFact(
                    relation.valence[dimension],
                    relation.sequence if cited is None else cited.sequence,
                    _event_uuid(relation.event_id if cited is None else cited.event_id),
                )
        since = None
        if state.location.sequence is not None and state.location.event_id is not None:
            since = Provenance(state.location.sequence, uuid.UUID(state.location.event_id))
        status = _fact_status(state)
        members.append(
            PresentMember(
                entity=Ref(None, state.name), kind=state.kind, status=status, dead=_dead(status), since=since,
                valence=valence,
            )
        )  # fmt: skip
    members.sort(key=lambda m: (m.since.sequence if m.since is not None else 0, m.entity.name))
    return members, truncated


async def present_at(scope: Scope, query: PresentAtQuery) -> PresentAtResult:
    """Who is at a place now, optionally with (and filtered by) their valence toward someone."""
    query.check()
    session = _Session(scope)
    location = await session.resolve(query.location, "location")
    if location.kind == "character" and location.kind_known:
        # Nobody stands inside a person: a client that asks so means "who is with them", which
        # is a question about the place they are at.
        raise InvalidQuery(
            "location", f"{location.name!r} is a character, not a place; ask entity_fate where "
            f"{location.name} is, then present_at that place",
        )  # fmt: skip
    toward = None if query.toward is None else await session.resolve(query.toward, "toward")
    dimension = normalize_name(query.dimension)
    kind = None if query.kind is None else normalize_name(query.kind)
    found: tuple[list[PresentMember], bool] | None = None
    location_id = location.id
    toward_id = None if toward is None else toward.id
    if location_id is not None and (toward is None or toward_id is not None):

        async def from_ecs(conn: AsyncConnection) -> tuple[list[PresentMember], bool]:
            assert location_id is not None
            return await _present_from_ecs(conn, scope, location_id, toward_id, dimension, kind)

        found = await session.ecs(from_ecs)
    unavailable = session.ids_missing()
    if found is None:
        found = await _present_from_chronicle(scope, session, location, toward, dimension, kind)
        unavailable = session.ids_missing()
        unavailable.append(Unavailable(
            "present", f"only entities named in the last {PRESENCE_SCAN_EVENTS} events at {location.name} "
            f"were considered, each placed by its own recent events ({session.reason})",
        ))  # fmt: skip
    members, truncated = found
    if toward is not None:
        # "Who at the keep trusts Elara?" is about the others there: Elara has no trust toward herself.
        toward_names = {toward.key, *toward.keys}
        members = [
            m for m in members
            if not (m.entity.id == toward.id if m.entity.id is not None and toward.id is not None
                    else normalize_name(m.entity.name) in toward_names)
        ]  # fmt: skip
    if truncated:
        unavailable.append(Unavailable("present", f"only the first {MAX_MEMBERS} entities are listed"))
    bounds = _bounds(query, dimension)
    if bounds:
        members = [
            m for m in members
            if m.valence is not None and all(b.matches({dimension: m.valence.value}) for b in bounds)
        ]  # fmt: skip
    return PresentAtResult(
        answered_from=session.answered_from, unavailable=unavailable, location=location.ref,
        toward=None if toward is None else toward.ref, dimension=dimension if toward is not None else None,
        present=members,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# relationship_history


async def relationship_history(scope: Scope, query: RelationshipHistoryQuery) -> RelationshipHistoryResult:
    """Every valence change from ``a`` to ``b`` with the event that made it, and the current values."""
    session = _Session(scope)
    a = await session.resolve(query.a, "a")
    b = await session.resolve(query.b, "b")
    dimension = None if query.dimension is None else normalize_name(query.dimension)
    changes: list[ValenceChange] = []
    unavailable: list[Unavailable] = []
    a_id, b_id = a.id, b.id
    points = None
    if a_id is not None and b_id is not None:

        async def from_ecs(conn: AsyncConnection) -> list[ValencePoint]:
            assert a_id is not None
            assert b_id is not None
            return await valence_history(conn, scope.tenant_id, scope.chronicle_id, a_id, b_id, dimension)

        points = await session.ecs(from_ecs)
    if points is not None:
        infos = await _event_infos(scope, [p.event_id for p in points])
        for point in points:
            info = infos.get(point.event_id)
            changes.append(
                ValenceChange(
                    sequence=point.sequence, event_id=point.event_id,
                    external_id=None if info is None else info.external_id,
                    kind=None if info is None else info.kind, summary=None if info is None else info.summary,
                    dimension=point.dimension, previous=point.previous, delta=point.delta, value=point.value,
                )
            )  # fmt: skip
    # Every valence and relate/unrelate effect from a to b names both, so replaying just these
    # events is exact (ECS keeps valence history, not type history: types always come from here).
    events, truncated = await _events_naming(scope, [a.keys, b.keys])
    world, history = _replay_seeded(events, scope.chronicle_id, [a, b])
    from_id, to_id = lookup(world, a.name), lookup(world, b.name)
    type_changes: list[TypeChange] = []
    for event, event_changes in zip(events, history, strict=True):
        for change in event_changes.changes:
            if isinstance(change, RelationshipSet | RelationshipRemoved) and (
                change.from_id,
                change.to_id,
            ) == (from_id, to_id):
                type_changes.append(TypeChange(
                    sequence=event.sequence, event_id=event.id, external_id=event.external_id,
                    kind=event.kind, summary=event.summary, type=change.type,
                    change="related" if isinstance(change, RelationshipSet) else "unrelated",
                    data=change.data if isinstance(change, RelationshipSet) else None,
                ))  # fmt: skip
    record = world.relationships.get(relationship_key(from_id, to_id)) if from_id and to_id else None
    current_types = sorted(record.types) if record is not None else []
    current_type_data = type_data(record) if record is not None else {}
    if points is None:
        for event, event_changes in zip(events, history, strict=True):
            for change in event_changes.changes:
                if (
                    isinstance(change, ValenceChanged)
                    and (change.from_id, change.to_id) == (from_id, to_id)
                    and (dimension is None or change.dimension == dimension)
                ):
                    changes.append(
                        ValenceChange(
                            sequence=event.sequence, event_id=event.id, external_id=event.external_id,
                            kind=event.kind, summary=event.summary, dimension=change.dimension,
                            previous=change.previous, delta=change.delta, value=change.value,
                        )
                    )  # fmt: skip
        unavailable = session.ids_missing()
    if truncated:
        replayed = "changes" if points is None else "type_changes"
        unavailable.append(Unavailable(
            replayed, f"only the last {MAX_EVENTS} events naming both were replayed; earlier changes "
            "are missing and the first values shown may be off",
        ))  # fmt: skip
    current = {c.dimension: ValenceFact(c.value, c.sequence, c.event_id) for c in changes}
    return RelationshipHistoryResult(
        answered_from=session.answered_from, unavailable=unavailable, from_=a.ref, to=b.ref, changes=changes,
        current=dict(sorted(current.items())), type_changes=type_changes, current_types=current_types,
        current_type_data=current_type_data,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# item_interactions


async def item_interactions(scope: Scope, query: ItemInteractionsQuery) -> ItemInteractionsResult:
    """Who held an item, in order, and the other events that involved it."""
    session = _Session(scope)
    item = await session.resolve(query.item, "item")
    events, truncated = await _events_naming(scope, [item.keys])
    references = sorted(event_references(events))
    item_id = item.id
    refs: Mapping[str, EntityRef] | None = None
    if item_id is not None:

        async def from_ecs(conn: AsyncConnection) -> dict[str, EntityRef]:
            return await resolve_references(conn, scope.tenant_id, scope.chronicle_id, references)

        refs = await session.ecs(from_ecs)
    if refs is not None and item_id is not None:
        target = EntityRef(item_id, item.name)

        def out(ref: EntityRef) -> Ref:
            return Ref(ref.id, ref.name)

    else:
        # Without ECS ids: one stand-in id per canonical name, so aliases are one entity.
        directory = await session.directory()

        def stand_in(name: str) -> EntityRef:
            key = directory.canonical(normalize_name(name))
            return EntityRef(uuid.uuid5(scope.chronicle_id, key), directory.display(name))

        refs = {normalize_name(r): stand_in(r) for r in references if normalize_name(r)}
        target = stand_in(item.name)

        def out(ref: EntityRef) -> Ref:
            return Ref(None, ref.name)

    result = build_interactions(target, events, refs)
    by_id = {e.id: e for e in events}
    involved = {e.event_id: e for e in result.events}
    holders = []
    previous: Ref | None = None
    for change in result.holders:
        holder = None if change.holder is None else out(change.holder)
        interaction = involved.get(change.event_id)
        participants = [] if interaction is None else interaction.participants
        holders.append(
            Holding(
                holder=holder, previous=previous, event=_info(by_id[change.event_id]),
                participants=[RoleOf(out(p.entity), p.roles) for p in participants],
            )
        )  # fmt: skip
        previous = holder
    holder_events = {h.event_id for h in result.holders}
    others = [
        ItemEvent(
            event=_info(by_id[e.event_id]), roles=e.roles,
            participants=[RoleOf(out(p.entity), p.roles) for p in e.participants],
        )
        for e in result.events
        if e.event_id not in holder_events or "destroy" in e.roles  # its end is more than a hand-over
    ]  # fmt: skip
    unavailable = session.ids_missing()
    if truncated:
        unavailable.append(Unavailable(
            "holders",
            f"only the last {MAX_EVENTS} events naming {item.name} were read; earlier holders are missing",
        ))  # fmt: skip
    return ItemInteractionsResult(
        answered_from=session.answered_from, unavailable=unavailable, item=out(target), holders=holders,
        events=others,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# state_as_of


async def state_as_of(scope: Scope, query: StateAsOfQuery) -> StateAsOfResult:
    """An entity's state right after a sequence or at a story time, replayed from the chronicle."""
    query.check()
    session = _Session(scope)
    subject = await session.resolve(query.entity, "entity")
    later: list[int] = []
    if query.occurred_at is not None:
        event = await _last_event(scope, occurred_by=query.occurred_at)
        async with scope.chronicle_engine.connect() as conn:
            at_time = await state_at_story_time(conn, scope.tenant_id, scope.chronicle_id, query.occurred_at)
        world, sequence, later = at_time.world, at_time.sequence, at_time.later_in_story[:MAX_LATER_IN_STORY]
    else:
        assert query.sequence is not None
        sequence = query.sequence
        async with scope.chronicle_engine.connect() as conn:
            chronicle = await get_chronicle(conn, scope.tenant_id, scope.chronicle_id)
        if chronicle is not None and sequence > chronicle.last_sequence:
            raise InvalidQuery(
                "sequence", f"{sequence} is after the chronicle's last event (#{chronicle.last_sequence})"
            )
        event = await _last_event(scope, sequence=sequence)
        world = await _replay_to(scope, sequence)
    entity_id = None if subject.id is None else lookup(world, str(subject.id))
    if entity_id is None:
        entity_id = lookup(world, subject.name)
    state = None if entity_id is None else state_from_world(world, entity_id)
    if state is not None:
        async with scope.chronicle_engine.connect() as conn:
            [state] = await cite_relationships(conn, scope.tenant_id, scope.chronicle_id, [state])
    ref = subject.ref if entity_id is None else Ref(uuid.UUID(entity_id), world.entities[entity_id].name)
    # The state is a replay of the chronicle whether ECS is up or not, with the ECS's own ids.
    return StateAsOfResult(
        answered_from="chronicle", unavailable=[], entity=ref, sequence=sequence, event=event, state=state,
        later_in_story=later,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------


async def answer(scope: Scope, query: HybridQuery) -> HybridResult:
    """Answer any hybrid question."""
    if isinstance(query, EntityFateQuery):
        return await entity_fate(scope, query)
    if isinstance(query, EventParticipantsQuery):
        return await event_participants(scope, query)
    if isinstance(query, PresentAtQuery):
        return await present_at(scope, query)
    if isinstance(query, RelationshipHistoryQuery):
        return await relationship_history(scope, query)
    if isinstance(query, ItemInteractionsQuery):
        return await item_interactions(scope, query)
    if isinstance(query, StateAsOfQuery):
        return await state_as_of(scope, query)
    assert_never(query)
