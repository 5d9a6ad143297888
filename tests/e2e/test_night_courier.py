"""A drive in a case that a courier carries, a death, a disappearance and a report entered late.

The Night Courier (written for these tests), story times on 2041-03-01: Jonas locks the Data
Drive into the Black Case at the Vault (2, 09:00); Quinn is lost on the Ice Field (3, 09:30);
Mara takes the case from the Vault while Jonas looks on (4, 10:00) and carries it to the Hangar
(5, 11:00); Jonas is shot in the Vault (6, 12:00); Mara searches the Ice Field, where Quinn lies
missing (7, 12:30), and finds him (8, 13:00: Quinn rescued, both to the Hangar); the medic looks
at Jonas's body (9, 14:00). Entered last (10) but dated 08:30: Jonas signed the drive out of
stores, with clearance 3. Then Mara leaves the case on the hangar workbench (11, 14:30); the
hangar comes to be called Bay Four (12); Mara is in Bay Four (13), at the dock (14) and back in
the Hangar (15).
"""

from __future__ import annotations

import uuid

import pytest

from ecs.state_source import ChronicleReplayStateSource
from tests.e2e.stories import PostedStory, post_story

DAY = "2041-03-01T"


def _event(sequence: int, at: str, summary: str, actors: list[str], effects: list, location: str) -> dict:
    return {"external_id": f"courier-{sequence:03d}", "occurred_at": f"{DAY}{at}:00Z", "summary": summary,
            "location": location, "actors": [{"name": a} for a in actors], "effects": effects}  # fmt: skip


def _move(entity: str, to: str) -> dict:
    return {"op": "move", "entity": entity, "to": to}


STORY = [
    _event(1, "08:00", "Night shift at the station: Mara, Jonas and Quinn at the dock.", [], [
        *({"op": "spawn", "entity": n, "kind": "location"} for n in ("Dock", "Vault", "Hangar", "Ice Field")),
        *({"op": "spawn", "entity": n, "kind": "character"} for n in ("Mara Okafor", "Jonas Reyes", "Quinn Adair")),
        *({"op": "spawn", "entity": n, "kind": "item"} for n in ("Black Case", "Data Drive")),
        *(_move(n, "Dock") for n in ("Mara Okafor", "Jonas Reyes", "Quinn Adair")),
        _move("Black Case", "Vault"),
        {"op": "transfer", "item": "Data Drive", "to": "Jonas Reyes"},
    ], "Dock"),
    _event(2, "09:00", "Jonas locks the drive into the black case in the vault.", ["Jonas Reyes"], [
        _move("Jonas Reyes", "Vault"), {"op": "transfer", "item": "Data Drive", "to": "Black Case"},
    ], "Vault"),
    _event(3, "09:30", "Quinn walks out onto the ice and does not come back.", ["Quinn Adair"], [
        _move("Quinn Adair", "Ice Field"), {"op": "status", "entity": "Quinn Adair", "status": "missing"},
    ], "Ice Field"),
    _event(4, "10:00", "Mara takes the black case from the vault while Jonas watches.", ["Mara Okafor"], [
        _move("Mara Okafor", "Vault"), {"op": "transfer", "item": "Black Case", "to": "Mara Okafor"},
    ], "Vault"),
    _event(5, "11:00", "Mara carries the case to the hangar.", ["Mara Okafor"], [_move("Mara Okafor", "Hangar")],
           "Hangar"),
    _event(6, "12:00", "Jonas is shot in the vault.", ["Jonas Reyes"], [
        {"op": "status", "entity": "Jonas Reyes", "status": "dead"},
    ], "Vault"),
    _event(7, "12:30", "Mara searches the ice field.", ["Mara Okafor"], [_move("Mara Okafor", "Ice Field")],
           "Ice Field"),
    _event(8, "13:00", "Mara finds Quinn half-frozen and brings him to the hangar.", ["Mara Okafor", "Quinn Adair"], [
        {"op": "status", "entity": "Quinn Adair", "status": "rescued"},
        _move("Quinn Adair", "Hangar"), _move("Mara Okafor", "Hangar"),
    ], "Ice Field"),
    _event(9, "14:00", "The medic examines Jonas's body in the vault.", ["Jonas Reyes"], [], "Vault"),
    _event(10, "08:30", "Station log, entered late: Jonas signed the drive out of stores.", ["Jonas Reyes"], [
        {"op": "set", "entity": "Jonas Reyes", "component": "Clearance", "value": {"level": 3}},
    ], "Dock"),
    _event(11, "14:30", "Mara leaves the black case on the hangar workbench.", ["Mara Okafor"], [
        {"op": "transfer", "item": "Black Case", "to": "Hangar"},
    ], "Hangar"),
    _event(12, "15:00", "The crew start calling the hangar Bay Four.", [], [
        {"op": "alias", "entity": "Hangar", "alias": "Bay Four"},
    ], "Hangar"),
    _event(13, "15:10", "Mara checks the seals in Bay Four.", ["Mara Okafor"], [_move("Mara Okafor", "Bay Four")],
           "Bay Four"),
    _event(14, "15:20", "Mara walks down to the dock.", ["Mara Okafor"], [_move("Mara Okafor", "Dock")], "Dock"),
    _event(15, "15:40", "Mara goes back to the hangar.", ["Mara Okafor"], [_move("Mara Okafor", "Hangar")],
           "Hangar"),
]  # fmt: skip

MODES = ("full", "chronicle_only")


@pytest.fixture(scope="module")
async def story(client, engine) -> PostedStory:
    return await post_story(client, engine, "The Night Courier", STORY)


def state_of(bundle: dict, name: str) -> dict:
    [state] = [s for s in bundle["state"] if s["name"] == name]
    return state


@pytest.mark.parametrize("mode", MODES)
async def test_a_drive_in_a_carried_case_is_where_the_courier_is(client, story: PostedStory, mode) -> None:
    bundle = await story.context(
        client, query="Where is the data drive?", mode=mode, format="both", as_of_sequence=10
    )
    drive = state_of(bundle, "Data Drive")
    assert drive["holder"]["value"] == "Black Case"
    assert drive["carried_by"] == ["Mara Okafor"]
    # In the case, which Mara carried to the Hangar at 5, out to the Ice Field at 7 and back at 8.
    assert (drive["location"]["value"], drive["location"]["sequence"]) == ("Hangar", 8), mode
    assert "- Held by: Black Case (since #2), itself held by Mara Okafor\n" in bundle["text"]
    for template, line in (("compact", "held_by=Black Case #2 < Mara Okafor\n"),
                           ("roleplay", "held by Black Case, itself held by Mara Okafor")):  # fmt: skip
        rendered = await story.context(
            client,
            query="Where is the data drive?",
            mode=mode,
            format="both",
            as_of_sequence=10,
            template=template,
        )
        assert line in rendered["text"], (template, rendered["text"])


@pytest.mark.parametrize("mode", MODES)
async def test_a_thing_left_at_a_place_lies_there_held_by_no_one(client, story: PostedStory, mode) -> None:
    bundle = await story.context(client, query="Where are the data drive and the black case?", mode=mode,
                                 format="both")  # fmt: skip
    case, drive = state_of(bundle, "Black Case"), state_of(bundle, "Data Drive")
    assert (case["location"]["value"], case["location"]["sequence"], case["holder"]) == ("Hangar", 11, None)
    assert drive["holder"]["value"] == "Black Case" and drive["carried_by"] == []
    assert (drive["location"]["value"], drive["location"]["sequence"]) == ("Hangar", 11), mode
    assert "Held by: Hangar" not in bundle["text"]


async def test_the_entity_view_names_who_carries_the_holder(client, story: PostedStory) -> None:
    response = await client.get(
        f"/api/chronicles/{story.chronicle}/entities", params={"kind": "item"}, headers=story.tenant.headers
    )
    [drive] = [e for e in response.json()["items"] if e["name"] == "Data Drive"]
    for params in ({"as_of_sequence": 10}, {"as_of_sequence": 6}):  # replayed
        view = (
            await client.get(f"/api/entities/{drive['id']}", params=params, headers=story.tenant.headers)
        ).json()
        assert view["holder"]["name"] == "Black Case"
        assert [c["name"] for c in view["carried_by"]] == ["Mara Okafor"], params
        assert view["location"]["name"] == "Hangar"


@pytest.mark.parametrize(
    ("entity", "at", "expected"),
    [
        # Before the late report's 08:30 only the first event had happened.
        ("Jonas Reyes", "08:15", {"location": "Dock", "status": None, "clearance": None}),
        # The late report (recorded last) had happened by 08:45; nothing recorded after it had.
        ("Jonas Reyes", "08:45", {"location": "Dock", "status": None, "clearance": {"level": 3}}),
        ("Jonas Reyes", "11:30", {"location": "Vault", "status": None, "clearance": {"level": 3}}),
        ("Jonas Reyes", "12:05", {"location": "Vault", "status": "dead", "clearance": {"level": 3}}),
        ("Quinn Adair", "10:30", {"location": "Ice Field", "status": "missing", "clearance": None}),
    ],
)
async def test_state_at_a_story_time_leaves_out_what_happens_later(
    client, story: PostedStory, entity, at, expected
) -> None:
    answer = await story.query(client, type="state_as_of", entity=entity, occurred_at=f"{DAY}{at}:00Z")
    state = answer["state"]
    got = {
        "location": state["location"]["value"] if state["location"] else None,
        "status": state["status"]["value"] if state["status"] else None,
        "clearance": state["components"].get("clearance", {}).get("value"),
    }
    assert got == expected
    if at == "08:45":
        # Recorded last, happened second: every other event recorded before it happens later.
        assert answer["sequence"] == 10
        assert answer["later_in_story"] == [2, 3, 4, 5, 6, 7, 8, 9]
        assert answer["event"]["sequence"] == 10


async def test_the_dead_and_the_missing_witness_nothing(client, story: PostedStory) -> None:
    def seen(bundle: dict) -> set[int]:
        return {h["sequence"] for h in bundle["history"] + bundle["recent"]}

    jonas = await story.context(client, query="What happened in the vault?", pov="Jonas", max_tokens=4000)
    assert {2, 4, 6} <= seen(jonas)  # his own, the one he watched, his death
    assert 9 not in seen(jonas)  # his body examined: named, but dead
    quinn = await story.context(client, query="What happened on the ice?", pov="Quinn", max_tokens=4000)
    assert {3, 8} <= seen(quinn)  # lost, then found: he takes part in both
    assert 7 not in seen(quinn)  # Mara searching the Ice Field while he lay there missing


async def test_a_witness_sees_what_happens_at_its_place_under_any_name_of_it(
    client, story: PostedStory
) -> None:
    quinn = await story.context(client, query="What happened in the hangar?", pov="Quinn", max_tokens=4000)
    seen = {h["sequence"] for h in quinn["history"] + quinn["recent"]}
    # Brought to the Hangar at 8, he stays there: Bay Four (13) is the Hangar, the Dock (14) is not.
    assert {11, 12, 13, 15} <= seen
    assert 14 not in seen


async def test_a_hybrid_question_takes_a_first_name_from_ecs(client, story: PostedStory) -> None:
    for reference in ("Jonas", "jonas", "Jonas Reyes"):
        fate = await story.query(client, type="entity_fate", entity=reference)
        assert fate["answered_from"] == "ecs", reference
        assert fate["unavailable"] == []
        assert fate["entity"]["name"] == "Jonas Reyes" and fate["entity"]["id"] is not None
        assert fate["dead"] is True
    present = await story.query(client, type="present_at", location="hangar", toward="Quinn")
    assert present["answered_from"] == "ecs"
    assert present["toward"]["name"] == "Quinn Adair" and present["toward"]["id"] is not None
    # Quinn is there too, but the question is how the others there stand toward him.
    assert {m["entity"]["name"] for m in present["present"]} == {"Mara Okafor"}
    everyone = await story.query(client, type="present_at", location="hangar")
    assert {m["entity"]["name"] for m in everyone["present"]} == {"Mara Okafor", "Quinn Adair"}


async def test_an_event_is_found_by_its_sequence_as_the_templates_print_it(
    client, story: PostedStory
) -> None:
    for reference in ("#4", "4", "courier-004"):
        answer = await story.query(client, type="event_participants", event=reference)
        assert answer["event"]["sequence"] == 4, reference
        roles = {p["entity"]["name"]: p["roles"] for p in answer["participants"]}
        assert roles["Jonas Reyes"] == ["present"]  # he watched
    missing = await story.post(client, "query", {"type": "event_participants", "event": "#99"})
    assert missing.status_code == 404


async def test_a_focus_entry_may_start_with_an_article(client, story: PostedStory) -> None:
    bundle = await story.context(client, query="What is in it?", focus=["the case"], format="json")
    assert [f["name"] for f in bundle["focus"]] == ["Black Case"]
    assert bundle["manifest"].get("unresolved_focus", []) == []


@pytest.mark.parametrize("mode", MODES)
async def test_a_place_named_by_its_alias_is_the_same_place(client, story: PostedStory, mode) -> None:
    bundle = await story.context(client, query="What happened in #13 and #14?", mode=mode, focus=["Mara"])
    items = {h["sequence"]: h for h in bundle["history"] + bundle["recent"]}
    assert (items[13]["superseded"], items[13]["superseded_note"]) == (False, None)  # Bay Four is the Hangar
    assert items[14]["superseded_note"] == "earlier: Mara Okafor at Dock; now: Mara Okafor at Hangar"


async def test_the_degraded_replay_windows_each_holder_on_its_own(engine, story: PostedStory) -> None:
    """Three events per entity: Mara's own (5, 7, 8) must not push out the drive's (1, 2)."""
    source = ChronicleReplayStateSource(
        engine, story.tenant.id, uuid.UUID(story.chronicle), events_per_entity=3, chronicle_sequence=10
    )
    [drive] = await source.entity_states(["data drive"], as_of_sequence=10)
    assert drive.holder is not None and drive.holder.value == "Black Case"
    assert drive.carried_by == ["Mara Okafor"]
    assert drive.location is not None and (drive.location.value, drive.location.sequence) == ("Hangar", 8)


@pytest.mark.parametrize("mode", MODES)
async def test_a_past_state_knows_only_the_names_given_by_then(client, story: PostedStory, mode) -> None:
    before = await story.context(client, query="Who is in the hangar?", mode=mode, as_of_sequence=11)
    assert state_of(before, "Hangar")["aliases"] == [], mode  # "Bay Four" comes at 12
    after = await story.context(client, query="Who is in the hangar?", mode=mode, as_of_sequence=12)
    assert state_of(after, "Hangar")["aliases"] == ["Bay Four"], mode
