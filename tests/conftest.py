"""Shared fixtures: one embedded PostgreSQL and one Valkey per test session, real, in a temp dir.

Set TEST_DATABASE_URL / TEST_REDIS_URL to run against external servers instead (the PostgreSQL
one needs pgvector).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from app.auth import create_tenant
from app.database import create_engine, migrate
from app.main import create_app
from app.runtime import Endpoints
from app.settings import Settings, to_asyncpg_url
from rag.embedding import LocalMiniLMEmbedder

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from app.embedded import EmbeddedPostgres, EmbeddedValkey


@pytest.fixture(scope="session")
def embedded_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="lore-test-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def embedded_postgres(embedded_root: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(embedded_root)
    server.acquire()
    yield server
    server.release()


@pytest.fixture(scope="session")
def database_url(embedded_postgres: EmbeddedPostgres) -> str:
    external = os.environ.get("TEST_DATABASE_URL")
    return to_asyncpg_url(external) if external else to_asyncpg_url(embedded_postgres.url())


@pytest.fixture(scope="session")
def redis_url(embedded_root: Path) -> Iterator[str]:
    external = os.environ.get("TEST_REDIS_URL")
    if external:
        yield external
        return
    server = EmbeddedValkey(embedded_root)
    url = server.acquire()
    yield url
    server.release()


@pytest.fixture(scope="session")
def embedder() -> Iterator[LocalMiniLMEmbedder]:
    model = LocalMiniLMEmbedder()
    yield model
    model.close()


@pytest.fixture(scope="session")
def settings(embedded_root: Path, database_url: str, redis_url: str) -> Settings:
    # The shared app does not run the projector: tests project explicitly, so their counts are exact.
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=embedded_root,
        db_timeout_ms=5_000,
        run_projector=False,
        # A loaded CI machine must not trip the ECS breaker in tests that are not about it.
        ecs_timeout_ms=10_000,
    )


@pytest.fixture(scope="session")
def endpoints(database_url: str, redis_url: str) -> Endpoints:
    return Endpoints(
        database_url=database_url,
        ecs_database_url=database_url,
        redis_url=redis_url,
        embedded_postgres=False,
        embedded_valkey=False,
    )


@pytest.fixture(scope="session")
async def engine(database_url: str, embedder: LocalMiniLMEmbedder) -> AsyncIterator[object]:
    engine = create_engine(database_url, timeout_ms=5_000, pool_size=20)
    await migrate(engine, embedder.dimension, branch="chronicle")
    await migrate(engine, embedder.dimension, branch="ecs")
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def client(
    settings: Settings, endpoints: Endpoints, embedder: LocalMiniLMEmbedder, engine: object
) -> AsyncIterator[AsyncTestClient]:
    app = create_app(settings, endpoints, embedder=embedder)
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as test_client:
        yield test_client


class Tenant:
    def __init__(self, tenant_id: uuid.UUID, key: str) -> None:
        self.id = tenant_id
        self.key = key
        self.headers = {"Authorization": f"Bearer {key}"}


async def make_tenant(engine: object) -> Tenant:
    async with engine.begin() as conn:  # type: ignore[attr-defined]
        tenant_id, key = await create_tenant(conn, f"tenant-{uuid.uuid4().hex[:12]}")
    return Tenant(tenant_id, key)


@pytest.fixture
async def tenant(engine: object) -> Tenant:
    return await make_tenant(engine)


@pytest.fixture
async def other_tenant(engine: object) -> Tenant:
    return await make_tenant(engine)
