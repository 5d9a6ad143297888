"""The filter language of the entity and relationship queries: parsed, never pasted into SQL.

Two kinds of criteria, each parsed from one query-string value:

Component field comparisons (``where``)
    ``Component.field<op>value``, e.g. ``health.hp<10``, ``status.value=dead``,
    ``oath.task="deliver the Salt Ledger"``, ``bounty.reward_crowns>=100``. The component name is
    matched case-insensitively (components are stored under normalized names); the field path
    (``a.b.c`` for nested objects, none at all to compare a custom component's whole value) is
    matched exactly, as JSON keys are. Operators: ``=`` ``!=`` ``<`` ``<=`` ``>`` ``>=``.
Valence bounds (``valence``)
    ``dimension<op>number``, e.g. ``trust>0.5``, ``fear<=-0.2``; dimensions are case-insensitive.

Values: a number (``10``, ``-0.5``, ``1e3``), ``true`` / ``false``, a quoted string (``"..."`` or
``'...'``, taken literally) or a bare word (a string; it may not contain quotes or operator
characters). A comparison matches only a value of the same JSON type: ``health.hp<10`` never
matches a string ``hp``, and a missing field matches nothing, not even ``!=``. Strings compare by
code point (``COLLATE "C"`` in SQL); booleans support only ``=`` and ``!=``.

Every criterion renders to a SQLAlchemy expression whose values are bound parameters
(:meth:`FieldComparison.condition`, :meth:`ValenceBound.condition`) and evaluates the same way in
Python over builtins (``matches``), which the point-in-time (replayed) queries use. Malformed
input raises ``ValueError`` with a message meant for the client; nothing else is raised.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeAlias

import msgspec
from sqlalchemy import Float, Text, case, func, literal
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql.elements import ColumnElement

from rag.events import normalize_name

__all__ = [
    "MAX_CRITERION_LENGTH",
    "OPERATORS",
    "FieldComparison",
    "Op",
    "ValenceBound",
    "parse_comparison",
    "parse_valence",
]

MAX_CRITERION_LENGTH: Final = 500
MAX_PATH_DEPTH: Final = 8

Op: TypeAlias = Literal["=", "!=", "<", "<=", ">", ">="]
Value: TypeAlias = float | str | bool

OPERATORS: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_OP_CHARS: Final = frozenset("<>=!")
_QUOTES: Final = frozenset("\"'")
_NUMBER: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _compare(op: str, left: ColumnElement[Any], right: ColumnElement[Any]) -> ColumnElement[bool]:
    result = OPERATORS[op](left, right)
    assert isinstance(result, ColumnElement)
    return result


class FieldComparison(msgspec.Struct, frozen=True):
    """``component.path <op> value``; ``component`` is normalized, ``path`` may be empty."""

    component: str
    path: tuple[str, ...]
    op: Op
    value: Value

    @property
    def value_type(self) -> Literal["number", "string", "boolean"]:
        if isinstance(self.value, bool):
            return "boolean"
        return "number" if isinstance(self.value, float) else "string"

    def condition(self, data: ColumnElement[Any]) -> ColumnElement[bool]:
        """The comparison on a component's JSONB ``data`` column (the caller matches the type).

        Only a value of the compared JSON type is cast (``CASE``, so PostgreSQL never tries to
        cast a string to a number); anything else becomes NULL, which matches nothing.
        """
        path = literal(list(self.path), type_=ARRAY(Text))
        node = data.op("#>", return_type=JSONB)(path)
        text = data.op("#>>", return_type=Text)(path)
        kind = self.value_type
        is_kind = func.jsonb_typeof(node) == kind
        if kind == "number":
            left: ColumnElement[Any] = case((is_kind, text.cast(Float)), else_=None)
            return _compare(self.op, left, literal(self.value, type_=Float))
        if kind == "boolean":
            left = case((is_kind, text), else_=None)
            return _compare(self.op, left, literal("true" if self.value else "false", type_=Text))
        left = case((is_kind, text), else_=None).collate("C")
        return _compare(self.op, left, literal(self.value, type_=Text))

    def matches(self, components: Mapping[str, Any]) -> bool:
        """The comparison on an entity's components as JSON builtins (name -> value)."""
        if self.component not in components:
            return False
        node: Any = components[self.component]
        for key in self.path:
            if not isinstance(node, dict) or key not in node:
                return False
            node = node[key]
        kind = self.value_type
        if kind == "boolean":
            same_type = isinstance(node, bool)
        elif kind == "number":
            same_type = isinstance(node, int | float) and not isinstance(node, bool)
        else:
            same_type = isinstance(node, str)
        if not same_type:
            return False
        if kind == "number":
            node = float(node)
        return OPERATORS[self.op](node, self.value)

    def __str__(self) -> str:
        left = ".".join((self.component, *self.path))
        value = self.value
        shown = ("true" if value else "false") if isinstance(value, bool) else repr(value)
        return f"{left}{self.op}{shown}"


class ValenceBound(msgspec.Struct, frozen=True):
    """``dimension <op> number`` on a relationship's valence; a missing dimension never matches."""

    dimension: str
    op: Op
    value: float

    def condition(self, valence: ColumnElement[Any]) -> ColumnElement[bool]:
        """The bound on a relationship's JSONB ``valence`` column."""
        key = literal(self.dimension, type_=Text)
        node = valence.op("->", return_type=JSONB)(key)
        text = valence.op("->>", return_type=Text)(key)
        left = case((func.jsonb_typeof(node) == "number", text.cast(Float)), else_=None)
        return _compare(self.op, left, literal(self.value, type_=Float))

    def matches(self, valence: Mapping[str, float]) -> bool:
        value = valence.get(self.dimension)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        return OPERATORS[self.op](float(value), self.value)


def _split(text: str, what: str, example: str) -> tuple[str, Op, str]:
    """Left side, operator, right side (raw) of ``left<op>right``."""
    if not isinstance(text, str):
        raise ValueError(f"expected {what} as text")
    if len(text) > MAX_CRITERION_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_CRITERION_LENGTH} characters")
    if any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise ValueError(f"{what} must not contain control characters or lone surrogates")
    index = next((i for i, c in enumerate(text) if c in _OP_CHARS or c in _QUOTES), None)
    if index is None or text[index] in _QUOTES:
        raise ValueError(f"expected {what} like {example!r}, with one of = != < <= > >=, got {text!r}")
    pair = text[index : index + 2]
    op: str = pair if pair in OPERATORS else text[index]
    if op not in OPERATORS:
        raise ValueError(f"unknown operator {pair!r} in {text!r}; use one of = != < <= > >=")
    return text[:index].strip(), op, text[index + len(op) :].strip()  # type: ignore[return-value]


def _value(raw: str, text: str) -> Value:
    if not raw:
        raise ValueError(f"missing value after the operator in {text!r}")
    if raw[0] in _QUOTES:
        if len(raw) < 2 or raw[-1] != raw[0]:
            raise ValueError(f"unterminated string {raw!r} in {text!r}")
        inner = raw[1:-1]
        if raw[0] in inner:
            raise ValueError(f"a quoted string cannot contain its own quote character: {raw!r}")
        return inner
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _NUMBER.fullmatch(raw):
        number = float(raw)
        if not math.isfinite(number):
            raise ValueError(f"number {raw!r} is out of range")
        return number
    bad = sorted({c for c in raw if c in _OP_CHARS or c in _QUOTES})
    if bad:
        raise ValueError(
            f"unexpected {''.join(bad)!r} in value {raw!r} of {text!r}; quote strings that contain it"
        )
    return raw


def parse_comparison(text: str) -> FieldComparison:
    """Parse ``Component.field<op>value``; raises ``ValueError`` with a client-facing message."""
    left, op, right = _split(text, "a component comparison", "health.hp<10")
    parts = [p.strip() for p in left.split(".")]
    if not parts[0]:
        raise ValueError(f"missing component name before the operator in {text!r}")
    if any(not p for p in parts[1:]):
        raise ValueError(f"empty field name in {left!r}")
    if len(parts) - 1 > MAX_PATH_DEPTH:
        raise ValueError(f"field path {left!r} is deeper than {MAX_PATH_DEPTH} levels")
    component = normalize_name(parts[0])
    if len(component) > 100:
        raise ValueError(f"component name {parts[0][:20]!r}... is longer than 100 characters")
    value = _value(right, text)
    if isinstance(value, bool) and op not in ("=", "!="):
        raise ValueError(f"booleans can only be compared with = or !=, got {op!r} in {text!r}")
    return FieldComparison(component=component, path=tuple(parts[1:]), op=op, value=value)


def parse_valence(text: str) -> ValenceBound:
    """Parse ``dimension<op>number``; raises ``ValueError`` with a client-facing message."""
    left, op, right = _split(text, "a valence bound", "trust>0.5")
    dimension = normalize_name(left)
    if not dimension:
        raise ValueError(f"missing valence dimension before the operator in {text!r}")
    if len(dimension) > 100:
        raise ValueError(f"valence dimension {left[:20]!r}... is longer than 100 characters")
    value = _value(right, text)
    if not isinstance(value, float):
        raise ValueError(f"a valence bound needs a number, got {right!r} in {text!r}")
    return ValenceBound(dimension=dimension, op=op, value=value)
