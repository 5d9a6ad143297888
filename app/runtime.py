"""Resolve where the servers are: configured URLs, or the embedded servers under the data dir."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import msgspec

from app.settings import Settings, to_asyncpg_url

__all__ = ["Endpoints", "open_endpoints"]

log = logging.getLogger("lore.runtime")


class Endpoints(msgspec.Struct, frozen=True):
    database_url: str
    ecs_database_url: str
    redis_url: str
    embedded_postgres: bool
    embedded_valkey: bool


@contextlib.contextmanager
def open_endpoints(settings: Settings, *, need_redis: bool = True) -> Iterator[Endpoints]:
    """Start (or join) the embedded servers the settings leave unconfigured; release them on exit."""
    # Imported here: importing embedded-postgres probes the runtime directory, which is start-up work.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from app.embedded import EmbeddedPostgres, EmbeddedValkey

    with contextlib.ExitStack() as stack:
        database_url = settings.database_url
        if database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            postgres = EmbeddedPostgres(settings.data_dir)
            database_url = to_asyncpg_url(postgres.acquire())
            stack.callback(postgres.release)
            log.info("embedded PostgreSQL ready at %s", postgres.socket_dir)
        redis_url = settings.redis_url
        if redis_url is None and need_redis:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            valkey = EmbeddedValkey(settings.data_dir)
            redis_url = valkey.acquire()
            stack.callback(valkey.release)
            log.info("embedded Valkey ready at %s", redis_url)
        yield Endpoints(
            database_url=database_url,
            ecs_database_url=settings.ecs_database_url or database_url,
            redis_url=redis_url or "",
            embedded_postgres=settings.database_url is None,
            embedded_valkey=settings.redis_url is None and need_redis,
        )
