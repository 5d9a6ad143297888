"""Chronicle event and effect types: the vocabulary clients write and the ECS reducer reads.

Incoming data is decoded with ``forbid_unknown_fields`` so a typo in a field name is an error the
client sees, not a fact silently dropped. Effects are a tagged union on ``op``. New fields must
always get defaults so that stored events keep decoding (schema evolution).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final, Literal

import msgspec

__all__ = [
    "MAX_BATCH_EVENTS",
    "MAX_SUMMARY_CHARS",
    "ActorRef",
    "AliasEffect",
    "DestroyEffect",
    "Effect",
    "EventBatchIn",
    "EventIn",
    "MoveEffect",
    "RelateEffect",
    "SetEffect",
    "SpawnEffect",
    "StatusEffect",
    "TransferEffect",
    "UnrelateEffect",
    "UnsetEffect",
    "ValenceEffect",
    "decode_batch",
    "effect_entities",
    "normalize_name",
]

MAX_SUMMARY_CHARS: Final = 8_000
MAX_BATCH_EVENTS: Final = 1_000
MAX_NAME_CHARS: Final = 200
# Custom component values are client JSON; bounding them keeps one event from bloating state or
# blowing the stack of recursive consumers.
MAX_VALUE_DEPTH: Final = 16
MAX_VALUE_BYTES: Final = 64 * 1024

# PostgreSQL text and JSONB cannot hold NUL characters; rejecting them here turns what would be a
# database error into a clear 422.
_NO_NUL = r"^[^\x00]*$"

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS, pattern=_NO_NUL)]
"""An entity reference: a name (case-insensitive within a chronicle) or an entity id."""

Label = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=_NO_NUL)]
Valence = Annotated[float, msgspec.Meta(ge=-1e6, le=1e6)]


class _Effect(msgspec.Struct, forbid_unknown_fields=True, tag_field="op", frozen=True):
    pass


class SpawnEffect(_Effect, tag="spawn", frozen=True):
    entity: Name
    kind: Label = "character"
    components: dict[Label, Any] = {}

    def __post_init__(self) -> None:
        for value in self.components.values():
            _check_value_bounds(value)


class MoveEffect(_Effect, tag="move", frozen=True):
    entity: Name
    to: Name


class TransferEffect(_Effect, tag="transfer", frozen=True):
    item: Name
    to: Name
    from_: Name | None = msgspec.field(default=None, name="from")


class SetEffect(_Effect, tag="set", frozen=True):
    entity: Name
    component: Label
    value: Any

    def __post_init__(self) -> None:
        _check_value_bounds(self.value)


class UnsetEffect(_Effect, tag="unset", frozen=True):
    entity: Name
    component: Label


class StatusEffect(_Effect, tag="status", frozen=True):
    entity: Name
    status: Label


class RelateEffect(_Effect, tag="relate", frozen=True):
    from_: Name = msgspec.field(name="from")
    to: Name
    type: Label
    data: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.data is not None:
            _check_value_bounds(self.data)


class UnrelateEffect(_Effect, tag="unrelate", frozen=True):
    from_: Name = msgspec.field(name="from")
    to: Name
    type: Label


class ValenceEffect(_Effect, tag="valence", frozen=True):
    """A change of feeling along any named dimension; exactly one of ``delta`` or ``value``."""

    from_: Name = msgspec.field(name="from")
    to: Name
    dimension: Label
    delta: Valence | None = None
    value: Valence | None = None

    def __post_init__(self) -> None:
        if (self.delta is None) == (self.value is None):
            raise ValueError("exactly one of `delta` or `value` is required")


class DestroyEffect(_Effect, tag="destroy", frozen=True):
    entity: Name


class AliasEffect(_Effect, tag="alias", frozen=True):
    entity: Name
    alias: Name


Effect = (
    SpawnEffect
    | MoveEffect
    | TransferEffect
    | SetEffect
    | UnsetEffect
    | StatusEffect
    | RelateEffect
    | UnrelateEffect
    | ValenceEffect
    | DestroyEffect
    | AliasEffect
)


class ActorRef(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Someone taking part in an event, with an optional role (agent, patient, witness, ...)."""

    name: Name
    role: Label | None = None


class EventIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One narrative event as a client sends it."""

    summary: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SUMMARY_CHARS, pattern=_NO_NUL)]
    external_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_NO_NUL)] | None = None
    kind: Label = "event"
    # A bare string is shorthand for an actor without a role.
    actors: Annotated[list[ActorRef | Name], msgspec.Meta(max_length=100)] = []
    location: Name | None = None
    effects: Annotated[list[Effect], msgspec.Meta(max_length=200)] = []
    occurred_at: dt.datetime | None = None
    tags: Annotated[list[Label], msgspec.Meta(max_length=50)] = []
    importance: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5

    def __post_init__(self) -> None:
        if not self.summary.strip():
            raise ValueError("summary must not be blank")

    def actor_refs(self) -> list[ActorRef]:
        return [a if isinstance(a, ActorRef) else ActorRef(name=a) for a in self.actors]


class EventBatchIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    events: Annotated[list[EventIn], msgspec.Meta(min_length=1, max_length=MAX_BATCH_EVENTS)]


def decode_batch(raw: bytes | str) -> EventBatchIn:
    """Decode and validate a batch; raises ``msgspec.ValidationError`` naming ``$.events[i].field``."""
    return msgspec.json.decode(raw, type=EventBatchIn)


def normalize_name(name: str) -> str:
    """The key names are matched by: case-insensitive, surrounding and repeated whitespace ignored."""
    return " ".join(name.split()).casefold()


def effect_entities(effect: Effect) -> list[str]:
    """The entity references an effect touches, in the order it names them."""
    match effect:
        case SpawnEffect(entity=e) | SetEffect(entity=e) | UnsetEffect(entity=e):
            return [e]
        case StatusEffect(entity=e) | DestroyEffect(entity=e) | AliasEffect(entity=e):
            return [e]
        case MoveEffect(entity=e, to=to):
            return [e, to]
        case TransferEffect(item=item, to=to, from_=source):
            return [item, to] if source is None else [item, source, to]
        case RelateEffect(from_=a, to=b) | UnrelateEffect(from_=a, to=b) | ValenceEffect(from_=a, to=b):
            return [a, b]
    raise AssertionError(f"unhandled effect {effect!r}")  # pragma: no cover


def _check_value_bounds(value: Any) -> None:
    """Reject client JSON that is nested too deeply or too large to keep as component state."""
    size = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_VALUE_DEPTH:
            raise ValueError(f"value is nested deeper than {MAX_VALUE_DEPTH} levels")
        if isinstance(item, dict):
            if any("\x00" in str(k) for k in item):
                raise ValueError("value contains a NUL character")
            size += sum(len(str(k)) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise ValueError("value contains a NUL character")
            size += len(item)
        else:
            size += 8
        if size > MAX_VALUE_BYTES:
            raise ValueError(f"value is larger than {MAX_VALUE_BYTES} bytes")


EntityKind = Literal["character", "location", "item", "faction"]
"""The kinds the reducer infers; clients may spawn entities of any other kind by name."""
