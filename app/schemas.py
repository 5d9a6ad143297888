"""Request and response bodies of the HTTP API (msgspec structs; OpenAPI is generated from them)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec

__all__ = [
    "ChronicleCreate",
    "ChronicleOut",
    "ChroniclePage",
    "EventOut",
    "EventPage",
    "IngestResponse",
    "IngestResultOut",
]


class ChronicleCreate(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    description: Annotated[str, msgspec.Meta(max_length=10_000)] | None = None
    metadata: dict[str, Any] = {}


class ChronicleOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    title: str
    description: str | None
    metadata: dict[str, Any]
    embedding_model: str
    event_count: int
    last_sequence: int
    created_at: dt.datetime
    updated_at: dt.datetime


class ChroniclePage(msgspec.Struct, frozen=True):
    items: list[ChronicleOut]
    next_cursor: str | None


class IngestResultOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    sequence: int
    external_id: str | None
    duplicate: bool
    content_differs: bool = False
    """A duplicate that says something else than the stored original (which is kept)."""


class IngestResponse(msgspec.Struct, frozen=True):
    events: list[IngestResultOut]


class ActorOut(msgspec.Struct, frozen=True):
    name: str
    role: str | None = None


class EventOut(msgspec.Struct, frozen=True):
    id: uuid.UUID
    chronicle_id: uuid.UUID
    sequence: int
    external_id: str | None
    kind: str
    summary: str
    actors: list[ActorOut]
    location: str | None
    effects: list[dict[str, Any]]
    occurred_at: dt.datetime | None
    recorded_at: dt.datetime
    tags: list[str]
    importance: float


class EventPage(msgspec.Struct, frozen=True):
    items: list[EventOut]
    next_cursor: str | None
