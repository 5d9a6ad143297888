"""The pure ECS reducer: narrative world state derived deterministically from chronicle events.

No I/O here. :func:`apply_event` folds one :class:`ChronicleEvent` into a :class:`WorldState` and
returns its :class:`EventChanges`; every mutation of the state goes through :func:`apply_change`, so
applying the returned changes to a copy of the previous state (:func:`apply_changes`) yields exactly
the same state. :func:`reduce_event` is the side-effect-free variant (works on a copy),
:func:`replay` folds a whole stream, :func:`state_hash` / :func:`chain_hash` fingerprint the result.

Semantics and decisions
-----------------------
Resolution
    A reference is an entity id, or a name or alias matched with ``normalize_name`` (case- and
    whitespace-insensitive) within the chronicle. The first mention of an unknown name creates the
    entity, with a kind inferred from its role: actor -> character, event location or move target
    -> location, transferred item -> item, transfer recipient/source -> character, ``position`` /
    ``holder`` component references -> location / character, anything else -> character; ``spawn``
    gives the kind. Ids are ``uuid5(ENTITY_NAMESPACE, chronicle_id, sequence, normalized name)`` of
    the first mention, so replays give identical ids. Removals (``unset``, ``unrelate``) never create
    entities: an unknown reference there is an ``unknown_entity`` anomaly.
Order
    Within an event: actors and the location are resolved (created) first, then the explicit
    effects are applied in order, then *presence*.
Presence
    With an event location, each actor is placed there (``Position``) unless (a) an effect of the
    same event touched its placement (``move``, ``transfer``, ``set``/``unset`` of ``position`` or
    ``holder``) - the explicit effect wins, even when it was a no-op or was rejected; (b) it was dead
    or destroyed both before and after the event's effects (a corpse is not carried around by being
    mentioned; someone killed *in* this event is placed there); (c) it is held by another entity (its
    place derives from its holder); or (d) it is the location itself.
Single-valued vs multi-valued
    ``position``, ``holder``, ``status``, ``description`` and custom components are superseded by a
    new value; ``health`` is patched field by field; ``traits`` and ``tags`` accumulate, as do
    aliases. Setting a value equal to the current one records no change. ``position`` and
    ``holder`` exclude each other: a ``move`` (or ``set position``) of a held item drops it from
    its holder, a ``transfer`` (or ``set holder``) removes the item's own position.
Held items
    A held item has no position of its own; :func:`location_of` follows the holder chain, so items
    move with their holder implicitly. An entity's inventory is derived (:func:`inventory`).
    Self-holding and holder cycles are rejected as anomalies.
Death and destruction
    ``status dead`` and ``destroy`` (status ``destroyed``) keep the entity with all its components
    and history; it stays resolvable and queryable. Explicit effects still apply to it (a body can
    be moved, a dead character's items can be transferred - looting). A destroyed thing that was
    held is no longer: it lies where its holder was (``position``), out of every inventory.
Transfer
    Sets the item's holder to ``to``. If ``from`` is given and is not the item's current holder, the
    transfer still happens - the chronicle is authoritative - but a ``transfer_source_mismatch``
    anomaly records the discrepancy (expected vs actual holder) before the holder change.
Aliases
    ``alias`` makes a second name resolvable. A name used before its alias was declared created a
    separate entity; declaring an alias that already names or aliases *another* entity is an
    ``alias_conflict`` anomaly and the alias is not added (no silent merge).
``spawn`` of an existing entity
    A ``spawn_existing`` anomaly; the spawn's kind supersedes the old one (``entity_kind_changed``)
    and its components are applied to the existing entity.
Relationships and valence
    Directed, one :class:`Relationship` record per ordered pair (from, to), holding the relation
    types (``relate``/``unrelate``, names case-insensitive, each with optional data) and the valence
    dimensions. ``valence`` without a prior relation creates a *generic* record with no types - a
    feeling does not assert a relation type. ``delta`` adds, ``value`` sets; the result is clamped to
    [-1, 1]; every valence effect is recorded as a ``valence_changed`` change (previous, delta
    actually applied, new value), even when clamping makes the applied delta 0. ``unrelate`` keeps
    the record (and its valence).
Provenance
    Every change carries the event id, sequence and the index of the effect that caused it (``None``
    for changes implied by the event's actors/location). Entities carry created/updated sequence
    and event id; "updated" covers the entity's own data (kind, components, aliases), relationships
    keep their own created/updated sequences.
Rejections
    Invalid input inside a well-formed event (a bad value for a typed component, a blank name, ...)
    is an ``anomaly`` change and the offending effect is skipped; the rest of the event applies.
    Programming errors (an event of another chronicle, a sequence not after the last one) raise
    ``ValueError``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from typing import Any, Final, TypeVar

import msgspec

from ecs.components import COMPONENT_TYPES, Component, Holder, Position, Status, component_name
from rag.events import (
    ActorRef,
    AliasEffect,
    DestroyEffect,
    Effect,
    EventIn,
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

__all__ = [
    "ENTITY_NAMESPACE",
    "GENESIS_HASH",
    "REDUCER_VERSION",
    "VALENCE_DIGITS",
    "AliasAdded",
    "Anomaly",
    "Change",
    "ChronicleEvent",
    "ComponentRemoved",
    "ComponentSet",
    "Entity",
    "EntityCreated",
    "EntityKindChanged",
    "EventChanges",
    "Provenance",
    "Relation",
    "Relationship",
    "RelationshipRemoved",
    "RelationshipSet",
    "ValenceChanged",
    "WorldState",
    "apply_change",
    "apply_changes",
    "apply_event",
    "canonical_encode",
    "chain_hash",
    "decode_state",
    "encode_state",
    "entity_id_for",
    "inventory",
    "is_dead",
    "location_of",
    "lookup",
    "reduce_event",
    "relationship_key",
    "replay",
    "resolve",
    "state_hash",
]

REDUCER_VERSION: Final = 2
"""Bump when the reducer's semantics change: it seeds :data:`GENESIS_HASH`, invalidating checkpoints."""

ENTITY_NAMESPACE: Final = uuid.UUID("55fc0481-faf0-591b-83ff-248210c489a1")
GENESIS_HASH: Final = hashlib.sha256(f"lorekeeper.ecs.reducer.v{REDUCER_VERSION}".encode()).hexdigest()
"""The ``previous_hash`` to start a :func:`chain_hash` chain with."""

PLACEMENT_COMPONENTS: Final = frozenset({"position", "holder"})

C = TypeVar("C", bound=Component)


# --------------------------------------------------------------------------------------------------
# Input


class ChronicleEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One stored chronicle event, as the reducer reads it."""

    id: str
    sequence: int
    chronicle_id: str
    summary: str = ""
    actors: list[ActorRef] = []
    location: str | None = None
    effects: list[Effect] = []

    @classmethod
    def from_event_in(
        cls, event: EventIn, *, event_id: str, sequence: int, chronicle_id: str
    ) -> ChronicleEvent:
        return cls(
            id=event_id,
            sequence=sequence,
            chronicle_id=chronicle_id,
            summary=event.summary,
            actors=event.actor_refs(),
            location=event.location,
            effects=list(event.effects),
        )


# --------------------------------------------------------------------------------------------------
# State


class Provenance(msgspec.Struct, frozen=True, array_like=True):
    """The event that set a fact: what a context bundle cites next to it."""

    sequence: int
    event_id: str


class Entity(msgspec.Struct, kw_only=True):
    """A thing in the world. ``components`` maps a component name to a typed :class:`Component`
    (registered names) or raw JSON (custom names); treat the values as immutable."""

    id: str
    name: str
    kind: str
    aliases: list[str] = []
    components: dict[str, Any] = {}
    created_sequence: int
    updated_sequence: int
    created_event_id: str
    updated_event_id: str
    provenance: dict[str, Provenance] = {}
    """Per component name: the event that last set it."""

    @property
    def archetype(self) -> tuple[str, ...]:
        """The signature of the entity: its sorted component names."""
        return tuple(sorted(self.components))

    def get(self, ctype: type[C]) -> C | None:
        """The typed component of that type, or ``None``."""
        value = self.components.get(component_name(ctype))
        if value is None or isinstance(value, ctype):
            return value
        return msgspec.convert(value, ctype)

    @property
    def status(self) -> str | None:
        status = self.get(Status)
        return None if status is None else status.value


class Relation(msgspec.Struct, kw_only=True):
    """One relation type on a :class:`Relationship`."""

    data: dict[str, Any] | None = None
    created_sequence: int
    updated_sequence: int


class Relationship(msgspec.Struct, kw_only=True):
    """Everything directed from one entity to another: relation types and valence dimensions."""

    from_id: str
    to_id: str
    types: dict[str, Relation] = {}
    valence: dict[str, float] = {}
    created_sequence: int
    updated_sequence: int
    provenance: dict[str, Provenance] = {}
    """Per valence dimension: the event that last changed it."""


class WorldState(msgspec.Struct, kw_only=True):
    """The derived world of one chronicle. ``names`` indexes normalized names and aliases."""

    chronicle_id: str = ""
    last_sequence: int | None = None
    last_event_id: str | None = None
    entities: dict[str, Entity] = {}
    names: dict[str, str] = {}
    relationships: dict[str, Relationship] = {}


def relationship_key(from_id: str, to_id: str) -> str:
    """The key of the (from, to) record in ``WorldState.relationships``."""
    return f"{from_id}>{to_id}"


# --------------------------------------------------------------------------------------------------
# Changes


class _ChangeBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", forbid_unknown_fields=True):
    event_id: str
    sequence: int
    effect: int | None = None
    """Index of the effect in the event that caused the change; ``None`` for actors/location/presence."""


class EntityCreated(_ChangeBase, frozen=True, tag="entity_created"):
    entity_id: str
    name: str
    entity_kind: str


class EntityKindChanged(_ChangeBase, frozen=True, tag="entity_kind_changed"):
    entity_id: str
    entity_kind: str
    previous: str


class ComponentSet(_ChangeBase, frozen=True, tag="component_set"):
    """``value``/``previous`` are JSON builtins (``previous`` is ``None`` when there was none)."""

    entity_id: str
    component: str
    value: Any
    previous: Any = None


class ComponentRemoved(_ChangeBase, frozen=True, tag="component_removed"):
    entity_id: str
    component: str
    previous: Any = None


class AliasAdded(_ChangeBase, frozen=True, tag="alias_added"):
    entity_id: str
    alias: str


class RelationshipSet(_ChangeBase, frozen=True, tag="relationship_set"):
    from_id: str
    to_id: str
    type: str
    data: dict[str, Any] | None = None


class RelationshipRemoved(_ChangeBase, frozen=True, tag="relationship_removed"):
    from_id: str
    to_id: str
    type: str


class ValenceChanged(_ChangeBase, frozen=True, tag="valence_changed"):
    from_id: str
    to_id: str
    dimension: str
    previous: float
    delta: float
    """The change actually applied (after clamping): ``value - previous``."""
    value: float


class Anomaly(_ChangeBase, frozen=True, tag="anomaly"):
    """Something in the event that was odd or rejected. Changes no state.

    Codes: ``transfer_source_mismatch`` (applied anyway), ``spawn_existing`` (applied to the existing
    entity), and, for skipped effects: ``invalid_component_value``, ``alias_conflict``,
    ``unknown_entity``, ``component_missing``, ``relationship_missing``, ``self_reference``,
    ``holder_cycle``, ``blank_reference``.
    """

    code: str
    message: str
    entity_ids: list[str] = []
    detail: dict[str, Any] = {}


Change = (
    EntityCreated
    | EntityKindChanged
    | ComponentSet
    | ComponentRemoved
    | AliasAdded
    | RelationshipSet
    | RelationshipRemoved
    | ValenceChanged
    | Anomaly
)


class EventChanges(msgspec.Struct, frozen=True, kw_only=True):
    """The ordered changes one event caused."""

    event_id: str
    sequence: int
    chronicle_id: str
    changes: list[Change] = []

    @property
    def anomalies(self) -> list[Anomaly]:
        return [c for c in self.changes if isinstance(c, Anomaly)]


# --------------------------------------------------------------------------------------------------
# Encoding and hashing


def canonical_encode(obj: Any) -> bytes:
    """Deterministic JSON: dict keys and struct fields sorted."""
    return msgspec.json.encode(obj, order="sorted")


def encode_state(state: WorldState) -> bytes:
    """A snapshot for a checkpoint (canonical JSON)."""
    return canonical_encode(state)


def decode_state(raw: bytes | str) -> WorldState:
    """Inverse of :func:`encode_state`, with registered components typed again."""
    state = msgspec.json.decode(raw, type=WorldState)
    for entity in state.entities.values():
        for name, value in entity.components.items():
            entity.components[name] = _typed(name, value)
    return state


def state_hash(state: WorldState) -> str:
    """sha256 hex of the canonical encoding of the whole state."""
    return hashlib.sha256(canonical_encode(state)).hexdigest()


def chain_hash(previous_hash: str, event_changes: EventChanges) -> str:
    """Running hash over a stream of changes; start from :data:`GENESIS_HASH`."""
    digest = hashlib.sha256(previous_hash.encode("ascii"))
    digest.update(b"\n")
    digest.update(canonical_encode(event_changes))
    return digest.hexdigest()


def entity_id_for(chronicle_id: str, sequence: int, normalized_name: str) -> str:
    """The deterministic id of an entity first mentioned as ``normalized_name`` at ``sequence``."""
    return str(uuid.uuid5(ENTITY_NAMESPACE, f"{chronicle_id}\x1f{sequence}\x1f{normalized_name}"))


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _same(a: Any, b: Any) -> bool:
    # Encoded comparison: in Python 1 == 1.0 == True, in JSON they differ.
    return canonical_encode(a) == canonical_encode(b)


def _typed(name: str, value: Any) -> Any:
    ctype = COMPONENT_TYPES.get(name)
    if ctype is None or isinstance(value, ctype):
        return value
    return msgspec.convert(value, ctype)


VALENCE_DIGITS: Final = 9
"""Decimals a valence keeps. Sums of deltas carry binary rounding noise (0.7 + 0.1 is
0.7999999999999999), which clients would see and compare against; nine decimals drop the noise
and keep every distinction a story makes."""


def _valence_digits(x: float) -> float:
    return round(x, VALENCE_DIGITS)


def _clamp(x: float) -> float:
    return min(1.0, max(-1.0, x)) + 0.0  # + 0.0 turns -0.0 into 0.0 for a stable encoding


# --------------------------------------------------------------------------------------------------
# Queries


def lookup(state: WorldState, ref: str) -> str | None:
    """The id of the entity a reference (id, name or alias) denotes, without creating anything."""
    candidate = ref.strip().lower()
    if candidate in state.entities:
        return candidate
    key = normalize_name(ref)
    return state.names.get(key) if key else None


def resolve(state: WorldState, ref: str) -> Entity | None:
    entity_id = lookup(state, ref)
    return None if entity_id is None else state.entities[entity_id]


def is_dead(entity: Entity) -> bool:
    """Dead or destroyed (the entity is still kept)."""
    status = entity.get(Status)
    return status is not None and status.is_dead


def location_of(state: WorldState, entity_id: str) -> str | None:
    """Where an entity is: its own position, or - when held - its holder's place, transitively.

    A holder of kind ``location`` is itself the place. ``None`` when unknown.
    """
    current: str | None = entity_id
    seen: set[str] = set()
    while current is not None and current not in seen:
        seen.add(current)
        entity = state.entities.get(current)
        if entity is None:
            return None
        if current != entity_id and entity.kind == "location":
            return current
        position = entity.get(Position)
        if position is not None:
            return position.location
        holder = entity.get(Holder)
        current = None if holder is None else holder.holder
    return None


def inventory(state: WorldState, holder_id: str) -> list[Entity]:
    """Entities directly held by ``holder_id``, in order of creation."""
    held = [e for e in state.entities.values() if (h := e.get(Holder)) is not None and h.holder == holder_id]
    return sorted(held, key=lambda e: (e.created_sequence, e.id))


# --------------------------------------------------------------------------------------------------
# Applying changes


def _touch(entity: Entity, change: Change) -> None:
    entity.updated_sequence = change.sequence
    entity.updated_event_id = change.event_id


def _relationship(state: WorldState, from_id: str, to_id: str, sequence: int) -> Relationship:
    key = relationship_key(from_id, to_id)
    rel = state.relationships.get(key)
    if rel is None:
        rel = Relationship(from_id=from_id, to_id=to_id, created_sequence=sequence, updated_sequence=sequence)
        state.relationships[key] = rel
    rel.updated_sequence = sequence
    return rel


def apply_change(state: WorldState, change: Change) -> None:
    """Apply one change to the state in place. The only way the reducer mutates state."""
    match change:
        case EntityCreated():
            state.entities[change.entity_id] = Entity(
                id=change.entity_id,
                name=change.name,
                kind=change.entity_kind,
                created_sequence=change.sequence,
                updated_sequence=change.sequence,
                created_event_id=change.event_id,
                updated_event_id=change.event_id,
            )
            state.names.setdefault(normalize_name(change.name), change.entity_id)
        case EntityKindChanged():
            entity = state.entities[change.entity_id]
            entity.kind = change.entity_kind
            _touch(entity, change)
        case ComponentSet():
            entity = state.entities[change.entity_id]
            entity.components[change.component] = _typed(change.component, change.value)
            entity.provenance[change.component] = Provenance(change.sequence, change.event_id)
            _touch(entity, change)
        case ComponentRemoved():
            entity = state.entities[change.entity_id]
            entity.components.pop(change.component, None)
            entity.provenance.pop(change.component, None)
            _touch(entity, change)
        case AliasAdded():
            entity = state.entities[change.entity_id]
            entity.aliases.append(change.alias)
            state.names[normalize_name(change.alias)] = change.entity_id
            _touch(entity, change)
        case RelationshipSet():
            rel = _relationship(state, change.from_id, change.to_id, change.sequence)
            old = rel.types.get(change.type)
            rel.types[change.type] = Relation(
                data=change.data,
                created_sequence=change.sequence if old is None else old.created_sequence,
                updated_sequence=change.sequence,
            )
        case RelationshipRemoved():
            rel = _relationship(state, change.from_id, change.to_id, change.sequence)
            rel.types.pop(change.type, None)
        case ValenceChanged():
            rel = _relationship(state, change.from_id, change.to_id, change.sequence)
            rel.valence[change.dimension] = change.value
            rel.provenance[change.dimension] = Provenance(change.sequence, change.event_id)
        case Anomaly():
            pass


def _check_order(state: WorldState, chronicle_id: str, sequence: int) -> None:
    if state.chronicle_id and chronicle_id != state.chronicle_id:
        raise ValueError(f"event of chronicle {chronicle_id!r} applied to state of {state.chronicle_id!r}")
    if state.last_sequence is not None and sequence <= state.last_sequence:
        raise ValueError(f"event sequence {sequence} is not after the state's {state.last_sequence}")


def _finish(state: WorldState, chronicle_id: str, sequence: int, event_id: str) -> None:
    state.chronicle_id = chronicle_id
    state.last_sequence = sequence
    state.last_event_id = event_id


def apply_changes(state: WorldState, event_changes: EventChanges) -> None:
    """Apply previously computed (or persisted and decoded) changes of one event, in place."""
    _check_order(state, event_changes.chronicle_id, event_changes.sequence)
    for change in event_changes.changes:
        apply_change(state, change)
    _finish(state, event_changes.chronicle_id, event_changes.sequence, event_changes.event_id)


# --------------------------------------------------------------------------------------------------
# The reducer


class _Rejected(Exception):
    def __init__(self, code: str, message: str, entity_ids: Iterable[str] = (), **detail: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.entity_ids = list(entity_ids)
        self.detail = detail


class _Reduction:
    """Folds one event into a state (in place), collecting the changes it applies."""

    def __init__(self, state: WorldState, event: ChronicleEvent) -> None:
        self.state = state
        self.event = event
        self.changes: list[Change] = []
        self.effect: int | None = None
        self.placed_explicitly: set[str] = set()

    # -- plumbing

    def emit(self, change: Change) -> None:
        apply_change(self.state, change)
        self.changes.append(change)

    @property
    def _prov(self) -> dict[str, Any]:
        return {"event_id": self.event.id, "sequence": self.event.sequence, "effect": self.effect}

    def anomaly(self, code: str, message: str, entity_ids: Iterable[str] = (), **detail: Any) -> None:
        self.emit(
            Anomaly(**self._prov, code=code, message=message, entity_ids=list(entity_ids), detail=detail)
        )

    def record(self, rejected: _Rejected) -> None:
        self.anomaly(rejected.code, rejected.message, rejected.entity_ids, **rejected.detail)

    def entity(self, entity_id: str) -> Entity:
        return self.state.entities[entity_id]

    # -- resolution

    def create(self, ref: str, kind: str) -> str:
        key = normalize_name(ref)
        if not key:
            raise _Rejected("blank_reference", "an entity reference must not be blank")
        entity_id = entity_id_for(self.event.chronicle_id, self.event.sequence, key)
        assert entity_id not in self.state.entities, "entity ids are unique per (sequence, name)"
        self.emit(
            EntityCreated(**self._prov, entity_id=entity_id, name=" ".join(ref.split()), entity_kind=kind)
        )
        return entity_id

    def resolve(self, ref: str, kind: str) -> str:
        """The entity a reference denotes, created (with ``kind``) on first mention."""
        found = lookup(self.state, ref)
        return found if found is not None else self.create(ref, kind)

    def existing(self, ref: str) -> str:
        found = lookup(self.state, ref)
        if found is None:
            raise _Rejected("unknown_entity", f"no entity named {ref!r}", reference=ref)
        return found

    # -- components

    def set_component(self, entity_id: str, component: str, raw: Any) -> None:
        """Validate a client value for a component and store it (resolving entity references)."""
        name = normalize_name(component)
        if not name:
            raise _Rejected("invalid_component_value", "a component name must not be blank", [entity_id])
        ctype = COMPONENT_TYPES.get(name)
        if ctype is None:
            try:
                value: Any = msgspec.json.decode(msgspec.json.encode(raw))  # plain JSON, stored as is
            except (msgspec.EncodeError, TypeError, ValueError) as exc:
                raise _Rejected(
                    "invalid_component_value", f"{name!r} is not JSON: {exc}", [entity_id], component=name
                ) from exc
            self.store(entity_id, name, value)
            return
        if name in PLACEMENT_COMPONENTS:
            self.placed_explicitly.add(entity_id)
        try:
            parsed = ctype.parse(raw, self.entity(entity_id).components.get(name))
        except (msgspec.ValidationError, ValueError, TypeError) as exc:
            raise _Rejected(
                "invalid_component_value",
                f"invalid value for component {name!r}: {exc}",
                [entity_id],
                component=name,
                error=str(exc),
            ) from exc
        for field, kind in ctype.refs.items():
            ref = getattr(parsed, field)
            if isinstance(ref, str):
                parsed = msgspec.structs.replace(parsed, **{field: self.resolve(ref, kind)})
        self.store(entity_id, name, parsed)

    def store(self, entity_id: str, name: str, value: Any) -> None:
        """Set a validated component value (typed, with resolved references, or custom JSON)."""
        entity = self.entity(entity_id)
        ctype = COMPONENT_TYPES.get(name)
        if name in PLACEMENT_COMPONENTS:
            self.placed_explicitly.add(entity_id)
        if ctype is not None:
            for field in ctype.refs:
                if getattr(value, field) == entity_id:
                    raise _Rejected(
                        "self_reference",
                        f"{entity.name!r} cannot be its own {name}",
                        [entity_id],
                        component=name,
                    )
        if isinstance(value, Holder):
            holder: str | None = value.holder
            seen: set[str] = set()
            while holder is not None and holder not in seen:
                if holder == entity_id:
                    raise _Rejected(
                        "holder_cycle",
                        f"{entity.name!r} cannot be held by {value.holder!r}, which it holds",
                        [entity_id, value.holder],
                    )
                seen.add(holder)
                next_holder = self.state.entities[holder].get(Holder)
                holder = None if next_holder is None else next_holder.holder
        present = name in entity.components
        previous = entity.components.get(name)
        if present and _same(previous, value):
            return
        self.emit(
            ComponentSet(
                **self._prov,
                entity_id=entity_id,
                component=name,
                value=_builtins(value),
                previous=_builtins(previous) if present else None,
            )
        )
        if ctype is not None:
            for other in ctype.excludes:
                if other in entity.components:
                    self.remove(entity_id, other)

    def remove(self, entity_id: str, name: str) -> None:
        entity = self.entity(entity_id)
        if name in PLACEMENT_COMPONENTS:
            self.placed_explicitly.add(entity_id)
        if name not in entity.components:
            raise _Rejected(
                "component_missing", f"{entity.name!r} has no component {name!r}", [entity_id], component=name
            )
        self.emit(
            ComponentRemoved(
                **self._prov, entity_id=entity_id, component=name, previous=_builtins(entity.components[name])
            )
        )

    # -- effects

    def apply_effect(self, effect: Effect) -> None:
        match effect:
            case SpawnEffect():
                self.spawn(effect)
            case MoveEffect():
                entity_id = self.resolve(effect.entity, "character")
                self.placed_explicitly.add(entity_id)
                self.store(entity_id, "position", Position(location=self.resolve(effect.to, "location")))
            case TransferEffect():
                self.transfer(effect)
            case SetEffect():
                self.set_component(self.resolve(effect.entity, "character"), effect.component, effect.value)
            case UnsetEffect():
                entity_id = self.existing(effect.entity)
                self.remove(entity_id, normalize_name(effect.component))
            case StatusEffect():
                self.set_component(self.resolve(effect.entity, "character"), "status", effect.status)
            case DestroyEffect():
                self.destroy(self.resolve(effect.entity, "character"))
            case AliasEffect():
                self.alias(effect)
            case RelateEffect():
                self.relate(effect)
            case UnrelateEffect():
                self.unrelate(effect)
            case ValenceEffect():
                self.valence(effect)

    def spawn(self, effect: SpawnEffect) -> None:
        kind = normalize_name(effect.kind) or "character"
        entity_id = lookup(self.state, effect.entity)
        if entity_id is None:
            entity_id = self.create(effect.entity, kind)
        else:
            entity = self.entity(entity_id)
            self.anomaly(
                "spawn_existing",
                f"spawn of {effect.entity!r}, which already exists as {entity.name!r}; applied to it",
                [entity_id],
                requested_kind=kind,
            )
            if entity.kind != kind:
                self.emit(
                    EntityKindChanged(
                        **self._prov, entity_id=entity_id, entity_kind=kind, previous=entity.kind
                    )
                )
        for component, raw in effect.components.items():
            try:
                self.set_component(entity_id, component, raw)
            except _Rejected as rejected:
                self.record(rejected)

    def destroy(self, entity_id: str) -> None:
        """Status ``destroyed``; a held thing is no longer carried but lies where it was destroyed
        (a crown melted down is not in its last holder's inventory any more)."""
        self.set_component(entity_id, "status", "destroyed")
        if self.entity(entity_id).get(Holder) is not None:
            place = location_of(self.state, entity_id)
            if place is None:
                self.remove(entity_id, "holder")
            else:
                self.store(entity_id, "position", Position(location=place))

    def transfer(self, effect: TransferEffect) -> None:
        item = self.resolve(effect.item, "item")
        source = None if effect.from_ is None else self.resolve(effect.from_, "character")
        to = self.resolve(effect.to, "character")
        self.placed_explicitly.add(item)
        current_holder = self.entity(item).get(Holder)
        current = None if current_holder is None else current_holder.holder
        if source is not None and current != source:
            self.anomaly(
                "transfer_source_mismatch",
                f"{self.entity(item).name!r} transferred from {self.entity(source).name!r}, "
                f"which did not hold it; transferred anyway",
                [item, source, to] + ([current] if current is not None else []),
                expected_holder=source,
                actual_holder=current,
            )
        self.store(item, "holder", Holder(holder=to))

    def alias(self, effect: AliasEffect) -> None:
        entity_id = self.resolve(effect.entity, "character")
        key = normalize_name(effect.alias)
        if not key:
            raise _Rejected("blank_reference", "an alias must not be blank", [entity_id])
        owner = self.state.names.get(key)
        if owner == entity_id:
            return
        if owner is not None:
            raise _Rejected(
                "alias_conflict",
                f"alias {effect.alias!r} of {self.entity(entity_id).name!r} already names "
                f"{self.entity(owner).name!r}; not added",
                [entity_id, owner],
                alias=effect.alias,
                existing_entity_id=owner,
            )
        self.emit(AliasAdded(**self._prov, entity_id=entity_id, alias=" ".join(effect.alias.split())))

    @staticmethod
    def label(text: str, what: str) -> str:
        key = normalize_name(text)
        if not key:
            raise _Rejected("blank_reference", f"a {what} must not be blank")
        return key

    def relate(self, effect: RelateEffect) -> None:
        a = self.resolve(effect.from_, "character")
        b = self.resolve(effect.to, "character")
        rtype = self.label(effect.type, "relationship type")
        data = None if effect.data is None else msgspec.json.decode(msgspec.json.encode(effect.data))
        rel = self.state.relationships.get(relationship_key(a, b))
        old = None if rel is None else rel.types.get(rtype)
        if old is not None and _same(old.data, data):
            return
        self.emit(RelationshipSet(**self._prov, from_id=a, to_id=b, type=rtype, data=data))

    def unrelate(self, effect: UnrelateEffect) -> None:
        a = self.existing(effect.from_)
        b = self.existing(effect.to)
        rtype = self.label(effect.type, "relationship type")
        rel = self.state.relationships.get(relationship_key(a, b))
        if rel is None or rtype not in rel.types:
            raise _Rejected(
                "relationship_missing",
                f"no {rtype!r} relationship from {self.entity(a).name!r} to {self.entity(b).name!r}",
                [a, b],
                type=rtype,
            )
        self.emit(RelationshipRemoved(**self._prov, from_id=a, to_id=b, type=rtype))

    def valence(self, effect: ValenceEffect) -> None:
        a = self.resolve(effect.from_, "character")
        b = self.resolve(effect.to, "character")
        dimension = self.label(effect.dimension, "valence dimension")
        rel = self.state.relationships.get(relationship_key(a, b))
        previous = 0.0 if rel is None else rel.valence.get(dimension, 0.0)
        if effect.value is not None:
            value = _clamp(effect.value)
        else:
            assert effect.delta is not None  # ValenceEffect guarantees exactly one
            value = _clamp(_valence_digits(previous + effect.delta))
        self.emit(
            ValenceChanged(
                **self._prov,
                from_id=a,
                to_id=b,
                dimension=dimension,
                previous=previous,
                delta=_valence_digits(value - previous) + 0.0,
                value=value,
            )
        )

    # -- the event

    def run(self) -> EventChanges:
        event = self.event
        actors: list[str] = []
        for actor in event.actors:
            try:
                actor_id = self.resolve(actor.name, "character")
            except _Rejected as rejected:
                self.record(rejected)
                continue
            if actor_id not in actors:
                actors.append(actor_id)
        location: str | None = None
        if event.location is not None:
            try:
                location = self.resolve(event.location, "location")
            except _Rejected as rejected:
                self.record(rejected)
        dead_before = {a for a in actors if is_dead(self.entity(a))}

        for index, effect in enumerate(event.effects):
            self.effect = index
            try:
                self.apply_effect(effect)
            except _Rejected as rejected:
                self.record(rejected)
        self.effect = None

        if location is not None:
            for actor_id in actors:
                entity = self.entity(actor_id)
                if (
                    actor_id == location
                    or actor_id in self.placed_explicitly
                    or (actor_id in dead_before and is_dead(entity))
                    or entity.get(Holder) is not None
                ):
                    continue
                self.store(actor_id, "position", Position(location=location))

        return EventChanges(
            event_id=event.id, sequence=event.sequence, chronicle_id=event.chronicle_id, changes=self.changes
        )


def apply_event(state: WorldState, event: ChronicleEvent) -> EventChanges:
    """Fold one event into ``state`` in place and return the changes it made (in order)."""
    _check_order(state, event.chronicle_id, event.sequence)
    changes = _Reduction(state, event).run()
    _finish(state, event.chronicle_id, event.sequence, event.id)
    return changes


def reduce_event(state: WorldState, event: ChronicleEvent) -> EventChanges:
    """The changes ``event`` would make to ``state``, without touching it.

    ``apply_changes(state, reduce_event(state, event))`` equals ``apply_event(state, event)``. This
    copies the state; use :func:`apply_event` when mutating in place is fine.
    """
    _check_order(state, event.chronicle_id, event.sequence)
    return _Reduction(decode_state(encode_state(state)), event).run()


def replay(events: Iterable[ChronicleEvent], *, chronicle_id: str = "") -> WorldState:
    """The world state after ``events`` (in sequence order), from an empty state."""
    state = WorldState(chronicle_id=chronicle_id)
    for event in events:
        apply_event(state, event)
    return state
