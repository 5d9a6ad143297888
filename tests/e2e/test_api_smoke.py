"""The chronicle API over HTTP: create, ingest, idempotency, paging, tenant isolation."""

from __future__ import annotations

import gc
import uuid

from litestar.testing import AsyncTestClient

from app.main import create_app
from tests.conftest import Tenant


async def make_chronicle(client, tenant: Tenant, title: str = "Test chronicle") -> str:
    response = await client.post("/api/chronicles", json={"title": title}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def event(n: int, **fields) -> dict:
    return {"summary": f"Event number {n}: the caravan moves on.", "external_id": f"e{n}", **fields}


async def test_create_get_and_list_chronicles(client, tenant: Tenant) -> None:
    response = await client.post(
        "/api/chronicles",
        json={"title": "The Long Winter", "description": "snowbound", "metadata": {"genre": "saga"}},
        headers=tenant.headers,
    )
    assert response.status_code == 201
    created = response.json()
    assert created["title"] == "The Long Winter"
    assert created["metadata"] == {"genre": "saga"}
    assert created["event_count"] == 0
    assert created["embedding_model"] == "all-MiniLM-L6-v2-onnx-int8"

    fetched = (await client.get(f"/api/chronicles/{created['id']}", headers=tenant.headers)).json()
    assert fetched == created

    ids = [created["id"]] + [await make_chronicle(client, tenant, f"c{i}") for i in range(4)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/chronicles", params=params, headers=tenant.headers)).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids


async def test_ingest_assigns_sequences_in_input_order_and_is_idempotent(client, tenant: Tenant) -> None:
    chronicle = await make_chronicle(client, tenant)
    url = f"/api/chronicles/{chronicle}/events"
    first = await client.post(
        url, json={"events": [event(1), event(2), {"summary": "no external id"}]}, headers=tenant.headers
    )
    assert first.status_code == 200, first.text
    results = first.json()["events"]
    assert [r["sequence"] for r in results] == [1, 2, 3]
    assert [r["duplicate"] for r in results] == [False, False, False]
    assert [r["external_id"] for r in results] == ["e1", "e2", None]

    again = await client.post(
        url, json={"events": [event(2), event(4), event(1), event(4)]}, headers=tenant.headers
    )
    assert again.status_code == 200
    results_again = again.json()["events"]
    assert results_again[0] == results[1] | {"duplicate": True}
    assert results_again[1]["sequence"] == 4 and not results_again[1]["duplicate"]
    assert results_again[2] == results[0] | {"duplicate": True}
    # The same external id twice in one batch is stored once.
    assert results_again[3] == results_again[1] | {"duplicate": True}

    page = (await client.get(url, headers=tenant.headers)).json()
    assert [e["sequence"] for e in page["items"]] == [1, 2, 3, 4]
    chronicle_row = (await client.get(f"/api/chronicles/{chronicle}", headers=tenant.headers)).json()
    assert chronicle_row["event_count"] == 4
    assert not any(r["content_differs"] for r in results + results_again)


async def test_a_re_post_that_says_something_else_is_flagged_and_the_original_kept(
    client, tenant: Tenant
) -> None:
    chronicle = await make_chronicle(client, tenant)
    url = f"/api/chronicles/{chronicle}/events"
    original = [
        event(1, occurred_at="2025-11-04T20:00:00Z", actors=["Maud"],
              effects=[{"op": "valence", "from": "Maud", "to": "Oswin", "dimension": "trust", "delta": 1}]),
        event(2, tags=["inn"]),
    ]  # fmt: skip
    assert (await client.post(url, json={"events": original}, headers=tenant.headers)).status_code == 200

    # The same content written otherwise (story time in another zone, a delta of 1 as 1.0, an
    # actor as an object): not a difference.
    same = event(1, occurred_at="2025-11-04T22:00:00+02:00", actors=[{"name": "Maud"}],
                 effects=[{"op": "valence", "from": "Maud", "to": "Oswin", "dimension": "trust", "delta": 1.0}])  # fmt: skip
    changed_summary = event(2, tags=["inn"]) | {"summary": "Event number 2: the caravan turns back."}
    changed_tags = event(2, tags=["inn", "night"])
    for body, differs in (
        ([same], [False]),
        ([changed_summary], [True]),
        ([changed_tags, same], [True, False]),
    ):
        response = await client.post(url, json={"events": body}, headers=tenant.headers)
        assert response.status_code == 200, response.text
        results = response.json()["events"]
        assert [r["duplicate"] for r in results] == [True] * len(body)
        assert [r["content_differs"] for r in results] == differs, body

    # In one batch: the second copy of a new external id is compared with the first.
    response = await client.post(
        url, json={"events": [event(3), event(3, importance=0.9), event(3)]}, headers=tenant.headers
    )
    assert [(r["duplicate"], r["content_differs"]) for r in response.json()["events"]] == [
        (False, False), (True, True), (True, False),
    ]  # fmt: skip

    page = (await client.get(url, headers=tenant.headers)).json()["items"]
    assert [e["summary"] for e in page] == [
        original[0]["summary"],
        original[1]["summary"],
        event(3)["summary"],
    ]
    assert page[1]["tags"] == ["inn"]


async def test_events_round_trip_with_actors_effects_and_story_time(client, tenant: Tenant) -> None:
    chronicle = await make_chronicle(client, tenant)
    sent = {
        "external_id": "theft",
        "kind": "betrayal",
        "summary": "Corvin slipped the silver key from Bram's belt while Maud watched.",
        "actors": [{"name": "Corvin", "role": "agent"}, {"name": "Bram", "role": "patient"}, "Maud"],
        "location": "Lantern Inn",
        "effects": [
            {"op": "transfer", "item": "silver key", "from": "Bram", "to": "Corvin"},
            {"op": "valence", "from": "Maud", "to": "Corvin", "dimension": "trust", "delta": -0.3},
            {
                "op": "set",
                "entity": "Corvin",
                "component": "Bounty",
                "value": {"gold": 50, "by": ["the Keep"]},
            },
        ],
        "occurred_at": "2025-11-04T21:15:00Z",
        "tags": ["theft", "key"],
        "importance": 0.9,
    }
    response = await client.post(
        f"/api/chronicles/{chronicle}/events", json={"events": [sent]}, headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    stored = (await client.get(f"/api/chronicles/{chronicle}/events", headers=tenant.headers)).json()[
        "items"
    ][0]
    assert stored["summary"] == sent["summary"]
    assert stored["kind"] == "betrayal"
    assert stored["actors"] == [
        {"name": "Corvin", "role": "agent"},
        {"name": "Bram", "role": "patient"},
        {"name": "Maud", "role": None},
    ]
    assert stored["location"] == "Lantern Inn"
    assert stored["effects"] == [
        {"op": "transfer", "item": "silver key", "to": "Corvin", "from": "Bram"},
        {"op": "valence", "from": "Maud", "to": "Corvin", "dimension": "trust", "delta": -0.3, "value": None},
        {"op": "set", "entity": "Corvin", "component": "Bounty", "value": {"gold": 50, "by": ["the Keep"]}},
    ]
    assert stored["occurred_at"] == "2025-11-04T21:15:00Z"
    assert stored["tags"] == ["theft", "key"]
    assert stored["importance"] == 0.9


async def test_event_listing_filters_and_cursor(client, tenant: Tenant) -> None:
    chronicle = await make_chronicle(client, tenant)
    url = f"/api/chronicles/{chronicle}/events"
    batch = [
        event(
            i,
            actors=["Oswin" if i % 2 else "Maud"],
            kind="travel" if i % 3 == 0 else "talk",
            occurred_at=f"2025-01-{i:02d}T00:00:00Z",
        )
        for i in range(1, 11)
    ]
    assert (await client.post(url, json={"events": batch}, headers=tenant.headers)).status_code == 200

    async def sequences(**params) -> list[int]:
        response = await client.get(url, params=params, headers=tenant.headers)
        assert response.status_code == 200, response.text
        return [e["sequence"] for e in response.json()["items"]]

    assert await sequences(actor="oswin") == [1, 3, 5, 7, 9]  # names match case-insensitively
    assert await sequences(kind="travel") == [3, 6, 9]
    assert await sequences(from_sequence=4, to_sequence=6) == [4, 5, 6]
    assert await sequences(occurred_after="2025-01-08T00:00:00Z") == [8, 9, 10]
    assert await sequences(occurred_before="2025-01-02T00:00:00Z") == [1, 2]
    assert await sequences(actor="Maud", kind="travel") == [6]

    collected: list[int] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 3, "actor": "Maud"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(url, params=params, headers=tenant.headers)).json()
        collected += [e["sequence"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert collected == [2, 4, 6, 8, 10]


async def test_tenant_cannot_see_or_write_another_tenants_chronicle(
    client, tenant: Tenant, other_tenant: Tenant
) -> None:
    chronicle = await make_chronicle(client, tenant)
    await client.post(
        f"/api/chronicles/{chronicle}/events", json={"events": [event(1)]}, headers=tenant.headers
    )
    foreign = other_tenant.headers
    for response in (
        await client.get(f"/api/chronicles/{chronicle}", headers=foreign),
        await client.get(f"/api/chronicles/{chronicle}/events", headers=foreign),
        await client.post(
            f"/api/chronicles/{chronicle}/events", json={"events": [event(2)]}, headers=foreign
        ),
    ):
        assert response.status_code == 404, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    listed = (await client.get("/api/chronicles", headers=foreign)).json()["items"]
    assert chronicle not in [c["id"] for c in listed]
    # The foreign write stored nothing.
    own = (await client.get(f"/api/chronicles/{chronicle}/events", headers=tenant.headers)).json()["items"]
    assert [e["external_id"] for e in own] == ["e1"]


async def test_authentication_is_required(client) -> None:
    for headers in ({}, {"Authorization": "Bearer lk_not-a-real-key"}, {"Authorization": "Basic abc"}):
        response = await client.get("/api/chronicles", headers=headers)
        assert response.status_code == 401
        assert response.json()["type"].endswith("/unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


async def test_health_ready_and_openapi(client) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["migrations"]["ok"] is True
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/api/chronicles/{chronicle_id}/events" in schema["paths"]
    assert {"get", "post"} <= set(schema["paths"]["/api/chronicles/{chronicle_id}/events"])


async def test_unknown_chronicle_is_404(client, tenant: Tenant) -> None:
    response = await client.get(f"/api/chronicles/{uuid.uuid4()}", headers=tenant.headers)
    assert response.status_code == 404
    assert response.json()["status"] == 404


async def test_server_app_freezes_its_startup_objects_out_of_the_collectors_sight(
    settings, endpoints, embedder, engine, tenant: Tenant
) -> None:
    assert gc.get_freeze_count() == 0
    app = create_app(settings, endpoints, embedder=embedder, freeze_startup_objects=True)
    try:
        async with AsyncTestClient(app=app) as frozen:
            assert gc.get_freeze_count() > 10_000  # modules, models, metadata: the whole start-up
            response = await frozen.post("/api/chronicles", json={"title": "t"}, headers=tenant.headers)
            assert response.status_code == 201
    finally:
        gc.unfreeze()  # this test process builds many apps; the server builds one
