"""Opaque cursors: base64url JSON, validated on the way back in."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from app.errors import bad_parameter

__all__ = ["MAX_SEQUENCE", "decode_cursor", "encode_cursor"]

MAX_SEQUENCE = 2**63 - 1
"""Sequences are PostgreSQL bigints: a larger number in a parameter or cursor is refused as that
parameter's error, not left to fail in the driver."""


def encode_cursor(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode().rstrip("=")


def decode_cursor(cursor: str, schema: type[Any]) -> Any:
    """Decode a cursor into `schema`; anything that is not one we issued is a 400 naming `cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=schema)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise bad_parameter("cursor", "is not a cursor returned by this API") from None
