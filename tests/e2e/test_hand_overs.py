"""A story of hand-overs the subject of a question does not witness, asked the way a client would.

The Tolls of Tarrow (written for these tests): the Toll Seal goes Wren -> Tobias (2, Idris
watching) -> Wren (3, Idris elsewhere) -> Idris (4, no `from`). Idris walks to the Old Mill (5),
picks up the Saffron Bale lying there (6), and the Amber Flask he carries shatters there (7): it
lies at the Old Mill, where its holder was, though none of its own events says he went there.
Tobias goes to the Chapel (8) and is killed there (9); Ada and Father Anselm are at the Chapel
too (10). Wren is known as the Grey Heron from 11, when the Grey Mare comes to the wharf, and
goes by that name at 12.
"""

from __future__ import annotations

import uuid

import pytest

from app.database import create_engine
from ecs import hybrid
from tests.e2e.stories import PostedStory, post_story


def _event(sequence: int, summary: str, actors: list, effects: list, location: str | None = None) -> dict:
    return {"external_id": f"tarrow-{sequence:03d}", "summary": summary, "actors": actors,
            "location": location, "effects": effects}  # fmt: skip


def _spawn(name: str, kind: str) -> dict:
    return {"op": "spawn", "entity": name, "kind": kind}


STORY = [
    _event(1, "Tarrow Wharf wakes: Ada Fenwick, Wren Calloway, Idris Mollo and Tobias Reed on the quay; "
           "Father Anselm keeps the Chapel; a saffron bale waits at the Old Mill.", [], [
        *(_spawn(n, "location") for n in ("Tarrow Wharf", "Old Mill", "Chapel")),
        *(_spawn(n, "character") for n in ("Ada Fenwick", "Wren Calloway", "Idris Mollo", "Tobias Reed",
                                            "Father Anselm")),
        *(_spawn(n, "item") for n in ("Toll Seal", "Amber Flask", "Saffron Bale")),
        *({"op": "move", "entity": n, "to": "Tarrow Wharf"} for n in ("Ada Fenwick", "Wren Calloway",
                                                                    "Idris Mollo", "Tobias Reed")),
        {"op": "move", "entity": "Father Anselm", "to": "Chapel"},
        {"op": "move", "entity": "Saffron Bale", "to": "Old Mill"},
        {"op": "transfer", "item": "Toll Seal", "to": "Wren Calloway"},
        {"op": "transfer", "item": "Amber Flask", "to": "Idris Mollo"},
    ]),
    _event(2, "Wren lends the toll seal to Tobias while Idris looks on.",
           [{"name": "Wren Calloway", "role": "agent"}, {"name": "Tobias Reed", "role": "patient"},
            {"name": "Idris Mollo", "role": "witness"}],
           [{"op": "transfer", "item": "Toll Seal", "to": "Tobias Reed", "from": "Wren Calloway"}], "Tarrow Wharf"),
    _event(3, "Tobias gives the seal back to Wren after the tally.",
           [{"name": "Tobias Reed"}, {"name": "Wren Calloway"}],
           [{"op": "transfer", "item": "Toll Seal", "to": "Wren Calloway"}], "Tarrow Wharf"),
    _event(4, "Wren presses the seal into Idris's hand.", [{"name": "Wren Calloway"}, {"name": "Idris Mollo"}],
           [{"op": "transfer", "item": "Toll Seal", "to": "Idris Mollo"}], "Tarrow Wharf"),
    _event(5, "Idris walks the towpath up to the Old Mill.", [{"name": "Idris Mollo"}],
           [{"op": "move", "entity": "Idris Mollo", "to": "Old Mill"}], "Old Mill"),
    _event(6, "Idris shoulders the saffron bale.", [{"name": "Idris Mollo"}],
           [{"op": "transfer", "item": "Saffron Bale", "to": "Idris Mollo"}], "Old Mill"),
    _event(7, "The amber flask slips and shatters on the millstones.", [],
           [{"op": "destroy", "entity": "Amber Flask"}]),
    _event(8, "Tobias goes to the Chapel to pray.", [{"name": "Tobias Reed"}],
           [{"op": "move", "entity": "Tobias Reed", "to": "Chapel"}], "Chapel"),
    _event(9, "Tobias Reed is stabbed at the altar.", [{"name": "Tobias Reed", "role": "patient"}],
           [{"op": "status", "entity": "Tobias Reed", "status": "dead"}], "Chapel"),
    _event(10, "Ada kneels by the body in the Chapel.", [{"name": "Ada Fenwick"}],
           [{"op": "move", "entity": "Ada Fenwick", "to": "Chapel"}], "Chapel"),
    _event(11, "On the river they start calling Wren the Grey Heron.", [{"name": "Wren Calloway"}],
           [{"op": "alias", "entity": "Wren Calloway", "alias": "Grey Heron"},
            {"op": "spawn", "entity": "Grey Mare", "kind": "character"},
            {"op": "move", "entity": "Grey Mare", "to": "Tarrow Wharf"}], "Tarrow Wharf"),
    _event(12, "The Grey Heron rows out at dawn.", [{"name": "Grey Heron"}], [], "Tarrow Wharf"),
]  # fmt: skip


Story = PostedStory


@pytest.fixture(scope="module")
async def story(client, engine) -> Story:
    return await post_story(client, engine, "The Tolls of Tarrow", STORY)


@pytest.fixture
async def degraded(engine, story: Story):
    """The hybrid functions with a chronicle engine that works and an ECS engine that cannot connect."""
    dead = create_engine("postgresql+asyncpg://lore:lore@127.0.0.1:1/lore", timeout_ms=2_000, pool_size=1)
    yield hybrid.Scope(engine, dead, story.tenant.id, uuid.UUID(story.chronicle))
    await dead.dispose()


async def context(client, story: Story, **body) -> dict:
    return await story.context(client, **body)


def _timeline(changes: list[tuple[int, str, str | None, str | None]]) -> list[tuple]:
    return sorted(changes)


def fate_timeline(fate: dict) -> list[tuple]:
    return [
        (e["event"]["sequence"], c["what"], (c.get("other") or {}).get("name"), (c.get("counterpart") or {}).get("name"))
        for e in fate["events"] for c in e["changes"]
    ]  # fmt: skip


def degraded_timeline(fate: hybrid.EntityFateResult) -> list[tuple]:
    return [
        (e.event.sequence, c.what, c.other.name if c.other else None, c.counterpart.name if c.counterpart else None)
        for e in fate.events for c in e.changes
    ]  # fmt: skip


IDRIS_RECEIVED = [
    (1, "received", "Amber Flask", None),
    (4, "received", "Toll Seal", "Wren Calloway"),  # not Tobias: the seal went back to Wren at 3
    (6, "received", "Saffron Bale", "Old Mill"),  # picked up where it lay
]


async def test_fate_names_who_really_handed_each_item_over(client, story: Story, degraded) -> None:
    received = [
        c
        for c in fate_timeline(await story.query(client, type="entity_fate", entity="Idris"))
        if c[1] == "received"
    ]
    assert received == IDRIS_RECEIVED
    fate = await hybrid.answer(degraded, hybrid.EntityFateQuery(entity="Idris Mollo"))
    assert isinstance(fate, hybrid.EntityFateResult)
    assert fate.answered_from == "chronicle"
    assert [c for c in degraded_timeline(fate) if c[1] == "received"] == IDRIS_RECEIVED


async def test_a_thing_destroyed_while_carried_lies_where_its_holder_was(
    client, story: Story, degraded
) -> None:
    fate = await story.query(client, type="entity_fate", entity="Amber Flask")
    assert fate["current"]["location"]["value"] == "Old Mill"
    assert (7, "moved", "Old Mill", None) in fate_timeline(fate)
    chronicle_only = await hybrid.answer(degraded, hybrid.EntityFateQuery(entity="Amber Flask"))
    assert isinstance(chronicle_only, hybrid.EntityFateResult)
    assert (7, "moved", "Old Mill", None) in degraded_timeline(chronicle_only)
    assert chronicle_only.current is not None and chronicle_only.current.location is not None
    assert chronicle_only.current.location.value == "Old Mill"
    for mode in ("full", "chronicle_only"):
        bundle = await context(client, story, query="Where is the amber flask?", mode=mode, format="json")
        [flask] = [s for s in bundle["state"] if s["name"] == "Amber Flask"]
        assert (flask["location"]["value"], flask["location"]["sequence"]) == ("Old Mill", 7), mode
        assert flask["status"]["value"] == "destroyed"


async def test_presence_marks_the_dead_and_reads_more_phrasings(client, story: Story) -> None:
    for query in (
        "Who else is at the Chapel?",
        "Which characters are in the Chapel?",
        "Who was on the Chapel?",
    ):
        for mode in ("full", "chronicle_only"):
            bundle = await context(client, story, query=query, mode=mode, format="both")
            assert "presence" in bundle["manifest"]["facets"], (query, mode)
            assert bundle["manifest"]["present"] == {
                "Chapel": ["Ada Fenwick", "Father Anselm", "Tobias Reed"]
            }
            assert "Present: Ada Fenwick, Father Anselm, Tobias Reed (dead)" in bundle["text"], (query, mode)


async def test_pov_by_first_name_and_an_unknown_pov(client, story: Story) -> None:
    by_first = await context(client, story, query="What happened to Tobias?", pov="Idris", format="json")
    by_name = await context(client, story, query="What happened to Tobias?", pov="Idris Mollo", format="json")
    seen = [h["sequence"] for h in by_first["history"] + by_first["recent"]]
    assert seen == [h["sequence"] for h in by_name["history"] + by_name["recent"]]
    assert {2, 3} <= set(seen)  # on the wharf with Tobias
    assert not {8, 9} & set(seen)  # at the Old Mill while Tobias went to the Chapel and died there
    for pov in ("Zebediah", "Reedless"):
        response = await client.post(
            f"/api/chronicles/{story.chronicle}/context", json={"query": "What happened?", "pov": pov},
            headers=story.tenant.headers,
        )  # fmt: skip
        assert response.status_code == 422, response.text
        [error] = response.json()["errors"]
        assert error["field"] == "pov"
        assert f"no entity '{pov}'" in error["message"]


async def test_an_event_named_in_the_question_outlasts_the_recent_ones_in_a_small_budget(
    client, story: Story
) -> None:
    roomy = await context(client, story, query="What happened at #2?", format="json")
    assert len(roomy["recent"]) == 5 and len(roomy["history"]) > 1
    bundle = await context(client, story, query="What happened at #2?", max_tokens=90, format="both")
    assert [h["sequence"] for h in bundle["history"]] == [2]
    assert bundle["history"][0]["why"] == ["named in the question"]
    assert bundle["token_count"] <= 90
    dropped = {o["sequence"] for o in bundle["manifest"]["omitted"] if o["section"] == "recent"}
    assert dropped  # recent events gave way first
    assert "lend" in bundle["text"]


async def test_an_external_id_in_the_question_is_not_a_name(client, story: Story) -> None:
    bundle = await context(client, story, query="What happened in tarrow-005?", format="json")
    assert bundle["focus"] == []
    [named] = [h for h in bundle["history"] if h["why"] == ["named in the question"]]
    assert named["sequence"] == 5


async def test_text_format_and_error_fields(client, story: Story) -> None:
    url = f"/api/chronicles/{story.chronicle}/context"
    text = await client.post(
        url, json={"query": "Where is Ada?", "format": "text"}, headers=story.tenant.headers
    )
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    missing = await client.post(url, json={"format": "json"}, headers=story.tenant.headers)
    assert missing.status_code == 422
    assert [e["field"] for e in missing.json()["errors"]] == ["query"]
    unknown = await client.post(url, json={"query": "x", "colour": "red"}, headers=story.tenant.headers)
    assert [e["field"] for e in unknown.json()["errors"]] == ["colour"]


async def test_a_question_asked_as_the_pov_about_itself_has_its_state(client, story: Story) -> None:
    bundle = await context(
        client,
        story,
        query="Where am I and what am I carrying?",
        pov="Idris",
        template="roleplay",
        format="both",
    )
    assert [s["name"] for s in bundle["state"]] == ["Idris Mollo"]
    assert "- You are at Old Mill." in bundle["text"]
    # Both spawned by the first event: their order is their ids' (fixed for a chronicle).
    [carry] = [line for line in bundle["text"].splitlines() if line.startswith("- You carry: ")]
    assert sorted(carry.removeprefix("- You carry: ").rstrip(".").split(", ")) == [
        "Saffron Bale",
        "Toll Seal",
    ]


async def test_the_text_names_aliases_and_says_when_it_is_past_state(client, story: Story) -> None:
    now = await context(client, story, query="Where is the Grey Heron?", format="both")
    assert "### Wren Calloway (character, aka Grey Heron)\n" in now["text"]
    past = await context(client, story, query="Where is Tobias?", as_of_sequence=7, format="both")
    assert "## State as of #7 (authoritative)" in past["text"]
    assert "Current state" not in past["text"]
    assert "- Location: Tarrow Wharf (since #1)" in past["text"]


async def test_a_hand_over_says_what_changed_since_and_what_did_not(client, story: Story) -> None:
    """The seal went on with Idris: the hand-over's place is no longer the seal's, its holder is."""
    for mode in ("full", "chronicle_only"):
        bundle = await context(client, story, query="Who has the toll seal?", mode=mode, template="roleplay")
        [hand_over] = [h for h in bundle["history"] if h["sequence"] == 4]
        assert (
            hand_over["superseded_note"] == "earlier: Toll Seal at Tarrow Wharf; now: Toll Seal at Old Mill"
        )
        [lent] = [h for h in bundle["history"] if h["sequence"] == 2]
        assert (
            "earlier: Toll Seal held by Tobias Reed; now: Toll Seal held by Idris Mollo"
            in lent["superseded_note"]
        )
        assert (
            "(changed since) earlier: Toll Seal at Tarrow Wharf; now: Toll Seal at Old Mill" in bundle["text"]
        )
        assert "no longer true" not in bundle["text"]


async def test_an_ambiguous_word_marks_each_entity_it_may_mean(client, story: Story) -> None:
    """ "Grey" is a word of the Grey Heron (Wren's alias) and of the Grey Mare: both, each marked."""
    bundle = await context(client, story, query="Where is Grey now?", format="json")
    assert sorted((f["name"], f.get("ambiguous")) for f in bundle["focus"]) == [
        ("Grey Mare", True), ("Wren Calloway", True)
    ]  # fmt: skip
    whole = await context(client, story, query="Where is the Grey Heron?", format="json")
    assert [(f["name"], f.get("ambiguous")) for f in whole["focus"]] == [("Wren Calloway", None)]


async def test_as_of_after_the_last_event_is_a_422(client, story: Story) -> None:
    response = await client.post(
        f"/api/chronicles/{story.chronicle}/context", json={"query": "Where is Ada?", "as_of_sequence": 99},
        headers=story.tenant.headers,
    )  # fmt: skip
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error == {"field": "as_of_sequence", "message": "99 is after the chronicle's last event (#12)",
                     "index": None}  # fmt: skip


async def test_events_of_an_actor_include_those_naming_it_by_an_alias(client, story: Story) -> None:
    url = f"/api/chronicles/{story.chronicle}/events"
    for actor in ("Wren Calloway", "grey heron"):
        page = await client.get(url, params={"actor": actor}, headers=story.tenant.headers)
        assert page.status_code == 200, page.text
        assert [e["sequence"] for e in page.json()["items"]] == [2, 3, 4, 11, 12], actor
    nobody = await client.get(url, params={"actor": "Zebediah"}, headers=story.tenant.headers)
    assert nobody.json()["items"] == []


async def test_a_text_cut_for_budget_ends_with_a_whole_line(client, story: Story) -> None:
    """When pinned state alone is over the budget the text is cut: at a line's end, not mid-fact."""
    bundle = await context(client, story, query="Where are Ada, Wren, Idris, Tobias and Anselm?", max_tokens=40,
                           format="both")  # fmt: skip
    assert bundle["manifest"]["truncated"] is True
    assert bundle["token_count"] <= 40
    assert bundle["text"].endswith("\n")
    full = await context(client, story, query="Where are Ada, Wren, Idris, Tobias and Anselm?", format="both")
    assert full["text"].startswith(bundle["text"])


async def test_a_character_is_not_a_place_to_be_present_at(client, story: Story, degraded) -> None:
    response = await story.post(client, "query", {"type": "present_at", "location": "Idris"})
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "location"
    assert "'Idris Mollo' is a character, not a place" in error["message"]
    with pytest.raises(hybrid.InvalidQuery, match="'Idris Mollo' is a character, not a place"):
        await hybrid.answer(degraded, hybrid.PresentAtQuery(location="Idris Mollo"))
    # A place named only in events' `location` stays a place.
    found = await hybrid.answer(degraded, hybrid.PresentAtQuery(location="Chapel"))
    assert isinstance(found, hybrid.PresentAtResult)
    assert {m.entity.name for m in found.present} == {"Ada Fenwick", "Father Anselm", "Tobias Reed"}


async def test_a_thing_destroyed_in_the_hand_ends_its_holders(client, story: Story) -> None:
    answer = await story.query(client, type="item_interactions", item="Amber Flask")
    assert [(h["event"]["sequence"], (h["holder"] or {}).get("name")) for h in answer["holders"]] == [
        (1, "Idris Mollo"), (7, None),  # shattered at the mill: no one holds it since
    ]  # fmt: skip
