"""The service projects in the background into a separate ECS database; status and admin routes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from app.auth import create_tenant
from app.cli import load_sample_story
from app.database import create_engine
from app.main import create_app
from app.runtime import Endpoints
from app.settings import Settings, to_asyncpg_url
from ecs.schema import ecs_entities

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def separate_ecs(embedded_postgres, database_url, redis_url, embedder, engine):
    ecs_url = to_asyncpg_url(embedded_postgres.create_database("ecs_separate"))
    settings = Settings(database_url=database_url, ecs_database_url=ecs_url, redis_url=redis_url)
    endpoints = Endpoints(database_url, ecs_url, redis_url, False, False)
    async with engine.begin() as conn:
        _, key = await create_tenant(conn, f"ecs-user-{time.time_ns()}")
        _, admin_key = await create_tenant(conn, f"ecs-admin-{time.time_ns()}", admin=True)
    app = create_app(settings, endpoints, embedder=embedder)
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        yield client, {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {admin_key}"}, ecs_url


async def wait_caught_up(client, headers, chronicle: str, sequence: int) -> dict:
    status: dict = {}
    for _ in range(200):
        status = (await client.get(f"/api/chronicles/{chronicle}/ecs", headers=headers)).json()
        if status["checkpoint_sequence"] >= sequence:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"projection did not catch up: {status}")


async def test_background_projection_into_separate_database(separate_ecs, database_url) -> None:
    client, headers, admin, ecs_url = separate_ecs
    chronicle = (await client.post("/api/chronicles", json={"title": "ecs"}, headers=headers)).json()["id"]
    story = [msgspec.to_builtins(e) for e in load_sample_story()]
    for start in range(0, 40, 10):
        response = await client.post(f"/api/chronicles/{chronicle}/events", json={"events": story[start:start + 10]},
                                     headers=headers)  # fmt: skip
        assert response.status_code == 200
    status = await wait_caught_up(client, headers, chronicle, 40)
    assert status == status | {"chronicle_sequence": 40, "lag_events": 0, "lag_seconds": 0.0, "parked": False}

    # The state lives in the ECS database only.
    ecs_engine = create_engine(ecs_url, timeout_ms=5_000, pool_size=1)
    try:
        async with ecs_engine.connect() as conn:
            count = await conn.scalar(select(func.count()).select_from(ecs_entities))
        assert count > 10
    finally:
        await ecs_engine.dispose()

    # Admin routes: a normal key is refused; an admin key verifies and rebuilds.
    forbidden = await client.post(f"/api/admin/chronicles/{chronicle}/ecs/verify", headers=headers)
    assert forbidden.status_code == 403
    verified = (await client.post(f"/api/admin/chronicles/{chronicle}/ecs/verify", headers=admin)).json()
    assert verified["differences"] == [], [(d["stored"], d["expected"]) for d in verified["differences"]]
    assert verified["checkpoint_sequence"] == 40
    assert verified["ok"] is True, verified
    rebuilt = (await client.post(f"/api/admin/chronicles/{chronicle}/ecs/rebuild", headers=admin)).json()
    assert rebuilt["events"] == 40

    # The CLI reaches the same databases and agrees.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORE_")}
    env |= {"DATABASE_URL": database_url, "ECS_DATABASE_URL": ecs_url, "REDIS_URL": "redis://127.0.0.1:1/0"}
    result = subprocess.run([sys.executable, "-m", "app.cli", "ecs", "verify", chronicle], env=env,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{chronicle}: OK" in result.stdout


async def test_ecs_status_is_tenant_scoped(separate_ecs, other_tenant) -> None:
    client, headers, _, _ = separate_ecs
    chronicle = (await client.post("/api/chronicles", json={"title": "mine"}, headers=headers)).json()["id"]
    assert (
        await client.get(f"/api/chronicles/{chronicle}/ecs", headers=other_tenant.headers)
    ).status_code == 404
    fresh = (await client.get(f"/api/chronicles/{chronicle}/ecs", headers=headers)).json()
    assert fresh["checkpoint_sequence"] == 0 and fresh["lag_events"] == 0


async def test_metrics_expose_projection_lag_parked_and_request_latency(separate_ecs) -> None:
    client, headers, _, _ = separate_ecs
    chronicle = (await client.post("/api/chronicles", json={"title": "m"}, headers=headers)).json()["id"]
    await client.post(f"/api/chronicles/{chronicle}/events", json={"events": [{"summary": "x", "actors": ["A"]}]},
                      headers=headers)  # fmt: skip
    await wait_caught_up(client, headers, chronicle, 1)
    for _ in range(2):  # the same question twice at the same checkpoint: A's state is read once
        context = await client.post(f"/api/chronicles/{chronicle}/context", json={"query": "Where is A?"},
                                    headers=headers)  # fmt: skip
        assert context.status_code == 200 and context.json()["mode"] == "full"
    response = await client.get("/metrics")
    assert response.status_code == 200
    body = response.text
    assert "lore_state_views_read_total 1.0" in body and "lore_state_views_reused_total 1.0" in body
    assert "lore_query_embedding_runs_total 2.0" in body and "lore_query_embedding_texts_total 2.0" in body
    assert "lore_projector_events_applied_total" in body
    assert "lore_projection_parked_chronicles" in body
    assert "lore_ecs_reachable 1.0" in body
    assert (
        'lore_request_duration_seconds_count{method="POST",route="/api/chronicles/{chronicle_id}/events",status="200"}'
        in body
    )
