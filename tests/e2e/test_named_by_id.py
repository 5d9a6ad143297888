"""Events that name entities by the ids a client read from the entity endpoints.

The Ferry at Dusk (written for these tests): Tamsin, known as "the Ferrywoman", poles Odile and
the Tin Box across to the Far Bank (1-3). Then, by id: Odile is reported missing (4), Tamsin gives
up her trust in Odile and leaves the Tin Box on the Far Bank (5), and Odile, found, walks to the
Mill with the box (6).
"""

from __future__ import annotations

import pytest

from tests.e2e.stories import PostedStory, post_story

MODES = ("full", "chronicle_only")

STORY = [
    {"external_id": "ferry-1", "summary": "Tamsin the ferrywoman waits at the Near Bank with Odile.",
     "actors": [{"name": "Tamsin"}, {"name": "Odile"}], "location": "Near Bank", "effects": [
         {"op": "spawn", "entity": "Near Bank", "kind": "location"},
         {"op": "spawn", "entity": "Far Bank", "kind": "location"},
         {"op": "spawn", "entity": "Mill", "kind": "location"},
         {"op": "move", "entity": "Tamsin", "to": "Near Bank"}, {"op": "move", "entity": "Odile", "to": "Near Bank"},
         {"op": "alias", "entity": "Tamsin", "alias": "the Ferrywoman"},
         {"op": "spawn", "entity": "Tin Box", "kind": "item"}, {"op": "transfer", "item": "Tin Box", "to": "Tamsin"},
         {"op": "valence", "from": "Tamsin", "to": "Odile", "dimension": "trust", "value": 0.6},
     ]},
    {"external_id": "ferry-2", "summary": "The Ferrywoman poles across the river.", "actors": [{"name": "Tamsin"}],
     "location": "Far Bank", "effects": [{"op": "move", "entity": "Tamsin", "to": "Far Bank"}]},
    {"external_id": "ferry-3", "summary": "Odile crosses with her.", "actors": [{"name": "Odile"}],
     "location": "Far Bank", "effects": [{"op": "move", "entity": "Odile", "to": "Far Bank"}]},
]  # fmt: skip


@pytest.fixture(scope="module")
async def story(client, engine) -> tuple[PostedStory, dict[str, str]]:
    posted = await post_story(client, engine, "The Ferry at Dusk", STORY)
    listed = await client.get(
        f"/api/chronicles/{posted.chronicle}/entities", params={"limit": 50}, headers=posted.tenant.headers
    )
    assert listed.status_code == 200, listed.text
    ids = {e["name"]: e["id"] for e in listed.json()["items"]}
    later = [
        {"external_id": "ferry-4", "summary": "Nobody can find Odile.", "actors": [{"name": ids["Odile"]}],
         "effects": [{"op": "status", "entity": ids["Odile"], "status": "missing"}]},
        {"external_id": "ferry-5", "summary": "The Ferrywoman leaves the box on the bank and stops trusting Odile.",
         "actors": [{"name": ids["Tamsin"]}], "location": "Far Bank",
         "effects": [{"op": "transfer", "item": ids["Tin Box"], "to": ids["Far Bank"]},
                     {"op": "valence", "from": ids["Tamsin"], "to": ids["Odile"], "dimension": "trust", "value": -0.4}]},
        {"external_id": "ferry-6", "summary": "Odile turns up and walks to the mill with the box.",
         "actors": [{"name": "Odile"}], "location": "Mill",
         "effects": [{"op": "status", "entity": ids["Odile"], "status": "alive"},
                     {"op": "transfer", "item": ids["Tin Box"], "to": "Odile"},
                     {"op": "move", "entity": ids["Odile"], "to": ids["Mill"]}]},
        {"external_id": "ferry-7", "summary": "The Ferrywoman falls asleep in her boat.",
         "actors": [{"name": ids["Tamsin"]}], "effects": [{"op": "status", "entity": ids["Tamsin"], "status": "asleep"}]},
    ]  # fmt: skip
    response = await client.post(
        f"/api/chronicles/{posted.chronicle}/events", json={"events": later}, headers=posted.tenant.headers
    )
    assert response.status_code == 200, response.text
    for event in response.json()["events"]:
        posted.event_at[event["sequence"]] = event["id"]
    return posted, ids


def state_of(bundle: dict, name: str) -> dict:
    [state] = [s for s in bundle["state"] if s["name"] == name]
    return state


@pytest.mark.parametrize("mode", MODES)
async def test_changes_made_by_id_are_in_the_state_in_either_mode(client, story, mode) -> None:
    posted, ids = story
    bundle = await posted.context(
        client,
        query="Where is Odile and what does she carry?",
        focus=["Odile", "Tamsin"],
        mode=mode,
        format="both",
    )
    assert bundle["mode"] == mode
    odile, tamsin = state_of(bundle, "Odile"), state_of(bundle, "Tamsin")
    assert (odile["location"]["value"], odile["location"]["sequence"]) == ("Mill", 6), mode
    assert odile["status"]["value"] == "alive" and odile["status"]["sequence"] == 6
    assert [i["value"] for i in odile["inventory"]] == ["Tin Box"]
    assert tamsin["inventory"] == []
    [trust] = [r for r in tamsin["relationships"] if r["direction"] == "outgoing"]
    assert trust["other"] == "Odile" and trust["valence"] == {"trust": -0.4}, mode
    # An id is a reference, not a name: none reaches the text.
    assert not any(entity_id in bundle["text"] for entity_id in ids.values()), bundle["text"]

    then = await posted.context(
        client, query="What happened to Odile?", focus=["Odile"], mode=mode, as_of_sequence=4
    )
    assert state_of(then, "Odile")["status"]["value"] == "missing", mode


@pytest.mark.parametrize("mode", MODES)
async def test_who_is_at_a_place_left_and_reached_by_id(client, story, mode) -> None:
    posted, _ = story
    bank = await posted.context(client, query="Who is at the Far Bank?", mode=mode)
    assert bank["manifest"]["present"] == {"Far Bank": ["Tamsin"]}, mode
    mill = await posted.context(client, query="Who is at the Mill?", mode=mode)
    assert mill["manifest"]["present"] == {"Mill": ["Odile"]}, mode


async def test_the_events_of_an_actor_include_those_naming_it_by_id(client, story) -> None:
    posted, ids = story
    url = f"/api/chronicles/{posted.chronicle}/events"
    for actor in ("Odile", "odile", ids["Odile"]):
        page = await client.get(url, params={"actor": actor}, headers=posted.tenant.headers)
        assert page.status_code == 200, page.text
        assert [e["sequence"] for e in page.json()["items"]] == [1, 3, 4, 6], actor
    tamsin = await client.get(url, params={"actor": "the Ferrywoman"}, headers=posted.tenant.headers)
    assert [e["sequence"] for e in tamsin.json()["items"]] == [1, 2, 5, 7]


async def test_hybrid_questions_follow_changes_made_by_id_to_an_entity_with_an_alias(client, story) -> None:
    posted, _ = story
    fate = await posted.query(client, type="entity_fate", entity="the Ferrywoman")
    assert fate["answered_from"] == "ecs"
    # Tamsin (the Ferrywoman) is named by id in 5: she leaves the box and stops trusting Odile.
    assert [e["event"]["sequence"] for e in fate["events"]] == [1, 2, 5, 7]
    assert fate["current"]["inventory"] == []
    assert fate["current"]["status"]["value"] == "asleep"
    history = await posted.query(client, type="relationship_history", a="Tamsin", b="Odile")
    assert [(c["sequence"], c["value"]) for c in history["changes"]] == [(1, 0.6), (5, -0.4)]
    odile = await posted.query(client, type="entity_fate", entity="Odile")
    assert [e["event"]["sequence"] for e in odile["events"]] == [1, 3, 4, 6]  # 5 is a feeling of Tamsin's
