"""The entity, relationship, timeline and interaction reads over HTTP, on the sample story.

The Salt Road story is ingested once per module through the API, projected, and every route is
checked against the story's hand-computed truth.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass

import msgspec
import pytest

from app.cli import load_sample_story
from ecs.projector import Projector, replay_stored
from ecs.queries import entity_view_from_state, get_entity_view
from rag.store import EventFilters, list_events
from tests.conftest import Tenant, make_tenant

PROBLEM = "application/problem+json"


@dataclass
class Story:
    tenant: Tenant
    chronicle: str
    ids: dict[str, str]
    events: list[dict]

    def id(self, name: str) -> str:
        return self.ids[name]


@pytest.fixture(scope="module")
async def story(client, engine) -> Story:
    tenant = await make_tenant(engine)
    response = await client.post("/api/chronicles", json={"title": "The Salt Road"}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    chronicle = response.json()["id"]
    events = [msgspec.to_builtins(e) for e in load_sample_story()]
    for start in range(0, len(events), 15):
        response = await client.post(
            f"/api/chronicles/{chronicle}/events",
            json={"events": events[start : start + 15]},
            headers=tenant.headers,
        )
        assert response.status_code == 200, response.text
    await Projector(engine, engine).catch_up(uuid.UUID(chronicle))
    ids: dict[str, str] = {}
    cursor = None
    while True:
        params = {"limit": 100} | ({"cursor": cursor} if cursor else {})
        page = (
            await client.get(f"/api/chronicles/{chronicle}/entities", params=params, headers=tenant.headers)
        ).json()
        ids |= {e["name"]: e["id"] for e in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    stored = (
        await client.get(f"/api/chronicles/{chronicle}/events", params={"limit": 100}, headers=tenant.headers)
    ).json()["items"]
    return Story(tenant, chronicle, ids, stored)


async def get(client, story: Story, url: str, **params):
    return await client.get(url, params=params, headers=story.tenant.headers)


async def names(client, story: Story, **params) -> list[str]:
    response = await get(client, story, f"/api/chronicles/{story.chronicle}/entities", **params)
    assert response.status_code == 200, response.text
    return [e["name"] for e in response.json()["items"]]


# ------------------------------------------------------------------------------------------------
# Listing


async def test_listing_gives_every_entity_with_id_name_kind_and_aliases(client, story: Story) -> None:
    response = await get(client, story, f"/api/chronicles/{story.chronicle}/entities", limit=500)
    items = response.json()["items"]
    assert len(items) == 15
    corvin = next(e for e in items if e["name"] == "Corvin")
    assert corvin == corvin | {"id": story.id("Corvin"), "kind": "character", "aliases": ["the Magpie"]}
    assert {e["name"] for e in items if e["kind"] == "location"} == {
        "Brinewell Market", "Lantern Inn", "Lantern Cellar", "Greywind Pass", "Saltcrag Keep",
    }  # fmt: skip
    # creation order: the setup event creates the places, the items and their holders first
    assert {e["name"] for e in items[:11]} == {
        "Brinewell Market", "Lantern Inn", "Lantern Cellar", "Greywind Pass", "Saltcrag Keep",
        "Salt Ledger", "Silver Key", "Oathblade", "Healing Draught", "Bram", "Elara",
    }  # fmt: skip
    assert [e["name"] for e in items[11:]][-1] == "Corvin"


async def test_listing_pages_with_a_cursor(client, story: Story) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        params = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = (await get(client, story, f"/api/chronicles/{story.chronicle}/entities", **params)).json()
        assert len(page["items"]) <= 4
        seen += [e["name"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 15
    assert len(set(seen)) == 15
    assert set(seen) == set(story.ids)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"kind": "item"}, {"Salt Ledger", "Silver Key", "Oathblade", "Healing Draught"}),
        ({"kind": "ITEM", "status": "destroyed"}, {"Healing Draught"}),
        ({"status": "dead"}, {"Bram"}),
        ({"status": "Imprisoned"}, {"Corvin"}),
        ({"where": "health.hp<10"}, {"Elara"}),
        ({"where": "Health.max_hp>=10"}, {"Elara"}),
        ({"where": "health.hp<6"}, set()),
        ({"where": ["health.hp<=6", "health.max_hp=10"]}, {"Elara"}),
        ({"where": "status.value=dead"}, {"Bram"}),
        ({"where": "oath.fulfilled_day=4"}, {"Oswin"}),
        ({"where": 'oath.task="deliver the Salt Ledger"'}, {"Oswin"}),
        ({"has": "oath"}, {"Oswin"}),
        # The draught, drunk (destroyed) at Greywind Pass in event 23, lies there, out of Maud's bag.
        ({"has": ["Position", "status"]}, {"Bram", "Corvin", "Healing Draught"}),
        ({"location": "Lantern Cellar"}, {"Bram"}),
        ({"location": "saltcrag keep"}, {"Elara", "Corvin", "Silver Key", "Salt Ledger", "Oathblade"}),
        ({"location": "Lantern Inn", "kind": "character"}, {"Maud", "Tamsin"}),
        ({"location": "Lantern Inn"}, {"Maud", "Tamsin"}),
        ({"location": "Greywind Pass", "status": "destroyed"}, {"Healing Draught"}),
        ({"related_to": "Corvin", "valence": "trust<-0.5"}, {"Oswin", "Tamsin", "Maud", "Elara"}),
        ({"related_to": "the Magpie", "valence": "trust<=-0.8"}, {"Oswin", "Tamsin"}),
        ({"related_to": "Oswin", "valence": "trust>0.5"}, {"Elara"}),
        ({"related_to": "Oswin"}, {"Tamsin", "Bram", "Elara", "Maud"}),
        ({"related_to": "Oswin", "direction": "incoming"}, {"Maud", "Corvin", "Elara"}),
        ({"related_to": "Oswin", "relation": "sworn_ally", "direction": "any"}, {"Elara"}),
        ({"relation": "scribe_of"}, {"Tamsin"}),
        ({"valence": "trust>0.6"}, {"Elara"}),
        ({"valence": ["trust>0.3", "trust<0.6"], "kind": "character"}, {"Oswin", "Elara", "Tamsin"}),
    ],
)
async def test_listing_filters(client, story: Story, params, expected) -> None:
    assert set(await names(client, story, **params)) == expected


@pytest.mark.parametrize(
    ("params", "field", "message_part"),
    [
        ({"where": "health.hp<<10"}, "where", "<"),
        ({"where": "health"}, "where", "expected"),
        ({"where": "health.hp<"}, "where", "missing value"),
        ({"where": "health.hp<true"}, "where", "booleans"),
        ({"where": ["health.hp<10", ".hp=3"]}, "where", "component name"),
        ({"valence": "trust>high"}, "valence", "number"),
        ({"valence": ">0.5"}, "valence", "dimension"),
        ({"location": "Atlantis"}, "location", "Atlantis"),
        ({"related_to": "Nobody"}, "related_to", "Nobody"),
        ({"cursor": "not-a-cursor"}, "cursor", "cursor"),
        ({"has": "   "}, "has", "name"),
    ],
)
async def test_bad_filters_are_400_naming_the_parameter(
    client, story: Story, params, field, message_part
) -> None:
    response = await get(client, story, f"/api/chronicles/{story.chronicle}/entities", **params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["errors"][0]["field"] == field
    assert message_part in body["detail"]


async def test_bad_direction_and_limit_are_400(client, story: Story) -> None:
    for params in ({"direction": "sideways"}, {"limit": 0}, {"limit": 501}, {"as_of_sequence": -1}):
        response = await get(client, story, f"/api/chronicles/{story.chronicle}/entities", **params)
        assert response.status_code == 400, (params, response.text)


async def test_listing_as_of_a_sequence_replays(client, story: Story) -> None:
    assert await names(client, story, status="dead", as_of_sequence=14) == []
    assert await names(client, story, status="dead", as_of_sequence=15) == ["Bram"]
    assert set(await names(client, story, location="Lantern Inn", kind="character", as_of_sequence=13)) == {
        "Bram", "Oswin", "Maud", "Tamsin", "Elara",
    }  # fmt: skip
    assert set(await names(client, story, where="health.hp<10", as_of_sequence=21)) == {"Elara"}
    assert await names(client, story, where="health.hp<10", as_of_sequence=20) == []
    assert await names(client, story, as_of_sequence=0) == []
    # the same filters, replayed to the end, give what the projected tables give
    for params in (
        {"related_to": "Corvin", "valence": "trust<-0.5"},
        {"location": "Saltcrag Keep"},
        {"kind": "item"},
    ):
        assert await names(client, story, **params) == await names(client, story, **params, as_of_sequence=40)


# ------------------------------------------------------------------------------------------------
# One entity


async def test_bram_is_dead_in_the_lantern_cellar(client, story: Story) -> None:
    response = await get(client, story, f"/api/entities/{story.id('Bram')}")
    assert response.status_code == 200, response.text
    bram = response.json()
    assert bram["name"] == "Bram"
    assert bram["kind"] == "character"
    assert bram["status"] == "dead"
    assert bram["location"] == {"id": story.id("Lantern Cellar"), "name": "Lantern Cellar"}
    assert bram["components"]["status"] == {"value": "dead"}
    assert bram["archetype"] == ["position", "status"]
    assert bram["inventory"] == []
    assert bram["holder"] is None
    assert bram["relationships"] == [
        {
            "direction": "outgoing",
            "other": {"id": story.id("Oswin"), "name": "Oswin"},
            "types": [],
            "valence": {"trust": pytest.approx(0.3)},
            "created_sequence": 6,
            "updated_sequence": 6,
            "event_id": story.events[5]["id"],  # sequence 6: the trust it set is cited
            "valence_sources": {"trust": {"sequence": 6, "event_id": story.events[5]["id"]}},
        }
    ]


async def test_elara_holds_the_key_the_ledger_and_the_blade(client, story: Story) -> None:
    elara = (await get(client, story, f"/api/entities/{story.id('Elara')}")).json()
    assert {i["name"] for i in elara["inventory"]} == {"Silver Key", "Salt Ledger", "Oathblade"}
    assert {i["id"] for i in elara["inventory"]} == {
        story.id(n) for n in ("Silver Key", "Salt Ledger", "Oathblade")
    }
    assert elara["components"]["health"] == {"hp": 6, "max_hp": 10, "condition": None}
    assert elara["location"]["name"] == "Saltcrag Keep"
    outgoing = {r["other"]["name"]: r for r in elara["relationships"] if r["direction"] == "outgoing"}
    assert outgoing["Oswin"]["valence"]["trust"] == pytest.approx(0.8)
    assert [t["type"] for t in outgoing["Oswin"]["types"]] == ["sworn_ally"]
    assert outgoing["Oswin"]["types"][0]["data"] == {"sworn_at": "Lantern Inn"}
    incoming = {r["other"]["name"] for r in elara["relationships"] if r["direction"] == "incoming"}
    assert incoming == {"Oswin", "Tamsin"}

    key = (await get(client, story, f"/api/entities/{story.id('Silver Key')}")).json()
    assert key["holder"] == {"id": story.id("Elara"), "name": "Elara"}
    assert key["location"]["name"] == "Saltcrag Keep"  # held items are where their holder is


async def test_corvin_the_magpie_and_oswins_oath(client, story: Story) -> None:
    corvin = (await get(client, story, f"/api/entities/{story.id('Corvin')}")).json()
    assert corvin["aliases"] == ["the Magpie"]
    assert corvin["status"] == "imprisoned"
    assert corvin["location"]["name"] == "Saltcrag Keep"
    assert "bounty" not in corvin["components"]
    trust = {
        r["other"]["name"]: r["valence"]["trust"]
        for r in corvin["relationships"]
        if r["direction"] == "incoming"
    }
    assert trust["Oswin"] == pytest.approx(-0.8)
    assert trust["Tamsin"] == pytest.approx(-1.0)
    oswin = (await get(client, story, f"/api/entities/{story.id('Oswin')}")).json()
    assert oswin["location"]["name"] == "Brinewell Market"
    assert oswin["components"]["oath"]["fulfilled_day"] == 4
    draught = (await get(client, story, f"/api/entities/{story.id('Healing Draught')}")).json()
    assert draught["status"] == "destroyed"


async def test_entity_as_of_sequence_replays_the_past(client, story: Story) -> None:
    url = f"/api/entities/{story.id('Bram')}"
    at_13 = (await get(client, story, url, as_of_sequence=13)).json()
    assert at_13["status"] is None  # alive: no status recorded yet
    assert at_13["location"]["name"] == "Lantern Inn"
    # event 14: Bram goes down the cellar stairs alone (still alive); event 15: he is killed there
    at_14 = (await get(client, story, url, as_of_sequence=14)).json()
    assert at_14["status"] is None
    assert at_14["location"]["name"] == "Lantern Cellar"
    at_15 = (await get(client, story, url, as_of_sequence=15)).json()
    assert at_15["status"] == "dead"
    # Bram held both items until the Magpie took them
    bram_6 = (await get(client, story, url, as_of_sequence=6)).json()
    assert {i["name"] for i in bram_6["inventory"]} == {"Salt Ledger", "Silver Key"}
    assert [i["name"] for i in at_13["inventory"]] == []
    # the present, replayed, is exactly the projected present
    assert (await get(client, story, url, as_of_sequence=40)).json() == (await get(client, story, url)).json()
    # after the last event is a 422, as in context requests (see the test below)
    # before it was first mentioned, it did not exist
    early = await get(client, story, f"/api/entities/{story.id('Corvin')}", as_of_sequence=2)
    assert early.status_code == 404


async def test_both_sources_build_identical_views(engine, story: Story) -> None:
    chronicle_id = uuid.UUID(story.chronicle)
    async with engine.connect() as conn:
        stored = await list_events(
            conn, story.tenant.id, chronicle_id, EventFilters(), after_sequence=0, limit=1000
        )
        state, _, _ = replay_stored(stored, chronicle_id)
        for name, entity_id in story.ids.items():
            from_tables = await get_entity_view(conn, story.tenant.id, uuid.UUID(entity_id))
            from_state = entity_view_from_state(state, entity_id)
            assert from_tables == from_state, name


async def test_unknown_and_foreign_entities_are_404(client, story: Story, other_tenant: Tenant) -> None:
    bram = story.id("Bram")
    for url in (
        f"/api/entities/{bram}",
        f"/api/entities/{bram}/timeline",
        f"/api/entities/{bram}/interactions",
        f"/api/chronicles/{story.chronicle}/entities",
        f"/api/chronicles/{story.chronicle}/relationships",
        f"/api/chronicles/{story.chronicle}/relationships/Oswin/Corvin/history",
    ):
        response = await client.get(url, headers=other_tenant.headers)
        assert response.status_code == 404, (url, response.text)
        assert response.headers["content-type"].startswith(PROBLEM)
    response = await client.get(
        f"/api/entities/{bram}", params={"as_of_sequence": 20}, headers=other_tenant.headers
    )
    assert response.status_code == 404
    assert (await get(client, story, f"/api/entities/{uuid.uuid4()}")).status_code == 404
    assert (await get(client, story, "/api/entities/not-a-uuid")).status_code in (400, 404)
    assert (await client.get(f"/api/entities/{bram}")).status_code == 401


# ------------------------------------------------------------------------------------------------
# Timeline and interactions


async def test_timeline_of_bram(client, story: Story) -> None:
    url = f"/api/entities/{story.id('Bram')}/timeline"
    sequences = [e["sequence"] for e in (await get(client, story, url)).json()["items"]]
    assert sequences == [1, 4, 6, 7, 8, 13, 14, 15]
    paged: list[int] = []
    cursor = None
    for _ in range(10):
        page = (await get(client, story, url, limit=3, **({"cursor": cursor} if cursor else {}))).json()
        paged += [e["sequence"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == sequences
    first = (await get(client, story, url, limit=1)).json()["items"][0]
    assert first["id"] == story.events[0]["id"]
    assert first["kind"] == "setup"


async def test_timeline_follows_aliases(client, story: Story) -> None:
    url = f"/api/entities/{story.id('Corvin')}/timeline"
    sequences = [e["sequence"] for e in (await get(client, story, url)).json()["items"]]
    # named "Corvin" in 3, 4, 7, 8, 9, 17, 18, 25, 29 and "the Magpie" in 9, 11, 13, 15, 16, 21, ...
    assert sequences == [3, 4, 7, 8, 9, 11, 13, 15, 16, 17, 18, 21, 22, 25, 28, 29, 32, 40]


async def test_interactions_of_the_silver_key(client, story: Story) -> None:
    response = await get(client, story, f"/api/entities/{story.id('Silver Key')}/interactions")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["entity"] == {"id": story.id("Silver Key"), "name": "Silver Key"}
    assert [h["holder"]["name"] for h in body["holders"]] == ["Bram", "Corvin", "Tamsin", "Elara"]
    assert [h["sequence"] for h in body["holders"]] == [1, 7, 16, 18]
    assert [h["event_id"] for h in body["holders"]] == [story.events[s - 1]["id"] for s in (1, 7, 16, 18)]
    assert [e["sequence"] for e in body["events"]] == [1, 7, 16, 18]
    theft = body["events"][1]
    assert theft["roles"] == ["transfer:item"]
    assert {p["entity"]["name"]: p["roles"] for p in theft["participants"]} == {
        "Corvin": ["actor:agent", "transfer:to"],
        "Bram": ["actor:patient", "transfer:from"],
        "Maud": ["actor:witness"],
    }
    first = {i["entity"]["name"]: i for i in body["interactants"]}
    assert list(first)[:3] == ["Bram", "Corvin", "Maud"]
    assert first["Bram"]["event_ids"] == [story.events[0]["id"], story.events[6]["id"]]
    assert first["Elara"]["first_sequence"] == 18


async def test_interactions_of_a_character(client, story: Story) -> None:
    body = (await get(client, story, f"/api/entities/{story.id('Bram')}/interactions")).json()
    assert [e["sequence"] for e in body["events"]] == [1, 4, 6, 7, 8, 13, 14, 15]
    death = body["events"][-1]
    assert death["roles"] == ["actor:patient", "status"]
    assert [p["entity"]["name"] for p in death["participants"]] == ["Corvin"]
    assert body["holders"] == []
    page = (await get(client, story, f"/api/entities/{story.id('Bram')}/interactions", limit=5)).json()
    assert len(page["events"]) == 5
    assert page["next_cursor"]
    rest = (
        await get(client, story, f"/api/entities/{story.id('Bram')}/interactions", cursor=page["next_cursor"])
    ).json()
    assert [e["sequence"] for e in rest["events"]] == [13, 14, 15]
    assert rest["next_cursor"] is None


# ------------------------------------------------------------------------------------------------
# Relationships


async def test_relationship_graph(client, story: Story) -> None:
    url = f"/api/chronicles/{story.chronicle}/relationships"
    graph = (await get(client, story, url)).json()
    assert len(graph["edges"]) == 14
    assert graph["next_cursor"] is None
    named = {n["id"]: n["name"] for n in graph["nodes"]}
    pairs = {(named[e["from_id"]], named[e["to_id"]]): e for e in graph["edges"]}
    assert pairs[("Oswin", "Corvin")]["valence"] == {"trust": pytest.approx(-0.8)}
    assert pairs[("Oswin", "Corvin")]["types"] == []  # "employs" was ended
    assert [t["type"] for t in pairs[("Tamsin", "Oswin")]["types"]] == ["apprentice_of"]

    allies = (await get(client, story, url, type="SWORN_ALLY")).json()
    assert {(named[e["from_id"]], named[e["to_id"]]) for e in allies["edges"]} == {
        ("Oswin", "Elara"),
        ("Elara", "Oswin"),
    }
    assert {n["name"] for n in allies["nodes"]} == {"Oswin", "Elara"}

    typed = (await get(client, story, url, type=["sworn_ally", "scribe_of"])).json()
    assert len(typed["edges"]) == 3

    distrust = (await get(client, story, url, entity="the Magpie", valence="trust<-0.5")).json()
    assert {named[e["from_id"]] for e in distrust["edges"]} == {"Oswin", "Tamsin", "Maud", "Elara"}
    assert all(named[e["to_id"]] == "Corvin" for e in distrust["edges"])

    paged: list[tuple[str, str]] = []
    cursor = None
    for _ in range(20):
        page = (await get(client, story, url, limit=4, **({"cursor": cursor} if cursor else {}))).json()
        ids = {n["id"] for n in page["nodes"]}
        assert all(e["from_id"] in ids and e["to_id"] in ids for e in page["edges"])
        paged += [(e["from_id"], e["to_id"]) for e in page["edges"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == [(e["from_id"], e["to_id"]) for e in graph["edges"]]

    for params, field in (({"valence": "trust"}, "valence"), ({"entity": "Nobody"}, "entity")):
        response = await get(client, story, url, **params)
        assert response.status_code == 400
        assert response.json()["errors"][0]["field"] == field


async def test_valence_history_of_oswin_towards_corvin(client, story: Story) -> None:
    url = f"/api/chronicles/{story.chronicle}/relationships/Oswin/Corvin/history"
    response = await get(client, story, url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["from"] == {"id": story.id("Oswin"), "name": "Oswin"}
    assert body["to"] == {"id": story.id("Corvin"), "name": "Corvin"}
    history = body["history"]
    assert [h["sequence"] for h in history] == [3, 11, 17, 21]
    assert [h["value"] for h in history] == pytest.approx([0.3, 0.5, -0.3, -0.8])
    assert [h["delta"] for h in history] == pytest.approx([0.3, 0.2, -0.8, -0.5])
    assert [h["event_id"] for h in history] == [story.events[s - 1]["id"] for s in (3, 11, 17, 21)]
    assert history[2]["event_kind"] == "discovery"
    assert "empty chest" in history[2]["event_summary"]
    assert body["valence"] == {"trust": pytest.approx(-0.8)}

    # ids, aliases and any case work; the direction matters
    same = (
        await get(
            client,
            story,
            f"/api/chronicles/{story.chronicle}/relationships/{story.id('Oswin')}/THE%20MAGPIE/history",
        )
    ).json()
    assert same == body
    reverse = (
        await get(client, story, f"/api/chronicles/{story.chronicle}/relationships/Corvin/Oswin/history")
    ).json()
    assert reverse["history"] == []
    assert reverse["valence"] == {}
    assert (await get(client, story, url, dimension="fear")).json()["history"] == []
    missing = await get(
        client, story, f"/api/chronicles/{story.chronicle}/relationships/Oswin/Nobody/history"
    )
    assert missing.status_code == 404
    assert missing.json()["errors"] == [{"field": "b", "message": "no entity 'Nobody' in this chronicle",
                                         "index": None}]  # fmt: skip


async def test_a_past_that_has_not_happened_and_numbers_past_a_bigint_are_refused(
    client, story: Story
) -> None:
    bram = story.id("Bram")
    for url in (f"/api/chronicles/{story.chronicle}/entities", f"/api/entities/{bram}"):
        response = await get(client, story, url, as_of_sequence=41)  # the story has 40 events
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "as_of_sequence"
        assert (await get(client, story, url, as_of_sequence=40)).status_code == 200
        huge = await get(client, story, url, as_of_sequence=10**20)
        assert huge.status_code == 400 and "as_of_sequence" in huge.text, huge.text
    events = f"/api/chronicles/{story.chronicle}/events"
    huge = await get(client, story, events, to_sequence=10**20)
    assert huge.status_code == 400 and "to_sequence" in huge.text, huge.text
    forged = base64.urlsafe_b64encode(b'{"s": 100000000000000000000}').decode().rstrip("=")
    response = await get(client, story, events, cursor=forged)
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "cursor", response.text


async def test_openapi_schema_lists_the_routes(client) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (
        "/api/chronicles/{chronicle_id}/entities",
        "/api/entities/{entity_id}",
        "/api/entities/{entity_id}/timeline",
        "/api/entities/{entity_id}/interactions",
        "/api/chronicles/{chronicle_id}/relationships",
        "/api/chronicles/{chronicle_id}/relationships/{a}/{b}/history",
    ):
        assert path in paths, path
