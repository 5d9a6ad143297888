"""The long-lived resources of a process, opened in order and closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import KeyCache
from app.database import create_engine, migrate
from app.runtime import Endpoints
from app.settings import Settings
from rag.embedding import Embedder, create_embedder
from rag.store import claim_embedding_space

__all__ = ["Services", "open_services"]

log = logging.getLogger("lore.services")


class Services:
    def __init__(self, settings: Settings, endpoints: Endpoints, engine: AsyncEngine, embedder: Embedder) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.engine = engine
        self.embedder = embedder
        self.key_cache = KeyCache()
        # One thread: the model already uses two intra-op threads, and more would only contend.
        self._embed_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Embed off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._embed_pool, self.embedder.embed, texts)

    def close(self) -> None:
        self._embed_pool.shutdown(wait=False, cancel_futures=True)


def build_embedder(settings: Settings) -> Embedder:
    return create_embedder(
        settings.embedding_provider,
        url=settings.embedding_url,
        model=settings.embedding_model,
        api_key=settings.embedding_api_key,
        dimension=settings.embedding_dimension,
    )


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, endpoints: Endpoints, *, run_migrations: bool = True, embedder: Embedder | None = None
) -> AsyncIterator[Services]:
    own_embedder = embedder is None
    embedder = embedder or await asyncio.to_thread(build_embedder, settings)
    engine = create_engine(endpoints.database_url, timeout_ms=settings.db_timeout_ms, pool_size=settings.db_pool_size)
    services = Services(settings, endpoints, engine, embedder)
    try:
        if run_migrations:
            await migrate(engine, embedder.dimension)
        async with engine.begin() as conn:
            await claim_embedding_space(conn, embedder.model_id, embedder.dimension)
        yield services
    finally:
        services.close()
        await engine.dispose()
        if own_embedder:
            embedder.close()
