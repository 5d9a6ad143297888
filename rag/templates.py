"""Versioned Jinja2 prompt templates that turn an assembled context into text for a narrative AI.

Templates live in ``prompts/`` as ``<name>.v<version>.j2`` (``default.v1.j2``). A bare name
(``"default"``) renders its highest version; a versioned name (``"default.v1"``) pins one, so a
client can keep a stable prompt while a new version is rolled out. Files starting with ``_`` are
shared macros, not templates.

Rendering is plain text: autoescape is off (HTML escaping would corrupt the prose an LLM reads),
``StrictUndefined`` turns a missing context variable into an error instead of a silent gap, and
the output is normalised (trailing spaces dropped, runs of blank lines collapsed, one final
newline) so that the same context always gives byte-identical text, which keeps token counts and
caches stable. Dict-valued fields (components, valence) are iterated sorted by the templates;
lists are rendered in the order the caller gave, so the caller sorts them.

The render context contract is :class:`RenderContext` (documented in ``prompts/README.md``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, NotRequired, TypedDict

import jinja2
import msgspec

__all__ = [
    "DEFAULT_PROMPTS_DIR",
    "EventView",
    "FocusView",
    "ItemView",
    "LocationView",
    "RelationshipView",
    "RenderContext",
    "StateView",
    "StatusView",
    "TemplateRegistry",
    "UnknownTemplate",
]

DEFAULT_PROMPTS_DIR: Final = Path(__file__).resolve().parent.parent / "prompts"
"""``<repo>/prompts``: the project is installed in editable mode, so this is the checkout's copy."""

_TEMPLATE_FILE: Final = re.compile(r"^(?P<base>[a-z0-9][a-z0-9_-]*)\.v(?P<version>[0-9]+)\.j2$")
# Component and free-text values are clipped so that one oversized custom component cannot crowd
# everything else out of the budget; the assembler still enforces the real budget on the result.
_MAX_VALUE_CHARS: Final = 300
_BLANK_RUNS: Final = re.compile(r"\n{3,}")


# --------------------------------------------------------------------------------------------------
# Render context contract
# --------------------------------------------------------------------------------------------------


class FocusView(TypedDict):
    id: str
    name: str
    kind: str


class LocationView(TypedDict):
    name: str
    sequence: NotRequired[int | None]
    """The event that put the entity there, when known."""


class StatusView(TypedDict):
    value: str
    sequence: NotRequired[int | None]


class ItemView(TypedDict):
    name: str
    sequence: NotRequired[int | None]


class RelationshipView(TypedDict):
    other: str
    """The other entity's name."""
    types: list[str]
    """Relationship types, sorted (``["employs", "sworn_ally"]``)."""
    valence: dict[str, float]
    """Feeling per dimension (``{"trust": 0.4}``); rendered sorted by dimension."""
    sequence: NotRequired[int | None]


class StateView(TypedDict):
    name: str
    kind: str
    aliases: NotRequired[list[str]]
    """Other names of the entity (v3 renders them)."""
    location: LocationView | None
    status: str | StatusView | None
    holder: NotRequired[StatusView | None]
    """Who or what holds the entity (an item), with the sequence that set it."""
    carried_by: NotRequired[list[str]]
    """Who carries the holder, and so on up (v3 renders them: "itself held by Mara")."""
    present: NotRequired[list[str] | None]
    """For a place, when the question asks who is there: their names."""
    lying_here: NotRequired[list[str] | None]
    """For a place, when the question asks what is there: the things left there (v4 renders them)."""
    inventory: list[str | ItemView]
    components: dict[str, Any]
    """Other components worth showing (``{"Description": {"text": ...}}``), kept small."""
    relationships: list[RelationshipView]


class EventView(TypedDict):
    sequence: int
    occurred_at: str | None
    """ISO 8601 as stored; rendered verbatim."""
    summary: str
    superseded: bool
    """Some fact this event established no longer holds."""
    superseded_note: str | None
    """``"earlier: Bram at the Lantern Inn; now: Bram at the Lantern Cellar (dead)"``."""


class RenderContext(TypedDict):
    query: str
    as_of: NotRequired[int | None]
    """The sequence the bundle was asked as of; None (or absent) for the current state."""
    mode: Literal["full", "chronicle_only"]
    degraded_reason: str | None
    source: Literal["ecs", "chronicle replay"]
    pov: str | None
    """Point-of-view character name for ``roleplay``; other templates ignore it."""
    focus: list[FocusView]
    state: list[StateView]
    history: list[EventView]
    """Relevant events, chronological."""
    recent: list[EventView]
    """The latest events, chronological."""


# --------------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------------


def _oneline(value: object) -> str:
    """Collapse all whitespace to single spaces.

    Every free-text field goes through this in the templates: a summary containing newlines could
    otherwise break the one-line-per-fact layout or forge a section header ("\\n## Current
    state") that the model would take as authoritative.
    """
    return " ".join(str(value).split())


def _clip(text: str, limit: int = _MAX_VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _value(value: object) -> str:
    """A component value as short text: plain strings as is, ``{"text": ...}`` as its text,
    anything else as compact JSON with sorted keys (deterministic)."""
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    if isinstance(value, Mapping) and set(value) == {"text"}:
        value = value["text"]
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | int | float | list | tuple | Mapping):
        try:
            text = msgspec.json.encode(value, order="sorted").decode()
        except (TypeError, ValueError):  # NaN-free JSON is not guaranteed for client data
            text = str(value)
    else:
        text = str(value)
    return _clip(_oneline(text))


def _signed(value: object) -> str:
    try:
        return f"{float(str(value)):+.2f}"
    except ValueError:
        return _oneline(value)


def _name_of(value: object) -> str:
    """A fact that is either a plain name/value or a mapping with ``name`` or ``value``."""
    if isinstance(value, Mapping):
        for key in ("name", "value"):
            if key in value:
                return _oneline(value[key])
    return _oneline(value)


def _sequence_of(value: object) -> int | None:
    if isinstance(value, Mapping):
        seq = value.get("sequence")
        return seq if isinstance(seq, int) else None
    return None


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


class UnknownTemplate(KeyError):
    """No template has the requested name; the message lists the available ones."""

    def __str__(self) -> str:
        # KeyError's own __str__ quotes its argument like a repr, which garbles the message.
        return str(self.args[0]) if self.args else ""


class TemplateRegistry:
    """The templates in one directory.

    The directory is scanned once, at construction; templates are compiled on first use and
    cached by Jinja. Instances are safe to share between threads (Jinja environments are).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = (directory if directory is not None else DEFAULT_PROMPTS_DIR).resolve()
        versions: dict[str, dict[int, str]] = {}
        if self.directory.is_dir():
            for path in sorted(self.directory.iterdir()):
                match = _TEMPLATE_FILE.match(path.name)
                if match is not None and path.is_file():
                    versions.setdefault(match["base"], {})[int(match["version"])] = path.name
        # name -> file, for both "default" (highest version) and "default.v1".
        self._files: dict[str, str] = {}
        for base, by_version in versions.items():
            for version, filename in by_version.items():
                self._files[f"{base}.v{version}"] = filename
            self._files[base] = by_version[max(by_version)]
        self._latest = {base: f"{base}.v{max(v)}" for base, v in versions.items()}
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.directory),
            # Prompts are plain text for a model, never HTML: escaping would turn "Bram's" into
            # "Bram&#39;s" in what the model reads.
            autoescape=False,  # noqa: S701
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self._env.filters.update(oneline=_oneline, value=_value, signed=_signed, name_of=_name_of, clip=_clip)
        self._env.globals.update(sequence_of=_sequence_of)

    def available(self) -> list[str]:
        """Template names without version (``["compact", "default", "roleplay"]``), sorted."""
        return sorted(self._latest)

    def versions(self) -> list[str]:
        """Every versioned name (``["compact.v1", "default.v1", ...]``), sorted."""
        return sorted(name for name in self._files if name not in self._latest)

    def resolve(self, name: str) -> str:
        """The versioned name ``name`` renders (``"default"`` -> ``"default.v1"``).

        Raises:
            UnknownTemplate: No such template or version.
        """
        key = name.strip().lower()
        if key.endswith(".j2"):
            key = key[: -len(".j2")]
        if key in self._latest:
            return self._latest[key]
        if key in self._files:
            return key
        raise UnknownTemplate(
            f"unknown template {name!r}; available: {', '.join(self.available()) or 'none'}"
            f" (versions: {', '.join(self.versions()) or 'none'})"
        )

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        """Render template ``name`` (bare or versioned) with ``context`` (see :class:`RenderContext`).

        Raises:
            UnknownTemplate: No such template.
            jinja2.UndefinedError: The context lacks a variable the template uses.
            jinja2.TemplateError: The template itself is broken.
        """
        template = self._env.get_template(self._files[self.resolve(name)])
        return _normalise(template.render(dict(context)))


def _normalise(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    body = _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip("\n")
    return body + "\n" if body else ""
