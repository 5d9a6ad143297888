"""What lies at a place: things left there, not things someone there carries.

The Chapel Cache (written for these tests): Ilse carries the Reliquary, with the Bone Key inside
it, into the Chapel (2) and hides it behind the altar (3: handed to the place). Corvin comes in
with his Lantern and stays (4). A sexton sets the Silver Chalice on the altar (5: moved there).
Ilse burns the Letter in the Chapel (6: moved there, then destroyed). A Candle is left in the Crypt
(7). Father Amos takes the Chalice down to the Crypt, carrying it (8). Ilse takes the Lantern
(9: the hand-over does not name Corvin).
"""

from __future__ import annotations

import pytest

from tests.e2e.stories import PostedStory, post_story

MODES = ("full", "chronicle_only")


def _event(sequence: int, summary: str, actors: list[str], effects: list, location: str) -> dict:
    return {"external_id": f"cache-{sequence:03d}", "summary": summary, "location": location,
            "actors": [{"name": a} for a in actors], "effects": effects}  # fmt: skip


def _move(entity: str, to: str) -> dict:
    return {"op": "move", "entity": entity, "to": to}


def _transfer(item: str, to: str) -> dict:
    return {"op": "transfer", "item": item, "to": to}


STORY = [
    _event(1, "Evening in the village: Ilse, Corvin and Father Amos in the square.", [], [
        *({"op": "spawn", "entity": n, "kind": "location"} for n in ("Square", "Chapel", "Crypt")),
        *({"op": "spawn", "entity": n, "kind": "character"} for n in ("Ilse Marr", "Corvin Hale", "Father Amos")),
        *({"op": "spawn", "entity": n, "kind": "item"}
          for n in ("Reliquary", "Bone Key", "Lantern", "Silver Chalice", "Letter", "Candle")),
        *(_move(n, "Square") for n in ("Ilse Marr", "Corvin Hale", "Father Amos")),
        _transfer("Reliquary", "Ilse Marr"), _transfer("Bone Key", "Reliquary"), _transfer("Lantern", "Corvin Hale"),
        _move("Silver Chalice", "Square"), _move("Letter", "Square"),
    ], "Square"),
    _event(2, "Ilse carries the reliquary into the chapel.", ["Ilse Marr"], [_move("Ilse Marr", "Chapel")], "Chapel"),
    _event(3, "Ilse hides the reliquary behind the altar.", ["Ilse Marr"], [_transfer("Reliquary", "Chapel")],
           "Chapel"),
    _event(4, "Corvin comes in with his lantern and sits by the door.", ["Corvin Hale"],
           [_move("Corvin Hale", "Chapel")], "Chapel"),
    _event(5, "The sexton sets the silver chalice on the altar.", [], [_move("Silver Chalice", "Chapel")], "Chapel"),
    _event(6, "Ilse burns the letter in the chapel.", ["Ilse Marr"],
           [_move("Letter", "Chapel"), {"op": "destroy", "entity": "Letter"}], "Chapel"),
    _event(7, "A candle is left burning in the crypt.", [], [_move("Candle", "Crypt")], "Crypt"),
    _event(8, "Father Amos takes the chalice down to the crypt.", ["Father Amos"],
           [_transfer("Silver Chalice", "Father Amos"), _move("Father Amos", "Crypt")], "Crypt"),
    _event(9, "Ilse takes the lantern to look behind the altar.", ["Ilse Marr"], [_transfer("Lantern", "Ilse Marr")],
           "Chapel"),
]  # fmt: skip


@pytest.fixture(scope="module")
async def story(client, engine) -> PostedStory:
    return await post_story(client, engine, "The Chapel Cache", STORY)


@pytest.mark.parametrize("mode", MODES)
async def test_what_is_hidden_at_a_place_lists_the_things_left_there(
    client, story: PostedStory, mode
) -> None:
    bundle = await story.context(client, query="What is hidden in the Chapel?", mode=mode, format="both")
    assert bundle["mode"] == mode
    assert "possession" in bundle["manifest"]["facets"]
    # The key is inside the reliquary; Corvin's lantern is his; the letter is ash; the chalice went
    # to the crypt with Father Amos.
    assert bundle["manifest"]["lying_here"] == {"Chapel": ["Bone Key (in Reliquary)", "Reliquary"]}
    assert "- Lying here: Bone Key (in Reliquary), Reliquary\n" in bundle["text"]

    crypt = await story.context(client, query="What was left in the crypt?", mode=mode, format="both")
    assert crypt["manifest"]["lying_here"] == {"Crypt": ["Candle"]}  # the chalice is in Amos's hands

    compact = await story.context(
        client, query="What is hidden in the Chapel?", mode=mode, template="compact"
    )
    assert "Chapel.lying_here=Bone Key (in Reliquary), Reliquary\n" in compact["text"]


@pytest.mark.parametrize("mode", MODES)
async def test_what_lay_at_a_place_as_of_an_earlier_event(client, story: PostedStory, mode) -> None:
    before_amos = await story.context(client, query="What is in the Chapel?", mode=mode, as_of_sequence=7)
    assert before_amos["manifest"]["lying_here"] == {
        "Chapel": ["Bone Key (in Reliquary)", "Reliquary", "Silver Chalice"]
    }
    # Before Ilse hid it, the reliquary (and the key in it) was in her hands.
    carried = await story.context(client, query="What is in the Chapel?", mode=mode, as_of_sequence=2)
    assert carried["manifest"]["lying_here"] == {"Chapel": []}
    assert "- Lying here: nothing left here\n" in carried["text"]


async def test_who_is_at_a_place_does_not_list_things(client, story: PostedStory) -> None:
    bundle = await story.context(client, query="Who is in the chapel?", format="both")
    assert bundle["manifest"]["present"] == {"Chapel": ["Corvin Hale", "Ilse Marr"]}
    assert bundle["manifest"]["lying_here"] == {}
    # Only the place's own inventory (what was handed to it) is part of its state, as always: it
    # lies there, the chapel does not carry it.
    assert "- Present: Corvin Hale, Ilse Marr\n- Lying here: Reliquary (since #3)\n" in bundle["text"]
    assert "Carrying: Reliquary" not in bundle["text"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_thing_taken_without_naming_its_holder_leaves_the_holders_hands(
    client, story: PostedStory, mode
) -> None:
    bundle = await story.context(
        client, query="What is Corvin carrying?", focus=["Corvin Hale", "Ilse Marr"], mode=mode
    )
    inventories = {s["name"]: [i["value"] for i in s["inventory"]] for s in bundle["state"]}
    assert inventories == {"Corvin Hale": [], "Ilse Marr": ["Lantern"]}, mode
    # As of 8 the lantern was still Corvin's.
    before = await story.context(
        client, query="What is Corvin carrying?", focus=["Corvin Hale"], mode=mode, as_of_sequence=8
    )
    assert [i["value"] for i in before["state"][0]["inventory"]] == ["Lantern"], mode
