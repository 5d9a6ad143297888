"""Typed ECS components: the per-entity facts of the derived world state.

Every registered component is a frozen ``msgspec.Struct`` subclass of :class:`Component`. A ``set``
effect whose component name (case-insensitive) is registered in :data:`COMPONENT_TYPES` is validated
by converting the client's JSON value into that type with ``msgspec.convert`` (strict, unknown fields
forbidden); an invalid value is rejected by the reducer as an ``anomaly`` change, never a crash. Any
other component name is a *custom* component: its JSON value is stored as is and read back unchanged.

Adding a component type
-----------------------
1. Define a frozen subclass of :class:`Component` below, e.g.::

       class Mood(Component, frozen=True):
           mood: str
           shorthand = "mood"

2. Add one line to :data:`COMPONENT_TYPES`: ``"mood": Mood,``.

Optional class attributes (plain assignments, not fields):

* ``shorthand``: the field a bare (non-object) JSON value fills, so ``"value": "dead"`` means
  ``{"value": "dead"}``.
* ``refs``: fields holding an entity reference (name, alias or id), mapped to the kind an entity
  first mentioned there gets; the reducer resolves them and stores the entity id.
* ``excludes``: components a value of this type replaces (an entity is either placed somewhere or
  held by someone, never both).
* Override :meth:`Component.parse` for merge semantics other than "the new value supersedes the
  old one": :class:`Health` patches field by field, :class:`Traits` and :class:`Tags` accumulate.

Derived, not stored: an entity's inventory is the set of items whose :class:`Holder` is that
entity, and a held item's location is its holder's location (see ``ecs.reducer.location_of``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Final, Self

import msgspec

from rag.events import Effect, SetEffect, SpawnEffect, normalize_name

__all__ = [
    "COMPONENT_TYPES",
    "DEAD_STATUSES",
    "KNOWN_STATUSES",
    "Component",
    "Description",
    "Health",
    "Holder",
    "Position",
    "Status",
    "Tags",
    "Traits",
    "component_name",
]

KNOWN_STATUSES: Final = ("alive", "dead", "unconscious", "missing", "destroyed")
"""Status values the reducer understands; they are stored lower-cased. Free text is allowed too."""

DEAD_STATUSES: Final = frozenset({"dead", "destroyed"})
"""Statuses under which an entity no longer acts (it is still kept and queryable)."""

Label = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Text = Annotated[str, msgspec.Meta(max_length=8_000)]


class Component(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of all typed components; see the module docstring for how to add one."""

    shorthand: ClassVar[str | None] = None
    refs: ClassVar[Mapping[str, str]] = MappingProxyType({})
    excludes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls, raw: Any, previous: Self | None = None) -> Self:
        """Validate a client JSON value; the default is "the new value supersedes the old one".

        Raises ``msgspec.ValidationError`` (a ``ValueError``) for a value of the wrong shape.
        """
        if cls.shorthand is not None and not isinstance(raw, dict):
            raw = {cls.shorthand: raw}
        return msgspec.convert(raw, cls)


class Position(Component, frozen=True):
    """Where an entity is: the id of a location entity. Superseded by each move."""

    location: Label
    shorthand = "location"
    refs = MappingProxyType({"location": "location"})
    excludes = ("holder",)


class Status(Component, frozen=True):
    """Alive, dead, unconscious, missing, destroyed, or free text. Superseded by each change."""

    value: Label
    shorthand = "value"

    @classmethod
    def parse(cls, raw: Any, previous: Self | None = None) -> Self:
        parsed = super().parse(raw, previous)
        text = " ".join(parsed.value.split())
        if not text:
            raise ValueError("status must not be blank")
        key = normalize_name(text)
        return cls(value=key if key in KNOWN_STATUSES else text)

    @property
    def is_dead(self) -> bool:
        return normalize_name(self.value) in DEAD_STATUSES


class Health(Component, frozen=True):
    """Hit points and condition. A ``set`` *patches*: fields it omits keep their previous value
    (an explicit ``null`` clears one); a bare number sets ``hp``."""

    hp: float | None = None
    max_hp: float | None = None
    condition: Label | None = None
    shorthand = "hp"

    @classmethod
    def parse(cls, raw: Any, previous: Self | None = None) -> Self:
        if not isinstance(raw, dict):
            raw = {"hp": raw}
        if previous is not None:
            raw = {**msgspec.structs.asdict(previous), **raw}
        return msgspec.convert(raw, cls)


class Holder(Component, frozen=True):
    """Who (or what) holds an item: an entity id. Inventory is derived from this, never stored."""

    holder: Label
    shorthand = "holder"
    refs = MappingProxyType({"holder": "character"})
    excludes = ("position",)


class Description(Component, frozen=True):
    """Free descriptive text. Superseded by each change."""

    text: Text
    shorthand = "text"


def _accumulate(previous: list[str], new: list[str]) -> list[str]:
    """Union of labels, first spelling kept, matched case-insensitively, blanks dropped."""
    seen = {normalize_name(x) for x in previous}
    out = list(previous)
    for label in new:
        key = normalize_name(label)
        if key and key not in seen:
            seen.add(key)
            out.append(" ".join(label.split()))
    return out


class Traits(Component, frozen=True):
    """Character traits; a ``set`` *adds* to them (a string or list of strings). ``unset`` clears."""

    traits: list[Label] = []
    shorthand = "traits"

    @classmethod
    def parse(cls, raw: Any, previous: Self | None = None) -> Self:
        if isinstance(raw, str):
            raw = [raw]
        new = super().parse(raw, previous)
        return cls(traits=_accumulate(previous.traits if previous else [], new.traits))


class Tags(Component, frozen=True):
    """Free labels; a ``set`` *adds* to them (a string or list of strings). ``unset`` clears."""

    tags: list[Label] = []
    shorthand = "tags"

    @classmethod
    def parse(cls, raw: Any, previous: Self | None = None) -> Self:
        if isinstance(raw, str):
            raw = [raw]
        new = super().parse(raw, previous)
        return cls(tags=_accumulate(previous.tags if previous else [], new.tags))


COMPONENT_TYPES: Final[Mapping[str, type[Component]]] = MappingProxyType(
    {
        "position": Position,
        "status": Status,
        "health": Health,
        "holder": Holder,
        "description": Description,
        "traits": Traits,
        "tags": Tags,
    }
)
"""Component name (lower case) -> type. Names in ``set``/``unset`` are matched case-insensitively."""

_NAMES: Final = {ctype: name for name, ctype in COMPONENT_TYPES.items()}


def component_name(ctype: type[Component]) -> str:
    """The registered name of a component type; ``KeyError`` if it is not registered."""
    return _NAMES[ctype]


def refused_values(effects: Sequence[Effect]) -> list[tuple[str, str]]:
    """Where a registered component refuses a value that ``set`` or ``spawn`` gives it, as
    ``(field, reason)`` with the field relative to the event (``effects[0].value``). The reducer
    would skip such an effect (an anomaly no client sees); ingest refuses the batch instead."""
    refused: list[tuple[str, str]] = []
    for index, effect in enumerate(effects):
        if isinstance(effect, SetEffect):
            values = {f"effects[{index}].value": (effect.component, effect.value)}
        elif isinstance(effect, SpawnEffect):
            values = {f"effects[{index}].components.{n}": (n, v) for n, v in effect.components.items()}
        else:
            continue
        for field, (name, value) in values.items():
            ctype = COMPONENT_TYPES.get(normalize_name(name))
            if ctype is None:
                continue  # a custom component: any JSON
            try:
                ctype.parse(value, None)
            except (msgspec.ValidationError, ValueError, TypeError) as error:
                refused.append((field, f"not a valid {normalize_name(name)!r} value: {error}"))
    return refused
