"""The long-lived resources of a process, opened in order and closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import KeyCache
from app.database import CHRONICLE_BRANCH, ECS_BRANCH, create_engine, migrate
from app.flags import FeatureFlags
from app.ratelimit import RateLimiter
from app.runtime import Endpoints
from app.settings import Settings
from ecs.breaker import BreakerConfig, CircuitBreaker
from ecs.cache import EntityCache
from ecs.guard import StalenessPolicy, is_ecs_failure
from ecs.projector import Projector
from ecs.relay import OutboxRelay
from ecs.repository import read_checkpoint
from ecs.state_source import KnownNamesCache, StateViewCache
from rag.embedding import CoalescingQueries, Embedder, LocalMiniLMEmbedder, create_embedder
from rag.store import claim_embedding_space
from rag.templates import TemplateRegistry
from rag.tokens import get_counter

__all__ = ["Services", "build_embedder", "build_query_embedder", "open_services"]

log = logging.getLogger("lore.services")


class Services:
    def __init__(
        self,
        settings: Settings,
        endpoints: Endpoints,
        engine: AsyncEngine,
        ecs_engine: AsyncEngine,
        embedder: Embedder,
        query_embedder: Embedder | None = None,
    ) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.engine = engine
        self.ecs_engine = ecs_engine
        self.embedder = embedder
        self.query_embedder = query_embedder if query_embedder is not None else embedder
        self.key_cache = KeyCache()
        self.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        self.templates = TemplateRegistry()
        self.replay_names = KnownNamesCache()
        self.ecs_names = KnownNamesCache()
        self.ecs_states = StateViewCache()
        self.fallbacks_served: dict[str, int] = {}
        self.contexts_in_flight = 0
        """Context requests being built right now (they search with more connections when alone)."""
        self.breaker = CircuitBreaker(
            "ecs",
            BreakerConfig(
                timeout_seconds=settings.ecs_timeout_ms / 1000,
                window_size=settings.breaker_window,
                minimum_calls=settings.breaker_minimum_calls,
                failure_rate_threshold=settings.breaker_failure_rate,
                open_wait_seconds=settings.breaker_open_ms / 1000,
                max_open_wait_seconds=settings.breaker_max_open_ms / 1000,
                half_open_probes=settings.breaker_probes,
            ),
        )
        self.staleness = StalenessPolicy(
            max_lag_events=settings.max_lag_events,
            max_lag_seconds=settings.max_lag_seconds,
            on_stale="warn" if settings.stale_policy == "warn" else "degrade",
        )
        self.token_counter = get_counter()
        # One thread: the model already uses two intra-op threads, and more would only contend.
        self._embed_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        # Questions of context requests are embedded on a thread of their own, so that one never
        # waits behind an ingest batch (see `build_query_embedder` for the model it uses).
        self._query_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-query")
        self.query_runs = CoalescingQueries(self.query_embedder.embed, self._query_pool)
        self.redis = (
            Redis.from_url(endpoints.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            if (endpoints.redis_url)
            else None
        )
        self.relay = OutboxRelay(ecs_engine, self.redis) if self.redis is not None else None
        self.flags = FeatureFlags(self.redis, {"ecs_enrichment": settings.ecs_enrichment})
        self.cache = EntityCache.from_url(endpoints.redis_url, ecs_engine)
        self._catch_ups: dict[uuid.UUID, asyncio.Task[int]] = {}
        self.projector = Projector(
            engine,
            ecs_engine,
            batch_size=settings.projector_batch_size,
            max_attempts=settings.projector_max_attempts,
            coalesce_seconds=settings.projector_coalesce_ms / 1000,
            listen_url=endpoints.database_url.replace("postgresql+asyncpg://", "postgresql://", 1),
            on_committed=self._after_projection,
        )

    async def ensure_projected(self, chronicle_id: uuid.UUID, chronicle_sequence: int) -> None:
        """Read-your-writes for ECS reads: catch the projection up to `chronicle_sequence` if it is
        a little behind. Best effort: an unhealthy ECS is left to the reads that follow (which go
        through the breaker and fall back), and a lag over the staleness bound is left to the
        background projector."""

        async def read_position() -> tuple[int, bool]:
            async with self.ecs_engine.connect() as conn:
                checkpoint = await read_checkpoint(conn, chronicle_id)
            if checkpoint is None:
                return 0, False
            # Parked, or failing and in backoff: left to the background projector.
            return checkpoint.last_sequence, checkpoint.parked_at is not None or checkpoint.attempts > 0

        try:
            position, stuck = await self.breaker.call(read_position)
        except Exception as error:
            if is_ecs_failure(error):
                return
            raise
        if not stuck and 0 < chronicle_sequence - position <= self.staleness.max_lag_events:
            await self.catch_up(chronicle_id)

    async def catch_up(self, chronicle_id: uuid.UUID) -> None:
        """Project this chronicle's pending events now, waiting at most the ECS timeout.

        Requests for the same chronicle share one catch-up; it is never cancelled when a request
        stops waiting (a projection cut off mid-transaction would only be redone), and its failure
        surfaces as the lag the caller still sees afterwards.
        """
        task = self._catch_ups.get(chronicle_id)
        if task is None:
            task = asyncio.create_task(self.projector.catch_up(chronicle_id), name=f"catch-up {chronicle_id}")
            self._catch_ups[chronicle_id] = task
            task.add_done_callback(lambda done: self._catch_up_done(chronicle_id, done))
        await asyncio.wait({task}, timeout=self.settings.ecs_timeout_ms / 1000)

    def _catch_up_done(self, chronicle_id: uuid.UUID, task: asyncio.Task[int]) -> None:
        if self._catch_ups.get(chronicle_id) is task:
            del self._catch_ups[chronicle_id]
        if not task.cancelled() and task.exception() is not None:
            log.info("catch-up of chronicle %s failed: %s", chronicle_id, task.exception())

    async def _after_projection(self, chronicle_id: uuid.UUID, touched: set[str]) -> None:
        await self.cache.on_committed(chronicle_id, touched)
        if self.relay is not None:
            self.relay.notify()

    def count_fallback(self, reason: str) -> None:
        """Count a chronicle-only answer served instead of a full one, by the kind of reason."""
        kind = reason.split(":")[0].split("(")[0].strip()
        self.fallbacks_served[kind] = self.fallbacks_served.get(kind, 0) + 1

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Embed off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._embed_pool, self.embedder.embed, texts)

    async def embed_query(self, texts: list[str]) -> list[list[float]]:
        """Embed a context request's question off the event loop, with the query embedder;
        questions of concurrent requests share model runs."""
        return await self.query_runs(texts)

    async def aclose(self) -> None:
        for task in list(self._catch_ups.values()):
            task.cancel()
        await asyncio.gather(*self._catch_ups.values(), return_exceptions=True)
        self._embed_pool.shutdown(wait=False, cancel_futures=True)
        self._query_pool.shutdown(wait=False, cancel_futures=True)
        await self.cache.aclose()
        if self.redis is not None:
            await self.redis.aclose()


def build_embedder(settings: Settings) -> Embedder:
    return create_embedder(
        settings.embedding_provider,
        url=settings.embedding_url,
        model=settings.embedding_model,
        api_key=settings.embedding_api_key,
        dimension=settings.embedding_dimension,
    )


def build_query_embedder(embedder: Embedder) -> Embedder | None:
    """A second instance of the local model for single questions, on one onnxruntime thread.

    With two intra-op threads, onnxruntime's idle worker spin-waits for new work after every run:
    one short question (5 ms of compute) then cost ~35 ms of CPU, a whole core busy doing nothing
    while the request went on to PostgreSQL on the same two cores. One thread gives bit-identical
    vectors with no spinning, and a single question gains nothing from a second thread anyway.
    Batches (ingest) keep the shared embedder and its two threads. None for other providers: a
    remote service has no such cost, and its client is shared as is.
    """
    if not isinstance(embedder, LocalMiniLMEmbedder):
        return None
    return LocalMiniLMEmbedder(intra_op_threads=1, inter_op_threads=1)


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    endpoints: Endpoints,
    *,
    run_migrations: bool = True,
    embedder: Embedder | None = None,
    run_background: bool = False,
) -> AsyncIterator[Services]:
    """Open engines and the embedder; with `run_background`, also run the projector."""
    own_embedder = embedder is None
    query_embedder: Embedder | None = None
    if embedder is None:
        embedder = await asyncio.to_thread(build_embedder, settings)
        # Only with our own model: a caller that passes an embedder (tests) has it used for both.
        query_embedder = await asyncio.to_thread(build_query_embedder, embedder)
    engine = create_engine(
        endpoints.database_url, timeout_ms=settings.db_timeout_ms, pool_size=settings.db_pool_size
    )
    separate_ecs = endpoints.ecs_database_url != endpoints.database_url
    ecs_engine = (
        create_engine(
            endpoints.ecs_database_url, timeout_ms=settings.db_timeout_ms, pool_size=settings.db_pool_size
        )
        if separate_ecs
        else engine
    )
    services = Services(settings, endpoints, engine, ecs_engine, embedder, query_embedder)
    stop = asyncio.Event()
    background: list[asyncio.Task[None]] = []
    try:
        if run_migrations:
            await migrate(engine, embedder.dimension, branch=CHRONICLE_BRANCH)
            await migrate(ecs_engine, embedder.dimension, branch=ECS_BRANCH)
        async with engine.begin() as conn:
            await claim_embedding_space(conn, embedder.model_id, embedder.dimension)
        if run_background and settings.run_projector:
            background.append(asyncio.create_task(services.projector.run(stop), name="projector"))
            if services.relay is not None:
                background.append(asyncio.create_task(services.relay.run(stop), name="relay"))
        yield services
    finally:
        stop.set()
        for task in background:
            try:
                await asyncio.wait_for(task, 10)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        await services.aclose()
        if separate_ecs:
            await ecs_engine.dispose()
        await engine.dispose()
        if own_embedder:
            embedder.close()
            if query_embedder is not None:
                query_embedder.close()
