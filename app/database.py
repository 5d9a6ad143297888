"""Database engines, migrations and the translation of driver errors into what they mean."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from rag.outages import is_unavailable_error

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


def _encode_json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def create_engine(url: str, *, timeout_ms: int, pool_size: int) -> AsyncEngine:
    return create_async_engine(
        url,
        # JSONB columns (effects, components, outbox payloads) are written and read on every
        # event; msgspec is several times faster than the standard json module SQLAlchemy uses.
        json_serializer=_encode_json,
        json_deserializer=msgspec.json.decode,
        # Kept connections, sized for the busiest steady load: a context request holds two or
        # three at once, and an overflow connection is closed on return, so eight clients on a
        # pool of 10 opened and closed PostgreSQL backends all the time (fork, catalog caches,
        # every statement prepared again): 37 requests/s against 44 with 20 at 100,000 events.
        pool_size=pool_size,
        max_overflow=max(1, pool_size // 2),
        # No pre-ping: SQLAlchemy's asyncpg ping is BEGIN + ";" + ROLLBACK, three round trips on
        # every checkout, and a request checks out several times. A connection found dead during
        # a query invalidates the whole pool instead (the request gets a 503 and the next one
        # reconnects), and recycling bounds the age of idle connections.
        pool_recycle=1800,
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


@contextlib.asynccontextmanager
async def translate_database_errors() -> AsyncIterator[None]:
    try:
        yield
    except (
        sa_exc.SQLAlchemyError,
        OSError,
        TimeoutError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
    ) as error:
        if is_unavailable_error(error):
            raise DatabaseUnavailable(
                str(error).splitlines()[0] if str(error) else type(error).__name__
            ) from error
        raise


def alembic_config(embedding_dimension: int) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["embedding_dimension"] = embedding_dimension
    return config


CHRONICLE_BRANCH = "chronicle"
ECS_BRANCH = "ecs"
"""The ECS tables are a branch of their own so that they can live in another database."""


def head_revision(branch: str = CHRONICLE_BRANCH) -> str | None:
    script = ScriptDirectory.from_config(alembic_config(0))
    return script.get_revision(f"{branch}@head").revision  # type: ignore[union-attr]


async def current_revision(conn: AsyncConnection, branch: str = CHRONICLE_BRANCH) -> str | None:
    """The revision of `branch` applied to this database, or None."""

    def read(sync_conn: object) -> str | None:
        heads = MigrationContext.configure(sync_conn).get_current_heads()  # type: ignore[arg-type]
        script = ScriptDirectory.from_config(alembic_config(0))
        for head in heads:
            revision = script.get_revision(head)
            if revision is not None and branch in revision.branch_labels | _labels_below(script, head):
                return head
        return None

    return await conn.run_sync(read)


def _labels_below(script: ScriptDirectory, head: str) -> set[str]:
    labels: set[str] = set()
    for revision in script.iterate_revisions(head, "base"):
        labels |= set(revision.branch_labels)
    return labels


async def migrate(
    engine: AsyncEngine, embedding_dimension: int, target: str = "head", branch: str = CHRONICLE_BRANCH
) -> None:
    """Upgrade `branch` to head (or downgrade it to `base` or a revision) on this engine's database."""
    config = alembic_config(embedding_dimension)

    def run(sync_conn: object) -> None:
        config.attributes["connection"] = sync_conn
        script = ScriptDirectory.from_config(config)
        heads = MigrationContext.configure(sync_conn).get_current_heads()  # type: ignore[arg-type]
        current = next((h for h in heads if branch in _labels_below(script, h)), None)
        if target == "base":
            if current is not None:
                command.downgrade(config, f"{branch}@base")
        elif target == "head":
            command.upgrade(config, f"{branch}@head")
        elif _is_below(script, target, current):
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
