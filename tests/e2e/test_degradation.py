"""Degradation decisions in process: the runtime flag, staleness, parked chronicles, Redis down."""

from __future__ import annotations

import time
import uuid

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from app.auth import create_tenant
from app.cli import load_sample_story
from app.database import create_engine
from app.main import create_app
from ecs.projector import Projector
from ecs.repository import record_failure

pytestmark = pytest.mark.timeout(180)


async def make_app(settings, endpoints, embedder, engine, **overrides):
    async with engine.begin() as conn:
        _, key = await create_tenant(conn, f"deg-{time.time_ns()}")
        _, admin = await create_tenant(conn, f"deg-admin-{time.time_ns()}", admin=True)
    app = create_app(msgspec.structs.replace(settings, **overrides), endpoints, embedder=embedder)
    return app, {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {admin}"}


async def load_story(client, headers, engine, project: bool = True) -> str:
    chronicle = (await client.post("/api/chronicles", json={"title": "deg"}, headers=headers)).json()["id"]
    events = [msgspec.to_builtins(e) for e in load_sample_story()]
    assert (await client.post(f"/api/chronicles/{chronicle}/events", json={"events": events},
                              headers=headers)).status_code == 200  # fmt: skip
    if project:
        await Projector(engine, engine).catch_up(uuid.UUID(chronicle))
    return chronicle


async def ask(client, headers, chronicle, query="Where is Bram now?") -> dict:
    response = await client.post(
        f"/api/chronicles/{chronicle}/context", json={"query": query}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()


def bram_location(bundle: dict) -> str:
    return next(s for s in bundle["state"] if s["name"] == "Bram")["location"]["value"]


async def test_runtime_flag_switches_ecs_off_and_on_without_restart(
    settings, endpoints, embedder, engine
) -> None:
    app, headers, admin = await make_app(settings, endpoints, embedder, engine)
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        chronicle = await load_story(client, headers, engine)
        assert (await ask(client, headers, chronicle))["mode"] == "full"
        assert (
            await client.put("/api/admin/flags", json={"ecs_enrichment": False}, headers=headers)
        ).status_code == 403
        switched = await client.put("/api/admin/flags", json={"ecs_enrichment": False}, headers=admin)
        assert switched.status_code == 200 and switched.json()["shared"] is True
        try:
            off = await ask(client, headers, chronicle)
            assert off["mode"] == "chronicle_only" and "switched off" in off["degraded_reason"]
            assert bram_location(off) == "Lantern Cellar"
            fate = (await client.post(f"/api/chronicles/{chronicle}/query",
                                      json={"type": "entity_fate", "entity": "Bram"}, headers=headers)).json()  # fmt: skip
            assert fate["answered_from"] == "chronicle"
            assert any("switched off" in u["reason"] for u in fate["unavailable"])
            assert fate["current"]["location"]["value"] == "Lantern Cellar"
            status = (await client.get("/api/ops/status", headers=admin)).json()
            assert status["flags"] == {"ecs_enrichment": False}
            assert status["fallbacks_served"]["ECS enrichment is switched off"] >= 1
        finally:
            await client.put("/api/admin/flags", json={"ecs_enrichment": True}, headers=admin)
        assert (await ask(client, headers, chronicle))["mode"] == "full"


async def test_too_stale_or_parked_chronicle_is_served_chronicle_only(
    settings, endpoints, embedder, engine
) -> None:
    app, headers, _ = await make_app(settings, endpoints, embedder, engine, max_lag_events=10)
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        chronicle = await load_story(client, headers, engine, project=False)
        stale = await ask(client, headers, chronicle)
        assert stale["mode"] == "chronicle_only"
        assert "40 events behind" in stale["degraded_reason"]
        assert bram_location(stale) == "Lantern Cellar"  # still right, from the chronicle

        await Projector(engine, engine).catch_up(uuid.UUID(chronicle))
        assert (await ask(client, headers, chronicle))["mode"] == "full"

        async with engine.begin() as conn:
            await record_failure(
                conn, uuid.UUID(chronicle), attempts=9, retry_in_seconds=60, error="boom", park=True
            )
        parked = await ask(client, headers, chronicle)
        assert parked["mode"] == "chronicle_only" and "parked" in parked["degraded_reason"]


async def test_stale_policy_warn_keeps_full_mode_with_a_warning(
    settings, endpoints, embedder, engine
) -> None:
    app, headers, _ = await make_app(
        settings, endpoints, embedder, engine, max_lag_events=10, stale_policy="warn"
    )
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        chronicle = await load_story(client, headers, engine, project=False)
        bundle = await ask(client, headers, chronicle)
        assert bundle["mode"] == "full"
        assert bundle["degraded_reason"].startswith("stale:")


async def test_redis_down_is_not_an_ecs_failure(settings, endpoints, embedder, engine) -> None:
    dead_redis = msgspec.structs.replace(endpoints, redis_url="redis://127.0.0.1:1/0")
    async with engine.begin() as conn:
        _, key = await create_tenant(conn, f"noredis-{time.time_ns()}")
    headers = {"Authorization": f"Bearer {key}"}
    app = create_app(
        msgspec.structs.replace(settings, redis_url=dead_redis.redis_url), dead_redis, embedder=embedder
    )
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        chronicle = await load_story(client, headers, engine)
        for _ in range(3):
            bundle = await ask(client, headers, chronicle)
            assert bundle["mode"] == "full"
            assert bram_location(bundle) == "Lantern Cellar"
        entities = (
            await client.get(f"/api/chronicles/{chronicle}/entities?kind=character", headers=headers)
        ).json()
        bram = next(e for e in entities["items"] if e["name"] == "Bram")
        view = await client.get(f"/api/entities/{bram['id']}", headers=headers)
        assert view.status_code == 200 and view.json()["status"] == "dead"
        ready = (await client.get("/ready")).json()
        assert ready["checks"]["ecs"]["breaker"] == "closed"


async def test_ops_status_needs_an_admin_key_and_reports_the_breaker(client, tenant, engine) -> None:
    assert (await client.get("/api/ops/status", headers=tenant.headers)).status_code == 403
    async with engine.begin() as conn:
        _, admin = await create_tenant(conn, f"ops-{time.time_ns()}", admin=True)
    status = (await client.get("/api/ops/status", headers={"Authorization": f"Bearer {admin}"})).json()
    assert status["breaker"]["state"] == "closed"
    assert status["ecs_reachable"] is True
    assert isinstance(status["lag"], list) and "parked" in status


async def test_events_by_alias_fall_back_to_the_name_as_written_without_ecs(
    settings, endpoints, embedder, engine
) -> None:
    """`?actor=the Magpie` also finds the events that call him Corvin, through ECS; switched off
    or unreachable, the listing still answers, with the events naming him as written."""
    app, headers, admin = await make_app(settings, endpoints, embedder, engine)
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        chronicle = await load_story(client, headers, engine)
        url = f"/api/chronicles/{chronicle}/events"

        async def magpie_events() -> list[int]:
            response = await client.get(url, params={"actor": "the Magpie", "limit": 100}, headers=headers)
            assert response.status_code == 200, response.text
            return [e["sequence"] for e in response.json()["items"]]

        with_aliases = await magpie_events()
        as_written = [
            e.sequence for e in await _events(client, url, headers)
            if any(a["name"] == "the Magpie" for a in e.actors)
        ]  # fmt: skip
        assert set(as_written) < set(with_aliases)  # 3 and 7 call him Corvin
        assert {3, 7} <= set(with_aliases) - set(as_written)

        assert (
            await client.put("/api/admin/flags", json={"ecs_enrichment": False}, headers=admin)
        ).status_code == 200
        try:
            assert await magpie_events() == as_written
        finally:
            await client.put("/api/admin/flags", json={"ecs_enrichment": True}, headers=admin)

        services = app.state.services
        live = services.ecs_engine
        services.ecs_engine = create_engine(
            "postgresql+asyncpg://lore:lore@127.0.0.1:1/lore", timeout_ms=2_000, pool_size=1
        )
        try:
            for _ in range(settings.breaker_minimum_calls + 2):  # bounded: enough failures to open it
                assert await magpie_events() == as_written
                if services.breaker.state == "open":
                    break
            assert services.breaker.state == "open"
            rejected = services.breaker.rejected
            assert await magpie_events() == as_written
            assert services.breaker.rejected == rejected + 1  # answered without trying ECS
        finally:
            await services.ecs_engine.dispose()
            services.ecs_engine = live


class _Listed(msgspec.Struct):
    sequence: int
    actors: list[dict]


async def _events(client, url: str, headers: dict) -> list[_Listed]:
    response = await client.get(url, params={"limit": 100}, headers=headers)
    return msgspec.convert(response.json()["items"], list[_Listed])
