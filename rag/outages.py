"""Recognising outages: errors that mean "the database is unreachable or too slow, try later".

They must never be mistaken for a client's conflict (409) or a bug (500), and a projector must
wait them out rather than blame (and park) the chronicle it was working on.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy import exc as sa_exc

__all__ = ["is_unavailable_error"]

_UNAVAILABLE_SQLSTATES = {
    "57014",  # query_canceled: statement_timeout fired
    "55P03",  # lock_not_available: lock_timeout fired
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now: starting up or shutting down
    "53300",  # too_many_connections
    "08000",
    "08001",
    "08003",
    "08004",
    "08006",
}


def is_unavailable_error(error: BaseException) -> bool:
    """True for errors that mean 'try again later': connection loss, timeouts, shutdown."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa_exc.TimeoutError | TimeoutError | ConnectionError | OSError):
            return True
        if isinstance(current, asyncpg.exceptions.ConnectionDoesNotExistError | asyncpg.InterfaceError):
            return True
        sqlstate = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate in _UNAVAILABLE_SQLSTATES:
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False
