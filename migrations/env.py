"""Alembic environment: runs migrations on an async engine (asyncpg), online only.

The URL comes from the caller (`lore migrate` passes a connection in `config.attributes`), or from
`-x url=...` / `sqlalchemy.url` when alembic is run by hand.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config


def run_with_connection(connection: Connection) -> None:
    context.configure(connection=connection, transaction_per_migration=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run_with_connection)
        await connection.commit()
    await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with_connection(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("alembic: pass -x url=postgresql+asyncpg://... or use `lore migrate`")
    asyncio.run(run_async(url))


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `lore migrate`")
run_migrations_online()
