"""Database engines, migrations and the translation of driver errors into what they mean."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = [
    "DatabaseUnavailable",
    "alembic_config",
    "create_engine",
    "current_revision",
    "head_revision",
    "is_unavailable_error",
    "migrate",
    "translate_database_errors",
]

log = logging.getLogger("lore.database")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class DatabaseUnavailable(Exception):
    """The database could not be reached or did not answer in time: a 503, never a 409 or 500."""


def create_engine(url: str, *, timeout_ms: int, pool_size: int) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=timeout_ms / 1000,
        connect_args={
            "timeout": timeout_ms / 1000,
            "command_timeout": timeout_ms / 1000 + 1,
            "server_settings": {
                "statement_timeout": str(timeout_ms),
                "lock_timeout": str(timeout_ms),
                "application_name": "lorekeeper",
            },
        },
    )


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
        if isinstance(current, sa_exc.TimeoutError | TimeoutError | asyncio.TimeoutError | ConnectionError | OSError):
            return True
        if isinstance(current, asyncpg.exceptions.ConnectionDoesNotExistError | asyncpg.InterfaceError):
            return True
        sqlstate = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate in _UNAVAILABLE_SQLSTATES:
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


@contextlib.asynccontextmanager
async def translate_database_errors() -> AsyncIterator[None]:
    try:
        yield
    except (sa_exc.SQLAlchemyError, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        if is_unavailable_error(error):
            raise DatabaseUnavailable(str(error).splitlines()[0] if str(error) else type(error).__name__) from error
        raise


def alembic_config(embedding_dimension: int) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["embedding_dimension"] = embedding_dimension
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config(0)).get_current_head()


async def current_revision(conn: AsyncConnection) -> str | None:
    def read(sync_conn: object) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()  # type: ignore[arg-type]

    return await conn.run_sync(read)


async def migrate(engine: AsyncEngine, embedding_dimension: int, target: str = "head") -> None:
    """Upgrade (or, with a target below head, downgrade) the schema on this engine's database."""
    config = alembic_config(embedding_dimension)

    def run(sync_conn: object) -> None:
        config.attributes["connection"] = sync_conn
        current = MigrationContext.configure(sync_conn).get_current_revision()  # type: ignore[arg-type]
        script = ScriptDirectory.from_config(config)
        if target == "base" or (target != "head" and _is_below(script, target, current)):
            command.downgrade(config, target)
        else:
            command.upgrade(config, target)

    async with engine.connect() as conn:
        # One session-level advisory lock so that replicas starting together migrate one at a time.
        await conn.exec_driver_sql("SELECT pg_advisory_lock(7420001)")
        try:
            await conn.run_sync(run)
            await conn.commit()
        finally:
            await conn.exec_driver_sql("SELECT pg_advisory_unlock(7420001)")
            await conn.commit()


def _is_below(script: ScriptDirectory, target: str, current: str | None) -> bool:
    if current is None:
        return False
    return any(rev.revision == target for rev in script.iterate_revisions(current, "base"))
