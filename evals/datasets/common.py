"""Helpers shared by the dataset adapters: where the public data lives, and events as JSON.

The public datasets are not part of the repository (licences; see ``../shared/datasets/README.md``).
Adapters take the folder as a parameter; :data:`DEFAULT_DATA_DIR` is ``../shared/datasets``
resolved against the repository root, and :func:`require_dir` / :func:`require_file` turn a missing
folder or file into a :class:`DatasetNotFoundError` that says what was looked for and where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import msgspec

from rag.events import EventBatchIn, EventIn

__all__ = [
    "DEFAULT_DATA_DIR",
    "REPO_ROOT",
    "DatasetNotFoundError",
    "event_json",
    "require_dir",
    "require_file",
    "resolve_data_dir",
    "validate_events",
]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR: Final = (REPO_ROOT / ".." / "shared" / "datasets").resolve()


class DatasetNotFoundError(FileNotFoundError):
    """The data folder or file an adapter needs is not there."""


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``data_dir`` as an absolute path (relative paths are taken from the repository root), or
    :data:`DEFAULT_DATA_DIR` when ``None``."""
    if data_dir is None:
        return DEFAULT_DATA_DIR
    path = Path(data_dir).expanduser()
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"{what}: folder {path} not found. The public datasets are not shipped with the "
            f"repository; they are expected in ../shared/datasets next to it (see its README.md), "
            f"or pass another data_dir."
        )
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetNotFoundError(f"{what}: file {path} not found")
    return path


def _compact(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if v is not None and v != [] and v != {}}


def event_json(event: EventIn) -> dict[str, Any]:
    """An event as the HTTP API takes it: JSON builtins, without the optional fields left at
    ``None`` or empty (top level and inside effects), so the payloads stay small and readable."""
    out = _compact(msgspec.to_builtins(event))
    if "effects" in out:
        out["effects"] = [_compact(e) for e in out["effects"]]
    return out


def validate_events(events: list[dict[str, Any]], batch_size: int = 1000) -> list[EventIn]:
    """Decode ``events`` the way the API does (``EventBatchIn`` per batch); raises
    ``msgspec.ValidationError`` on the first invalid one."""
    out: list[EventIn] = []
    for start in range(0, len(events), batch_size):
        raw = msgspec.json.encode({"events": events[start : start + batch_size]})
        out.extend(msgspec.json.decode(raw, type=EventBatchIn).events)
    return out
