"""Deterministic regressions for what fuzzing the API found (see test_openapi_fuzz.py).

Client values that PostgreSQL cannot take came back as 500s: a NUL character (U+0000) in almost
any string (schemathesis found it in a chronicle's title; these are the other places it reached),
and an integer past bigint (found in `from_sequence`). Each must now be a client error with a
problem-details body: 422 in a body, 400 in a query or path parameter. And hybrid questions
naming unknown entities opened the ECS circuit breaker (for every tenant) although ECS was up.
"""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

from app.main import create_app
from tests.fuzz.conftest import FuzzWorld

PROBLEM = "application/problem+json"
NUL = "\x00"
HUGE = 2**70

# (method, path, JSON body, query parameters, expected status)
# fmt: off
QUERY = "/api/chronicles/{c}/query"
CASES = [
    ("post", "/api/chronicles", {"title": f"a{NUL}b"}, None, 422),
    ("post", "/api/chronicles", {"title": "ok", "description": NUL}, None, 422),
    ("post", "/api/chronicles", {"title": "ok", "metadata": {"k": f"a{NUL}"}}, None, 422),
    ("post", "/api/chronicles", {"title": "ok", "metadata": {f"k{NUL}": 1}}, None, 422),
    ("get", "/api/chronicles/{c}/events", None, {"actor": f"a{NUL}"}, 400),
    ("get", "/api/chronicles/{c}/events", None, {"kind": f"a{NUL}"}, 400),
    ("get", "/api/chronicles/{c}/entities", None, {"kind": f"a{NUL}"}, 400),
    ("get", "/api/chronicles/{c}/entities", None, {"location": f"a{NUL}"}, 400),
    ("get", "/api/chronicles/{c}/entities", None, {"status": f"a{NUL}"}, 400),
    ("get", "/api/chronicles/{c}/entities", None, {"related_to": f"a{NUL}"}, 400),
    ("get", "/api/chronicles/{c}/entities", None, {"has": f"a{NUL}"}, 400),
    ("get", "/api/chronicles/{c}/relationships", None, {"entity": f"a{NUL}"}, 400),
    ("get", "/api/chronicles/{c}/relationships", None, {"type": f"a{NUL}"}, 400),
    ("get", "/api/chronicles/{c}/relationships/a%00/b/history", None, None, 400),
    ("get", "/api/chronicles/{c}/relationships/{a}/{b}/history", None, {"dimension": f"a{NUL}"}, 400),
    ("post", "/api/chronicles/{c}/context", {"query": f"salt{NUL}"}, None, 422),
    ("post", QUERY, {"type": "entity_fate", "entity": f"El{NUL}"}, None, 422),
    ("post", QUERY, {"type": "event_participants", "event": f"e{NUL}"}, None, 422),
    ("post", QUERY, {"type": "present_at", "location": f"l{NUL}"}, None, 422),
    ("post", QUERY, {"type": "relationship_history", "a": f"l{NUL}", "b": "x"}, None, 422),
    ("post", QUERY, {"type": "item_interactions", "item": f"l{NUL}"}, None, 422),
    ("post", QUERY, {"type": "state_as_of", "entity": f"l{NUL}", "sequence": 1}, None, 422),
    ("get", "/api/chronicles/{c}/events", None, {"from_sequence": HUGE}, 400),
    ("get", "/api/chronicles/{c}/events", None, {"to_sequence": HUGE}, 400),
    ("get", "/api/chronicles/{c}/entities", None, {"as_of_sequence": HUGE}, 400),
    ("get", "/api/entities/{e}", None, {"as_of_sequence": HUGE}, 400),
    ("post", "/api/chronicles/{c}/context", {"query": "salt", "as_of_sequence": HUGE}, None, 422),
    ("post", QUERY, {"type": "state_as_of", "entity": "{a}", "sequence": HUGE}, None, 422),
]
# fmt: on


@pytest.mark.parametrize(("method", "path", "body", "params", "status"), CASES)
async def test_values_the_database_cannot_take_are_client_errors(
    client, fuzz_world: FuzzWorld, method: str, path: str, body, params, status: int
) -> None:
    a, b = fuzz_world.edges[-1]  # names (the ids come first)

    def fill(text: str) -> str:
        return (
            text.replace("{c}", fuzz_world.chronicle_id)
            .replace("{e}", fuzz_world.entity_ids[0])
            .replace("{a}", a)
            .replace("{b}", b)
        )

    kwargs = {"headers": fuzz_world.headers, "params": params}
    if body is not None:
        kwargs["json"] = {
            key: fill(value) if isinstance(value, str) else value for key, value in body.items()
        }
    url = fill(path)
    response = await getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["status"] == status


async def test_unknown_names_in_questions_do_not_open_the_ecs_circuit(
    settings, endpoints, embedder, fuzz_world: FuzzWorld
) -> None:
    """Found by `make fuzz`: after fuzzed hybrid questions, the ECS breaker was open.

    Then a question naming an entity by id was a 503 (`entity ids are resolved by the ECS read model
    (ECS circuit open (_NotProjected: location '0' is not in the ECS read model (yet)))`) and context
    bundles were degraded to chronicle-only, for every tenant, although ECS was up throughout.
    """
    app = create_app(settings, endpoints, embedder=embedder)  # its own breaker, not the suite's
    url = f"/api/chronicles/{fuzz_world.chronicle_id}/query"
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        for number in range(10):
            question = {"type": "entity_fate", "entity": f"nobody-{number}"}
            response = await client.post(url, json=question, headers=fuzz_world.headers)
            assert response.status_code == 404, response.text  # unknown to ECS and chronicle alike
        ready = (await client.get("/ready")).json()
        assert ready["checks"]["ecs"]["breaker"] == "closed", ready
        question = {"type": "entity_fate", "entity": fuzz_world.entity_ids[0]}
        response = await client.post(url, json=question, headers=fuzz_world.headers)
        assert response.status_code == 200, response.text
