"""Fixtures for fuzzing the HTTP API with schemathesis against its own OpenAPI schema.

The schema is the one the service serves at `/schema/openapi.json`. It is read once at import
(collection needs it to make one test per operation) from an app that is only built, never
started: the document depends on the route declarations alone. The app under test is another
`create_app` instance on the suite's embedded PostgreSQL and Valkey; schemathesis drives it
in-process (ASGI) from its own event-loop thread, runs its lifespan there, and `fuzz_app` shuts
that down again before the embedded servers stop. A test checks that this app serves the same
document.

Sizes, from the environment:
- `LORE_FUZZ_EXAMPLES`: Hypothesis `max_examples` per operation (default 10: the CI run, part of
  the normal `pytest` run); `make fuzz` uses 200.
- `LORE_FUZZ_BUDGET_S`: wall-clock budget of the whole run; once spent, the operations not yet
  fuzzed are skipped, and say why (0, the default: no budget).
- `LORE_FUZZ_SEED`: a fixed seed, to replay a run (with CI set, Hypothesis derandomizes anyway).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import redis
from litestar.testing import TestClient

from app.auth import create_tenant
from app.cli import load_sample_story
from app.flags import KEY_PREFIX
from app.main import create_app
from app.runtime import Endpoints
from app.settings import Settings
from ecs.projector import Projector

FUZZ_EXAMPLES = int(os.environ.get("LORE_FUZZ_EXAMPLES", "10"))
FUZZ_BUDGET_S = float(os.environ.get("LORE_FUZZ_BUDGET_S", "0") or 0)
FUZZ_SEED = int(os.environ["LORE_FUZZ_SEED"]) if os.environ.get("LORE_FUZZ_SEED") else None

SCHEMA_PATH = "/schema/openapi.json"
FLAG_KEY = KEY_PREFIX + "ecs_enrichment"


def served_schema() -> dict[str, Any]:
    """The OpenAPI document as the service serves it, from an app that is built but not started."""
    unused = "postgresql+asyncpg://unused@127.0.0.1:9/unused"
    app = create_app(
        Settings(database_url=unused, redis_url="redis://127.0.0.1:9"),
        Endpoints(database_url=unused, ecs_database_url=unused, redis_url="redis://127.0.0.1:9",
                  embedded_postgres=False, embedded_valkey=False),
    )  # fmt: skip
    # Without `with`, the test client sends the request but runs no lifespan: nothing connects.
    response = TestClient(app).get(SCHEMA_PATH)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@dataclass
class FuzzWorld:
    """Real resources of one admin tenant, so that generated ids can hit them."""

    headers: dict[str, str]
    chronicle_id: str
    entity_ids: list[str]
    entity_names: list[str]
    edges: list[tuple[str, str]]
    """(from, to) of real relationships, as ids and as names."""
    event_refs: list[str]
    """Event ids and external ids."""


class Targets:
    """What the schemathesis hooks (registered at import) swap in while a fuzz module runs."""

    world: FuzzWorld | None = None


@dataclass
class FuzzBudget:
    seconds: float
    started: float = field(default_factory=time.monotonic)

    def check(self) -> None:
        if self.seconds and time.monotonic() - self.started > self.seconds:
            pytest.skip(f"the fuzz time budget of {self.seconds:.0f} s (LORE_FUZZ_BUDGET_S) is spent")


@pytest.fixture(scope="session")
async def fuzz_world(client, engine) -> AsyncIterator[FuzzWorld]:
    """An admin tenant with the sample story ingested (through the API) and projected."""
    async with engine.begin() as conn:
        _tenant_id, key = await create_tenant(conn, f"fuzz-{uuid.uuid4().hex[:12]}", admin=True)
    headers = {"Authorization": f"Bearer {key}"}
    response = await client.post("/api/chronicles", json={"title": "Fuzzed Salt Road"}, headers=headers)
    assert response.status_code == 201, response.text
    chronicle = response.json()["id"]
    events = [msgspec.to_builtins(e) for e in load_sample_story()]
    for start in range(0, len(events), 50):
        response = await client.post(
            f"/api/chronicles/{chronicle}/events",
            json={"events": events[start : start + 50]},
            headers=headers,
        )
        assert response.status_code == 200, response.text
    await Projector(engine, engine).catch_up(uuid.UUID(chronicle))

    async def items(path: str) -> Any:
        response = await client.get(
            f"/api/chronicles/{chronicle}/{path}", params={"limit": 500}, headers=headers
        )
        assert response.status_code == 200, response.text
        return response.json()

    entities = (await items("entities"))["items"]
    graph = await items("relationships")
    stored = (await items("events"))["items"]
    names = {node["id"]: node["name"] for node in graph["nodes"]}
    edges = [(e["from_id"], e["to_id"]) for e in graph["edges"]]
    edges += [(names[a], names[b]) for a, b in edges if a in names and b in names]
    assert entities and edges and stored, "the sample story should give entities and relationships"
    world = FuzzWorld(
        headers=headers,
        chronicle_id=chronicle,
        entity_ids=[e["id"] for e in entities],
        entity_names=[e["name"] for e in entities],
        edges=edges,
        event_refs=[e["id"] for e in stored] + [e["external_id"] for e in stored if e["external_id"]],
    )
    Targets.world = world
    yield world
    Targets.world = None


@pytest.fixture(scope="module")
def fuzz_app(settings, endpoints, embedder, redis_url) -> Iterator[Any]:
    """The app under test; schemathesis starts its lifespan on first use, this stops it."""
    from schemathesis.python import asgi

    overrides: dict[str, Any] = {
        # The per-key rate limit would answer 429 to a long run from one key; it is not what this
        # fuzzes (tests/e2e/test_security.py covers it), so it is off here.
        "rate_limit_per_minute": 0,
    }
    app = create_app(msgspec.structs.replace(settings, **overrides), endpoints, embedder=embedder)
    # `PUT /api/admin/flags` is fuzzed too, and the flag lives in the suite's shared Valkey: put
    # back what was there, so later tests see the flag as before.
    store = redis.Redis.from_url(redis_url)
    flag_before = store.get(FLAG_KEY)
    try:
        yield app
    finally:
        asgi.shutdown_lifespans()
        if flag_before is None:
            store.delete(FLAG_KEY)
        else:
            store.set(FLAG_KEY, flag_before)
        store.close()


@pytest.fixture(scope="module")
def restore_flags(fuzz_app: Any, fuzz_world: FuzzWorld) -> Callable[[], None]:
    """Puts the runtime flags back as they were, after a fuzzed `PUT /api/admin/flags`.

    Otherwise the operations fuzzed after it would run with ECS enrichment switched off, where
    an entity id in a hybrid question is a documented 503 (its read model is off), not a bug.
    """
    from schemathesis.python import asgi

    with asgi.get_client(fuzz_app) as client:
        before = client.get("/api/admin/flags", headers=fuzz_world.headers).json()

    def restore() -> None:
        with asgi.get_client(fuzz_app) as client:
            response = client.put("/api/admin/flags", json=before, headers=fuzz_world.headers)
        assert response.status_code == 200, response.text

    return restore


@pytest.fixture(scope="module")
def fuzz_budget() -> FuzzBudget:
    return FuzzBudget(FUZZ_BUDGET_S)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give each schemathesis item its operation in its node id (`...[GET /health]`).

    pytest 9.2 builds a Function's node id from `originalname`, which schemathesis 4.32 sets to
    the bare test name, so every operation got the same id. Only the node id is rebuilt, from
    the item's own name; nothing is done where pytest already has it right.
    """
    for item in items:
        parent = item.parent
        if (
            item.name.endswith("]")
            and not item.nodeid.endswith("]")
            and parent is not None
            and hasattr(item, "_id")
            and hasattr(parent, "id")
        ):
            item._id = parent.id.child(item.name)
