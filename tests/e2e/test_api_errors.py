"""Bad input gets a 4xx problem-details body naming the event index and field, and stores nothing."""

from __future__ import annotations

import pytest

from tests.conftest import Tenant
from tests.e2e.test_api_smoke import event, make_chronicle

PROBLEM = "application/problem+json"


async def stored_count(client, tenant: Tenant, chronicle: str) -> int:
    return (await client.get(f"/api/chronicles/{chronicle}", headers=tenant.headers)).json()["event_count"]


@pytest.mark.parametrize(
    ("bad_event", "field", "message_part"),
    [
        (
            {"summary": "x", "effects": [{"op": "teleport", "entity": "Bram"}]},
            "events[1].effects[0].op",
            "teleport",
        ),
        ({"external_id": "no-summary"}, "events[1].summary", "summary"),
        ({"summary": 42}, "events[1].summary", "str"),
        ({"summary": ""}, "events[1].summary", "length"),
        ({"summary": "   "}, "events[1]", "blank"),
        ({"summary": "y" * 8001}, "events[1].summary", "8000"),
        ({"summary": "x", "effects": [{"op": "move", "entity": "Bram"}]}, "events[1].effects[0].to", "to"),
        (
            {"summary": "x", "effects": [{"op": "valence", "from": "a", "to": "b", "dimension": "trust"}]},
            "events[1].effects[0]",
            "delta",
        ),
        ({"summary": "x", "colour": "red"}, "events[1].colour", "colour"),
        ({"summary": "x", "importance": 3}, "events[1].importance", "1.0"),
        ({"summary": "x", "occurred_at": "yesterday"}, "events[1].occurred_at", "datetime"),
        # A registered component's value of the wrong shape: the reducer would skip it unseen.
        (
            {
                "summary": "x",
                "effects": [{"op": "set", "entity": "Maud", "component": "Health", "value": "very"}],
            },
            "events[1].effects[0].value",
            "'health'",
        ),
        (
            {
                "summary": "x",
                "effects": [{"op": "set", "entity": "Maud", "component": "status", "value": " "}],
            },
            "events[1].effects[0].value",
            "blank",
        ),
        (
            {"summary": "x", "effects": [{"op": "spawn", "entity": "Maud", "components": {"position": 7}}]},
            "events[1].effects[0].components.position",
            "'position'",
        ),
    ],
)
async def test_invalid_event_rejects_whole_batch(
    client, tenant: Tenant, bad_event, field, message_part
) -> None:
    chronicle = await make_chronicle(client, tenant)
    response = await client.post(
        f"/api/chronicles/{chronicle}/events",
        json={"events": [event(1), bad_event, event(3)]},
        headers=tenant.headers,
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == 422
    [error] = body["errors"]
    assert error["field"] == field
    assert error["index"] == 1
    assert message_part in error["message"] or message_part in body["detail"], body
    assert await stored_count(client, tenant, chronicle) == 0


async def test_batch_size_limits(client, tenant: Tenant) -> None:
    chronicle = await make_chronicle(client, tenant)
    url = f"/api/chronicles/{chronicle}/events"
    too_many = await client.post(url, json={"events": [{"summary": "s"}] * 1001}, headers=tenant.headers)
    assert too_many.status_code == 422
    assert too_many.json()["errors"][0]["field"] == "events"
    empty = await client.post(url, json={"events": []}, headers=tenant.headers)
    assert empty.status_code == 422
    assert await stored_count(client, tenant, chronicle) == 0


async def test_malformed_json_and_wrong_body_shape(client, tenant: Tenant) -> None:
    chronicle = await make_chronicle(client, tenant)
    url = f"/api/chronicles/{chronicle}/events"
    malformed = await client.post(
        url, content=b'{"events": [', headers=tenant.headers | {"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    assert malformed.headers["content-type"].startswith(PROBLEM)
    not_a_list = await client.post(url, json={"events": {"summary": "x"}}, headers=tenant.headers)
    assert not_a_list.status_code == 422
    assert not_a_list.json()["errors"][0]["field"] == "events"
    create = await client.post("/api/chronicles", json={"title": ""}, headers=tenant.headers)
    assert create.status_code == 422
    assert create.json()["errors"][0]["field"] == "title"


@pytest.mark.parametrize(
    "body",
    [
        b'{"events": [{"summary": "Zo\xeb"}]}',  # Latin-1, not UTF-8
        b'{"events": [{"summary": "\\ud800"}]}',  # a lone surrogate
        b'\xff\xfe{\x00"\x00',  # UTF-16 with a byte-order mark
    ],
)
async def test_a_body_that_is_not_utf8_json_is_a_400_and_stores_nothing(client, tenant: Tenant, body) -> None:
    chronicle = await make_chronicle(client, tenant)
    headers = tenant.headers | {"content-type": "application/json"}
    for url in (f"/api/chronicles/{chronicle}/events", f"/api/chronicles/{chronicle}/context",
                f"/api/chronicles/{chronicle}/query", "/api/chronicles"):  # fmt: skip
        response = await client.post(url, content=body, headers=headers)
        assert response.status_code == 400, (url, response.text)
        assert response.headers["content-type"].startswith(PROBLEM)
        assert "UTF-8" in response.json()["detail"], response.json()
    assert await stored_count(client, tenant, chronicle) == 0


async def test_bad_path_and_query_parameters(client, tenant: Tenant) -> None:
    chronicle = await make_chronicle(client, tenant)
    cases = [
        ("/api/chronicles/not-a-uuid", None),
        (f"/api/chronicles/{chronicle}/events?cursor=%%%garbage", "cursor"),
        (f"/api/chronicles/{chronicle}/events?cursor=eyJ4IjoxfQ", "cursor"),
        (f"/api/chronicles/{chronicle}/events?limit=0", "limit"),
        (f"/api/chronicles/{chronicle}/events?limit=abc", "limit"),
        (f"/api/chronicles/{chronicle}/events?from_sequence=5&to_sequence=2", "from_sequence"),
        (f"/api/chronicles/{chronicle}/events?occurred_after=notadate", "occurred_after"),
        ("/api/chronicles?cursor=bad", "cursor"),
    ]
    for url, field in cases:
        response = await client.get(url, headers=tenant.headers)
        assert 400 <= response.status_code < 500, (url, response.status_code, response.text)
        assert response.headers["content-type"].startswith(PROBLEM), url
        if field is not None:
            assert response.status_code == 400, url
            assert field in response.text, (url, response.text)


async def test_unknown_route_and_method_are_problem_details(client, tenant: Tenant) -> None:
    response = await client.get("/api/nothing-here", headers=tenant.headers)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM)
    response = await client.delete("/api/chronicles", headers=tenant.headers)
    assert response.status_code == 405
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_component_values_of_the_right_shape_and_custom_ones_are_taken(client, tenant: Tenant) -> None:
    chronicle = await make_chronicle(client, tenant)
    effects = [
        {"op": "spawn", "entity": "Maud", "components": {"health": {"hp": 4}, "position": "Inn"}},
        {"op": "set", "entity": "Maud", "component": "health", "value": 3},  # a bare number is hp
        {"op": "set", "entity": "Maud", "component": "Clearance", "value": "very"},  # custom: any JSON
    ]
    response = await client.post(
        f"/api/chronicles/{chronicle}/events",
        json={"events": [event(1, effects=effects)]},
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
