"""Feelings and relations that change, asked the way a client would.

The Ferry at Marrow Ford (written for these tests; everyone stays at the ford, so no place or
holder is ever stale): Hesper hires Doran and warms to him (2: employs, trust +0.4, affection
+0.2) and trusts Lisbet after the rescue (3: trust +0.3), where Lisbet's gratitude toward Doran is
set to 0.9. Doran becomes the Ferryman (4). Hesper dismisses the Ferryman (5: employs removed,
trust -0.9, so trust is -0.5 now). Lisbet's gratitude toward the Ferryman drops to 0.1 (6).
Lisbet breaks with Hesper (7: sworn_friend removed) and they make up (8: sworn_friend again, and
Hesper's trust in Lisbet +0.2). Lisbet's gratitude settles at 0.4 (9). Doran swears to guard
Hesper (10) and breaks the oath (11): nothing is left from him to her.
"""

from __future__ import annotations

import pytest

from tests.e2e.stories import PostedStory, post_story

FORD = "Marrow Ford"


def _event(sequence: int, summary: str, actors: list[str], effects: list) -> dict:
    return {"external_id": f"ford-{sequence:03d}", "summary": summary, "location": FORD,
            "actors": [{"name": a} for a in actors], "effects": effects}  # fmt: skip


def _valence(source: str, target: str, dimension: str, **change: float) -> dict:
    return {"op": "valence", "from": source, "to": target, "dimension": dimension, **change}


STORY = [
    _event(1, "Marrow Ford at low water: Hesper Vane keeps the toll house, Doran Pike mends nets, "
           "Lisbet Crow is Hesper's sworn friend.", [], [
        {"op": "spawn", "entity": FORD, "kind": "location"},
        *({"op": "spawn", "entity": n, "kind": "character"} for n in ("Hesper Vane", "Doran Pike", "Lisbet Crow")),
        *({"op": "move", "entity": n, "to": FORD} for n in ("Hesper Vane", "Doran Pike", "Lisbet Crow")),
        {"op": "relate", "from": "Lisbet Crow", "to": "Hesper Vane", "type": "sworn_friend"},
    ]),
    _event(2, "Hesper hires Doran to pole the ferry and likes his steady hands.", ["Hesper Vane", "Doran Pike"], [
        {"op": "relate", "from": "Hesper Vane", "to": "Doran Pike", "type": "employs"},
        _valence("Hesper Vane", "Doran Pike", "trust", delta=0.4),
        _valence("Hesper Vane", "Doran Pike", "affection", delta=0.2),
    ]),
    _event(3, "Doran pulls Lisbet out of the flood while Hesper watches from the bank.",
           ["Doran Pike", "Lisbet Crow", "Hesper Vane"], [
        _valence("Lisbet Crow", "Doran Pike", "gratitude", value=0.9),
        _valence("Hesper Vane", "Lisbet Crow", "trust", delta=0.3),
    ]),
    _event(4, "The bargemen start calling Doran the Ferryman.", ["Doran Pike"], [
        {"op": "alias", "entity": "Doran Pike", "alias": "the Ferryman"},
    ]),
    _event(5, "The Ferryman is caught skimming fares and Hesper turns him off.", ["Hesper Vane", "the Ferryman"], [
        {"op": "unrelate", "from": "Hesper Vane", "to": "the Ferryman", "type": "employs"},
        _valence("Hesper Vane", "the Ferryman", "trust", delta=-0.9),
    ]),
    _event(6, "Lisbet hears the Ferryman left her brother to drown.", ["Lisbet Crow"], [
        _valence("Lisbet Crow", "the Ferryman", "gratitude", value=0.1),
    ]),
    _event(7, "Lisbet blames Hesper for hiring him and breaks their friendship.", ["Lisbet Crow", "Hesper Vane"], [
        {"op": "unrelate", "from": "Lisbet Crow", "to": "Hesper Vane", "type": "sworn_friend"},
    ]),
    _event(8, "Over a long winter the two make up.", ["Lisbet Crow", "Hesper Vane"], [
        {"op": "relate", "from": "Lisbet Crow", "to": "Hesper Vane", "type": "sworn_friend"},
        _valence("Hesper Vane", "Lisbet Crow", "trust", delta=0.2),
    ]),
    _event(9, "Lisbet learns the brother lived; she thinks better of Doran.", ["Lisbet Crow"], [
        _valence("Lisbet Crow", "Doran Pike", "gratitude", value=0.4),
    ]),
    _event(10, "Doran swears to guard the toll house for Hesper.", ["Doran Pike"], [
        {"op": "relate", "from": "Doran Pike", "to": "Hesper Vane", "type": "sworn_guard"},
    ]),
    _event(11, "Doran breaks his oath and walks away from the ford.", ["Doran Pike"], [
        {"op": "unrelate", "from": "Doran Pike", "to": "Hesper Vane", "type": "sworn_guard"},
    ]),
]  # fmt: skip

MODES = ("full", "chronicle_only")


Story = PostedStory


@pytest.fixture(scope="module")
async def story(client, engine) -> Story:
    return await post_story(client, engine, "The Ferry at Marrow Ford", STORY)


async def context(client, story: Story, **body) -> dict:
    return await story.context(client, **body)


def items_by_sequence(bundle: dict) -> dict[int, dict]:
    return {h["sequence"]: h for h in bundle["history"] + bundle["recent"]}


def relation(state: dict, other: str, direction: str) -> dict:
    [found] = [r for r in state["relationships"] if r["other"] == other and r["direction"] == direction]
    return found


@pytest.mark.parametrize("mode", MODES)
async def test_each_valence_is_cited_with_the_event_that_last_changed_it(client, story: Story, mode) -> None:
    bundle = await context(client, story, query="How does Hesper feel about Doran?", mode=mode, format="json")
    assert bundle["mode"] == mode
    [hesper] = [s for s in bundle["state"] if s["name"] == "Hesper Vane"]
    to_doran = relation(hesper, "Doran Pike", "outgoing")
    assert to_doran["types"] == []
    assert to_doran["valence"] == {"affection": 0.2, "trust": -0.5}
    # Affection dates from the hiring, trust from the dismissal: one citation would hide that.
    assert to_doran["valence_sources"] == {
        "affection": {"sequence": 2, "event_id": story.event_at[2]},
        "trust": {"sequence": 5, "event_id": story.event_at[5]},
    }
    assert to_doran["event_id"] == story.event_at[5]
    # A relation type alone (no valence) is cited like any fact: the event that last set it.
    [lisbet] = [s for s in (await context(client, story, query="Is Lisbet still Hesper's friend?", mode=mode,
                                          format="json"))["state"] if s["name"] == "Lisbet Crow"]  # fmt: skip
    to_hesper = relation(lisbet, "Hesper Vane", "outgoing")
    assert (to_hesper["types"], to_hesper["valence"]) == (["sworn_friend"], {})
    assert (to_hesper["sequence"], to_hesper["event_id"]) == (8, story.event_at[8])
    # The same in a past state, and in state_as_of.
    [then] = [s for s in (await context(client, story, query="Is Lisbet still Hesper's friend?", mode=mode,
                                        as_of_sequence=9, format="json"))["state"] if s["name"] == "Lisbet Crow"]  # fmt: skip
    assert relation(then, "Hesper Vane", "outgoing")["event_id"] == story.event_at[8]
    past = await story.query(client, type="state_as_of", entity="Lisbet Crow", sequence=9)
    assert relation(past["state"], "Hesper Vane", "outgoing")["event_id"] == story.event_at[8]
    # And the entity view cites it the same way, now and in the past.
    lisbet_id = next(f["id"] for f in (await context(client, story, query="Lisbet", format="json"))["focus"])
    for params in ({}, {"as_of_sequence": 9}):
        view = (
            await client.get(f"/api/entities/{lisbet_id}", params=params, headers=story.tenant.headers)
        ).json()
        [to_her] = [
            r
            for r in view["relationships"]
            if r["other"]["name"] == "Hesper Vane" and r["direction"] == "outgoing"
        ]
        assert (to_her["updated_sequence"], to_her["event_id"]) == (8, story.event_at[8]), params


async def test_the_entity_view_cites_each_valence_too(client, story: Story) -> None:
    response = await client.get(
        f"/api/chronicles/{story.chronicle}/entities",
        params={"kind": "character"},
        headers=story.tenant.headers,
    )
    assert response.status_code == 200, response.text
    [lisbet] = [e for e in response.json()["items"] if e["name"] == "Lisbet Crow"]
    response = await client.get(f"/api/entities/{lisbet['id']}", headers=story.tenant.headers)
    assert response.status_code == 200, response.text
    relationships = response.json()["relationships"]
    [to_doran] = [
        r for r in relationships if r["other"]["name"] == "Doran Pike" and r["direction"] == "outgoing"
    ]
    assert to_doran["valence_sources"] == {"gratitude": {"sequence": 9, "event_id": story.event_at[9]}}
    [from_hesper] = [
        r for r in relationships if r["other"]["name"] == "Hesper Vane" and r["direction"] == "incoming"
    ]
    assert from_hesper["valence"] == {"trust": 0.5}
    assert from_hesper["valence_sources"] == {"trust": {"sequence": 8, "event_id": story.event_at[8]}}


@pytest.mark.parametrize("mode", MODES)
async def test_history_marks_feelings_and_relations_that_later_changed(client, story: Story, mode) -> None:
    bundle = await context(
        client, story, query="What happened in #2, #3, #6 and #7?", focus=["Hesper Vane", "Lisbet Crow"],
        mode=mode, format="both",
    )  # fmt: skip
    items = items_by_sequence(bundle)
    assert {2, 3, 6, 7} <= set(items)
    assert items[2]["superseded"] is True
    assert items[2]["superseded_note"] == (
        "earlier: Hesper Vane employs Doran Pike; now: no longer; "
        "earlier: Hesper Vane trust toward Doran Pike rose by 0.40; now: Hesper Vane trust toward Doran Pike -0.50"
    )  # affection +0.2 is still so: not in the note
    # Set to 0.9, then 0.1 (by the alias "the Ferryman"), now 0.4: both earlier values are stale.
    assert items[3]["superseded_note"] == (
        "earlier: Lisbet Crow gratitude toward Doran Pike +0.90; now: Lisbet Crow gratitude toward Doran Pike +0.40"
    )  # Hesper's trust in Lisbet rose at 3 and is higher still: history, not a stale fact
    assert items[6]["superseded_note"] == (
        "earlier: Lisbet Crow gratitude toward Doran Pike +0.10; now: Lisbet Crow gratitude toward Doran Pike +0.40"
    )
    # Both ends are in focus; the note is said once.
    assert items[7]["superseded_note"] == (
        "earlier: Lisbet Crow no longer sworn_friend Hesper Vane; now: Lisbet Crow sworn_friend Hesper Vane"
    )
    for sequence in (5, 8, 9):
        if sequence in items:
            assert items[sequence]["superseded"] is False, sequence
    assert "earlier: Hesper Vane employs Doran Pike; now: no longer" in bundle["text"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_feeling_still_held_is_not_stale(client, story: Story, mode) -> None:
    bundle = await context(client, story, query="What happened in #3?", focus=["Hesper Vane"], mode=mode)
    item = items_by_sequence(bundle)[3]
    assert (item["superseded"], item["superseded_note"]) == (False, None)


@pytest.mark.parametrize("mode", MODES)
async def test_as_of_a_sequence_later_changes_do_not_count(client, story: Story, mode) -> None:
    bundle = await context(
        client, story, query="What happened in #2?", focus=["Hesper Vane"], as_of_sequence=4, mode=mode
    )
    item = items_by_sequence(bundle)[2]
    assert (item["superseded"], item["superseded_note"]) == (False, None)


async def test_a_relation_with_nothing_left_is_ended_not_drawn(client, story: Story) -> None:
    for mode in MODES:
        bundle = await context(client, story, query="What happened in #10?", focus=["Hesper Vane"], mode=mode)
        [hesper] = [s for s in bundle["state"] if s["name"] == "Hesper Vane"]
        from_doran = relation(hesper, "Doran Pike", "incoming")
        # In a bundle it is shown as ended, cited with the event that ended it ("is he still her
        # guard?" is answered); the text leaves it out.
        assert (from_doran["types"], from_doran["valence"]) == ([], {}), mode
        assert (from_doran["sequence"], from_doran["event_id"]) == (11, story.event_at[11]), mode
        assert items_by_sequence(bundle)[10]["superseded_note"] == (
            "earlier: Doran Pike sworn_guard Hesper Vane; now: no longer"
        ), mode
    headers = story.tenant.headers
    graph = (await client.get(f"/api/chronicles/{story.chronicle}/relationships", headers=headers)).json()
    names = {n["id"]: n["name"] for n in graph["nodes"]}
    edges = {(names[e["from_id"]], names[e["to_id"]]) for e in graph["edges"]}
    assert ("Hesper Vane", "Doran Pike") in edges and ("Doran Pike", "Hesper Vane") not in edges
    characters = (
        await client.get(
            f"/api/chronicles/{story.chronicle}/entities", params={"kind": "character"}, headers=headers
        )
    ).json()["items"]
    hesper_id = next(c["id"] for c in characters if c["name"] == "Hesper Vane")
    for params in ({}, {"as_of_sequence": 11}):
        related = await client.get(
            f"/api/chronicles/{story.chronicle}/entities",
            params={"related_to": hesper_id, **params},
            headers=headers,
        )
        assert {e["name"] for e in related.json()["items"]} == {"Lisbet Crow"}, params
        view = (await client.get(f"/api/entities/{hesper_id}", params=params, headers=headers)).json()
        assert ("Doran Pike", "incoming") not in {
            (r["other"]["name"], r["direction"]) for r in view["relationships"]
        }


async def test_both_modes_list_relationships_in_the_same_order(client, story: Story) -> None:
    def order(bundle: dict) -> dict[str, list[tuple[str, str]]]:
        return {
            s["name"]: [(r["direction"], r["other"]) for r in s["relationships"]] for s in bundle["state"]
        }

    full, degraded = [
        await context(client, story, query="How do they feel about each other?",
                      focus=["Hesper Vane", "Lisbet Crow", "Doran Pike"], mode=mode)
        for mode in MODES
    ]  # fmt: skip
    assert order(full) == order(degraded)
    for relations in order(full).values():  # its own feelings first, then others', by name
        assert relations == sorted(relations, key=lambda r: (r[0] != "outgoing", r[1].casefold()))
    assert any(len(relations) > 1 for relations in order(full).values())
