"""Outages of real dependencies: the chronicle database stopped or frozen, the embedder failing.

The database here is a second embedded PostgreSQL that the tests stop, freeze and restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from litestar.testing import AsyncTestClient

from app.auth import create_tenant
from app.database import create_engine, migrate
from app.embedded import EmbeddedPostgres
from app.main import create_app
from app.runtime import Endpoints
from app.settings import Settings, to_asyncpg_url
from rag.embedding import EmbeddingUnavailable

pytestmark = pytest.mark.timeout(180)
TIMEOUT_MS = 1_000


@pytest.fixture
def second_postgres():
    root = Path(tempfile.mkdtemp(prefix="lore-out-"))
    server = EmbeddedPostgres(root)
    server.acquire()
    yield server
    pid = server.pid()
    if pid is not None:
        os.kill(pid, signal.SIGCONT) if _exists(pid) else None
    server.release()
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@pytest.fixture
async def outage_app(second_postgres, embedder, redis_url):
    url = to_asyncpg_url(second_postgres.url())
    engine = create_engine(url, timeout_ms=10_000, pool_size=1)
    await migrate(engine, embedder.dimension)
    async with engine.begin() as conn:
        _, key = await create_tenant(conn, "outage")
    await engine.dispose()
    settings = Settings(database_url=url, redis_url=redis_url, db_timeout_ms=TIMEOUT_MS)
    endpoints = Endpoints(url, url, redis_url, False, False)
    app = create_app(settings, endpoints, embedder=embedder)
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        headers = {"Authorization": f"Bearer {key}"}
        chronicle = (await client.post("/api/chronicles", json={"title": "outage"}, headers=headers)).json()[
            "id"
        ]
        yield client, headers, chronicle


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "Traceback" not in response.text


async def test_database_stopped_gives_503_then_recovers(outage_app, second_postgres) -> None:
    client, headers, chronicle = outage_app
    events_url = f"/api/chronicles/{chronicle}/events"
    assert (
        await client.post(events_url, json={"events": [{"summary": "before"}]}, headers=headers)
    ).status_code == 200

    second_postgres.stop()
    assert_unavailable(
        await client.post(events_url, json={"events": [{"summary": "during"}]}, headers=headers)
    )
    assert_unavailable(await client.get(events_url, headers=headers))
    assert_unavailable(await client.get(f"/api/chronicles/{chronicle}", headers=headers))
    assert (await client.get("/health")).status_code == 200
    ready = await client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "unavailable"

    second_postgres.start()
    recovered = None
    for _ in range(50):
        recovered = await client.post(events_url, json={"events": [{"summary": "after"}]}, headers=headers)
        if recovered.status_code == 200:
            break
        time.sleep(0.1)
    assert recovered is not None and recovered.status_code == 200, recovered.text
    summaries = [e["summary"] for e in (await client.get(events_url, headers=headers)).json()["items"]]
    assert summaries == ["before", "after"]
    assert (await client.get("/ready")).status_code == 200


async def test_frozen_database_times_out_as_503(outage_app, second_postgres) -> None:
    client, headers, chronicle = outage_app
    events_url = f"/api/chronicles/{chronicle}/events"
    pid = second_postgres.pid()
    assert pid is not None
    postmaster = psutil.Process(pid)
    frozen = [postmaster, *postmaster.children(recursive=True)]  # backends too: the whole server hangs
    for process in frozen:
        process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = await client.get(events_url, headers=headers)
        elapsed = time.monotonic() - started
    finally:
        for process in frozen:
            process.send_signal(signal.SIGCONT)
    assert_unavailable(response)
    # Bounded by the configured timeout (plus connection setup), never an indefinite hang.
    assert elapsed < 3 * TIMEOUT_MS / 1000 + 2, elapsed


class UnavailableEmbedder:
    """An embedding service that is down (the local model itself cannot fail this way)."""

    def __init__(self, model_id: str, dimension: int) -> None:
        self.model_id = model_id
        self.dimension = dimension

    def embed(self, texts):
        raise EmbeddingUnavailable("connection refused by the embedding service")

    def close(self) -> None:
        pass


async def test_embedder_failure_rejects_batch_with_503_and_stores_nothing(
    settings, endpoints, embedder, engine, tenant
) -> None:
    app = create_app(settings, endpoints, embedder=UnavailableEmbedder(embedder.model_id, embedder.dimension))
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        chronicle = (
            await client.post("/api/chronicles", json={"title": "x"}, headers=tenant.headers)
        ).json()["id"]
        response = await client.post(
            f"/api/chronicles/{chronicle}/events",
            json={"events": [{"summary": "a"}, {"summary": "b"}]},
            headers=tenant.headers,
        )
        assert_unavailable(response)
        assert "nothing was stored" in response.json()["detail"]
        stored = (await client.get(f"/api/chronicles/{chronicle}", headers=tenant.headers)).json()
        assert stored["event_count"] == 0


async def test_a_single_event_reposted_while_the_embedder_is_down_is_still_a_duplicate(
    client, settings, endpoints, embedder, tenant
) -> None:
    """Small batches are embedded before their external ids are looked up; a re-post must not
    turn into a 503 because of that while the embedder is down, and a new event still must."""
    chronicle = (await client.post("/api/chronicles", json={"title": "x"}, headers=tenant.headers)).json()[
        "id"
    ]
    event = {"summary": "Aldo bolted the gate.", "external_id": "turn-1"}
    first = await client.post(
        f"/api/chronicles/{chronicle}/events", json={"events": [event]}, headers=tenant.headers
    )
    assert first.status_code == 200
    app = create_app(settings, endpoints, embedder=UnavailableEmbedder(embedder.model_id, embedder.dimension))
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as down:
        again = await down.post(
            f"/api/chronicles/{chronicle}/events", json={"events": [event]}, headers=tenant.headers
        )
        assert again.status_code == 200, again.text
        assert again.json()["events"] == [{**first.json()["events"][0], "duplicate": True}]
        new = {"summary": "Aldo slept.", "external_id": "turn-2"}
        mixed = await down.post(
            f"/api/chronicles/{chronicle}/events", json={"events": [event, new]}, headers=tenant.headers
        )
        assert_unavailable(mixed)
    stored = (await client.get(f"/api/chronicles/{chronicle}", headers=tenant.headers)).json()
    assert stored["event_count"] == 1
