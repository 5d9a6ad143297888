"""Structured JSON logs. Tenant ids are hashed, API keys and event text are never logged."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sys
import uuid
from typing import Any

__all__ = ["JsonFormatter", "access_log", "configure_logging", "hash_tenant"]

access_log = logging.getLogger("lore.access")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def hash_tenant(tenant_id: uuid.UUID | str) -> str:
    """A stable, non-reversible tag for a tenant: lets logs be correlated without naming it."""
    return hashlib.sha256(f"lore-tenant:{tenant_id}".encode()).hexdigest()[:16]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if "tenant_id" in entry:  # never raw: callers should pass tenant= already hashed
            entry["tenant"] = hash_tenant(str(entry.pop("tenant_id")))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; quiet it (URLs can carry ids a tenant would not share).
    logging.getLogger("httpx").setLevel(logging.WARNING)
