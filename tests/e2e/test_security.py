"""Security claims of docs/security.md, one test each."""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from app.auth import create_tenant
from app.cli import load_sample_story
from app.main import create_app
from ecs.projector import Projector
from rag.schema import api_keys
from tests.conftest import Tenant

REPO = Path(__file__).resolve().parents[2]


async def test_api_keys_are_stored_only_as_hashes(engine, tenant: Tenant) -> None:
    async with engine.connect() as conn:
        rows = (
            (await conn.execute(select(api_keys).where(api_keys.c.tenant_id == tenant.id))).mappings().all()
        )
    assert len(rows) == 1
    stored = " ".join(str(v) for v in rows[0].values())
    assert tenant.key not in stored
    assert rows[0]["key_hash"] == hashlib.sha256(tenant.key.encode()).hexdigest()


@pytest.fixture
async def foreign_ids(client, engine, tenant: Tenant) -> dict[str, str]:
    chronicle = (
        await client.post("/api/chronicles", json={"title": "secret"}, headers=tenant.headers)
    ).json()["id"]
    events = [msgspec.to_builtins(e) for e in load_sample_story()]
    await client.post(f"/api/chronicles/{chronicle}/events", json={"events": events}, headers=tenant.headers)
    await Projector(engine, engine).catch_up(uuid.UUID(chronicle))
    listed = (
        await client.get(f"/api/chronicles/{chronicle}/entities?limit=500", headers=tenant.headers)
    ).json()
    by_name = {e["name"]: e["id"] for e in listed["items"]}
    return {
        "chronicle_id": chronicle,
        "entity_id": by_name["Bram"],
        "a": by_name["Oswin"],
        "b": by_name["Corvin"],
    }


async def test_every_route_hides_another_tenants_ids(client, foreign_ids, other_tenant: Tenant) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    bodies = {
        "/api/chronicles/{chronicle_id}/events": {"events": [{"summary": "intrusion"}]},
        "/api/chronicles/{chronicle_id}/context": {"query": "Where is Bram?"},
        "/api/chronicles/{chronicle_id}/query": {"type": "entity_fate", "entity": "Bram"},
    }
    checked = 0
    for path, operations in schema["paths"].items():
        if "{" not in path or path.startswith("/api/admin"):
            continue  # admin routes are for operators across tenants; they need an admin key instead
        url = path
        for name, value in foreign_ids.items():
            url = url.replace("{" + name + "}", value)
        assert "{" not in url, f"no foreign id for a parameter of {path}"
        for method in operations:
            response = await client.request(
                method.upper(), url, json=bodies.get(path), headers=other_tenant.headers
            )
            assert response.status_code == 404, (method, path, response.status_code, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            checked += 1
    assert checked >= 12


async def test_admin_routes_need_an_admin_key(client, foreign_ids, tenant: Tenant) -> None:
    chronicle = foreign_ids["chronicle_id"]
    for method, path in (("POST", f"/api/admin/chronicles/{chronicle}/ecs/verify"),
                         ("POST", f"/api/admin/chronicles/{chronicle}/ecs/rebuild"),
                         ("GET", "/api/ops/status"), ("GET", "/api/admin/flags")):  # fmt: skip
        assert (await client.request(method, path)).status_code == 401
        assert (await client.request(method, path, headers=tenant.headers)).status_code == 403


async def test_request_size_is_limited(settings, endpoints, embedder, engine) -> None:
    async with engine.begin() as conn:
        _, key = await create_tenant(conn, f"size-{time.time_ns()}")
    app = create_app(
        msgspec.structs.replace(settings, max_request_bytes=10_000), endpoints, embedder=embedder
    )
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        headers = {"Authorization": f"Bearer {key}"}
        chronicle = (await client.post("/api/chronicles", json={"title": "s"}, headers=headers)).json()["id"]
        big = {"events": [{"summary": "x" * 5_000} for _ in range(3)]}
        response = await client.post(f"/api/chronicles/{chronicle}/events", json=big, headers=headers)
        assert response.status_code == 413
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_rate_limit_per_key_answers_429_with_retry_after(settings, endpoints, embedder, engine) -> None:
    async with engine.begin() as conn:
        _, key = await create_tenant(conn, f"rate-{time.time_ns()}")
        _, other = await create_tenant(conn, f"rate-other-{time.time_ns()}")
    limited = msgspec.structs.replace(settings, rate_limit_per_minute=60, rate_limit_burst=5)
    app = create_app(limited, endpoints, embedder=embedder)
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        codes = [(await client.get("/api/chronicles", headers={"Authorization": f"Bearer {key}"})).status_code
                 for _ in range(7)]  # fmt: skip
        assert codes[:5] == [200] * 5
        assert codes[5] == 429
        last = await client.get("/api/chronicles", headers={"Authorization": f"Bearer {key}"})
        assert last.status_code == 429 and int(last.headers["retry-after"]) >= 1
        assert last.json()["type"].endswith("/rate-limited")
        # Another key has its own bucket.
        assert (
            await client.get("/api/chronicles", headers={"Authorization": f"Bearer {other}"})
        ).status_code == 200


async def test_logs_hold_no_keys_no_event_text_and_only_hashed_tenants(
    client, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    from app.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    secret_summary = "The vault code is 7-4-1-9 and nobody may know it."
    chronicle = (await client.post("/api/chronicles", json={"title": "logs"}, headers=tenant.headers)).json()[
        "id"
    ]
    await client.post(f"/api/chronicles/{chronicle}/events", json={"events": [{"summary": secret_summary}]},
                      headers=tenant.headers)  # fmt: skip
    await client.post(
        f"/api/chronicles/{chronicle}/context", json={"query": "vault code"}, headers=tenant.headers
    )
    await client.get("/api/chronicles", headers={"Authorization": "Bearer lk_wrong"})
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    text = "\n".join(lines)
    assert any('"route"' in line for line in lines), "access log lines are JSON with a route template"
    assert tenant.key not in text and "lk_wrong" not in text
    assert secret_summary not in text and "7-4-1-9" not in text
    assert str(tenant.id) not in text


def test_no_sql_is_built_by_formatting_strings() -> None:
    """Every query is SQLAlchemy Core with bound parameters; no f-string or % reaches the driver."""
    offenders = []
    pattern = re.compile(r"(text|exec_driver_sql|execute)\(\s*f[\"']|(text|exec_driver_sql)\([^)]*%\s")
    for package in ("app", "rag", "ecs"):
        for path in (REPO / package).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []
