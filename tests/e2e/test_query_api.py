"""Hybrid questions (`POST /api/chronicles/{id}/query`) on the sample story, against its ground truth.

The Salt Road: Bram dies at sequence 15 in the Lantern Cellar, stabbed by the Magpie (Corvin's
alias). The Silver Key goes Bram -> Corvin (7, a theft) -> Tamsin (16) -> Elara (18); the Salt
Ledger Bram -> the Magpie (13) -> Tamsin (22) -> Oswin (24) -> Elara (30). Oswin's trust in
Corvin: +0.3 (3), +0.2 (11), -0.8 (17, the betrayal), -0.5 (21) = -0.8. At the end Elara and
Corvin (imprisoned) are at Saltcrag Keep, Tamsin and Maud at the Lantern Inn, Oswin at Brinewell
Market. The degraded-mode tests call `ecs.hybrid` directly with an ECS engine that cannot connect.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec
import pytest

from app.cli import load_sample_story
from app.database import create_engine
from ecs import hybrid
from ecs.projector import Projector
from tests.conftest import Tenant, make_tenant

PROBLEM = "application/problem+json"


@dataclass
class Story:
    tenant: Tenant
    chronicle: str
    events: list[dict]

    def event_id(self, sequence: int) -> str:
        return self.events[sequence - 1]["id"]


@pytest.fixture(scope="module")
async def story(client, engine) -> Story:
    tenant = await make_tenant(engine)
    response = await client.post("/api/chronicles", json={"title": "The Salt Road"}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    chronicle = response.json()["id"]
    events = [msgspec.to_builtins(e) for e in load_sample_story()]
    response = await client.post(
        f"/api/chronicles/{chronicle}/events", json={"events": events}, headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    await Projector(engine, engine).catch_up(uuid.UUID(chronicle))
    stored = (
        await client.get(f"/api/chronicles/{chronicle}/events", params={"limit": 100}, headers=tenant.headers)
    ).json()["items"]
    assert [e["sequence"] for e in stored] == list(range(1, 41))
    return Story(tenant, chronicle, stored)


async def ask(client, story: Story, **body) -> dict:
    response = await client.post(
        f"/api/chronicles/{story.chronicle}/query", json=body, headers=story.tenant.headers
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == body["type"]
    return result


async def ask_status(client, story: Story, body: dict, headers: dict | None = None):
    return await client.post(
        f"/api/chronicles/{story.chronicle}/query", json=body, headers=headers or story.tenant.headers
    )


def names(refs: list[dict | None]) -> list[str | None]:
    return [None if r is None else r["name"] for r in refs]


def change(c: dict) -> tuple:
    return (
        c["what"],
        (c.get("other") or {}).get("name"),
        (c.get("counterpart") or {}).get("name"),
        c.get("value"),
    )


# ------------------------------------------------------------------------------------------------
# entity_fate


async def test_fate_of_bram_dead_in_the_cellar(client, story: Story) -> None:
    fate = await ask(client, story, type="entity_fate", entity="bram")
    assert fate["answered_from"] == "ecs"
    assert fate["unavailable"] == []
    assert fate["entity"]["name"] == "Bram"
    assert fate["entity"]["id"]
    assert fate["dead"] is True
    current = fate["current"]
    assert current["location"] == {"value": "Lantern Cellar", "sequence": 14, "event_id": story.event_id(14)}
    assert current["status"] == {"value": "dead", "sequence": 15, "event_id": story.event_id(15)}
    assert current["holder"] is None
    assert current["inventory"] == []
    assert fate["death"]["sequence"] == 15
    assert fate["death"]["event_id"] == story.event_id(15)
    assert fate["death"]["external_id"] == "salt-road-015"
    assert "knife finds Bram's ribs" in fate["death"]["summary"]
    timeline = {e["event"]["sequence"]: [change(c) for c in e["changes"]] for e in fate["events"]}
    assert timeline == {
        1: [("received", "Salt Ledger", None, None), ("received", "Silver Key", None, None)],
        4: [("moved", "Lantern Inn", None, None)],
        7: [("lost", "Silver Key", "Corvin", None)],  # the theft
        13: [("lost", "Salt Ledger", "Corvin", None)],  # the burglary, by the Magpie (Corvin)
        14: [("moved", "Lantern Cellar", None, None)],
        15: [("died", None, None, "dead")],
    }
    assert [e["event"]["event_id"] for e in fate["events"]] == [story.event_id(s) for s in timeline]


async def test_fate_by_alias_and_of_an_item(client, story: Story) -> None:
    magpie = await ask(client, story, type="entity_fate", entity="THE MAGPIE")
    assert magpie["entity"]["name"] == "Corvin"
    assert magpie["dead"] is False
    assert magpie["death"] is None
    assert magpie["current"]["status"]["value"] == "imprisoned"
    assert magpie["current"]["status"]["sequence"] == 29
    assert magpie["current"]["location"]["value"] == "Saltcrag Keep"
    timeline = {e["event"]["sequence"]: [change(c) for c in e["changes"]] for e in magpie["events"]}
    assert timeline[7] == [("received", "Silver Key", "Bram", None)]
    assert timeline[16] == [("lost", "Silver Key", "Tamsin", None), ("moved", "Greywind Pass", None, None)]
    assert timeline[22] == [("lost", "Salt Ledger", "Tamsin", None), ("status", None, None, "captured")]
    assert timeline[29] == [("status", None, None, "imprisoned"), ("component_removed", None, None, "bounty")]

    key = await ask(client, story, type="entity_fate", entity="Silver Key")
    assert key["current"]["holder"] == {"value": "Elara", "sequence": 18, "event_id": story.event_id(18)}
    assert key["current"]["location"]["value"] == "Saltcrag Keep"  # where its holder is
    held = [(e["event"]["sequence"], c["other"]["name"]) for e in key["events"] for c in e["changes"]
            if c["what"] == "held_by"]  # fmt: skip
    assert held == [(1, "Bram"), (7, "Corvin"), (16, "Tamsin"), (18, "Elara")]


# ------------------------------------------------------------------------------------------------
# event_participants


async def test_participants_of_the_murder(client, story: Story) -> None:
    result = await ask(client, story, type="event_participants", event="salt-road-015")
    assert result["answered_from"] == "ecs"
    assert result["unavailable"] == []
    assert result["event"]["event_id"] == story.event_id(15)
    assert result["event"]["kind"] == "death"
    assert result["location"]["name"] == "Lantern Cellar"
    assert [(p["entity"]["name"], p["roles"], p["status"], p["dead"]) for p in result["participants"]] == [
        ("Corvin", ["actor:agent"], None, False),  # named "the Magpie" in the event
        ("Bram", ["actor:patient"], "dead", True),
    ]
    assert result["standing"] == []  # neither ever felt anything recorded toward the other
    by_id = await ask(client, story, type="event_participants", event=story.event_id(15))
    assert by_id == result


async def test_participants_include_who_was_present_and_how_they_stand_now(client, story: Story) -> None:
    result = await ask(client, story, type="event_participants", event="salt-road-017")
    assert [(p["entity"]["name"], p["roles"], p["dead"]) for p in result["participants"]] == [
        ("Elara", ["actor:agent"], False),
        ("Oswin", ["actor:witness"], False),
        ("Maud", ["actor:agent"], False),
        ("Tamsin", ["actor:witness"], False),
        ("Bram", ["present"], True),  # not an actor: lying dead in the cellar since event 15
    ]
    standing = {
        (s["from"]["name"], s["to"]["name"]): (
            s["types"],
            {k: (v["value"], v["sequence"]) for k, v in s["valence"].items()},
        )
        for s in result["standing"]
    }
    assert standing == {
        ("Elara", "Oswin"): (["sworn_ally"], {"trust": (pytest.approx(0.8), 30)}),
        ("Elara", "Maud"): ([], {"trust": (pytest.approx(0.5), 23)}),
        ("Elara", "Tamsin"): ([], {"trust": (pytest.approx(0.7), 20)}),
        ("Oswin", "Elara"): (["sworn_ally"], {"trust": (pytest.approx(0.5), 30)}),
        ("Oswin", "Maud"): ([], {"trust": (pytest.approx(0.5), 10)}),
        ("Maud", "Oswin"): ([], {"trust": (pytest.approx(0.2), 37)}),
        ("Tamsin", "Elara"): ([], {"trust": (pytest.approx(0.4), 18)}),
        ("Tamsin", "Oswin"): (["apprentice_of"], {}),
        ("Bram", "Oswin"): ([], {"trust": (pytest.approx(0.3), 6)}),
    }
    elara_oswin = next(
        s for s in result["standing"] if (s["from"]["name"], s["to"]["name"]) == ("Elara", "Oswin")
    )
    assert elara_oswin["valence"]["trust"]["event_id"] == story.event_id(30)
    fear = await ask(client, story, type="event_participants", event="salt-road-017", dimension="FEAR")
    assert all(s["valence"] == {} for s in fear["standing"])


# ------------------------------------------------------------------------------------------------
# present_at


async def test_present_at_the_keep(client, story: Story) -> None:
    result = await ask(client, story, type="present_at", location="saltcrag keep")
    assert result["answered_from"] == "ecs"
    assert result["location"]["name"] == "Saltcrag Keep"
    present = {m["entity"]["name"]: m for m in result["present"]}
    assert set(present) == {"Elara", "Corvin"}
    assert present["Corvin"]["status"] == "imprisoned"
    assert present["Corvin"]["dead"] is False
    assert present["Elara"]["since"] == {"sequence": 28, "event_id": story.event_id(28)}
    assert all(m["valence"] is None for m in result["present"])

    inn = await ask(client, story, type="present_at", location="Lantern Inn")
    assert {m["entity"]["name"] for m in inn["present"]} == {"Tamsin", "Maud"}
    market = await ask(client, story, type="present_at", location="Brinewell Market")
    assert [m["entity"]["name"] for m in market["present"]] == ["Oswin"]
    cellar = await ask(client, story, type="present_at", location="Lantern Cellar")
    assert [(m["entity"]["name"], m["dead"], m["status"]) for m in cellar["present"]] == [
        ("Bram", True, "dead")
    ]
    items = await ask(client, story, type="present_at", location="Saltcrag Keep", kind=None)
    assert {m["entity"]["name"] for m in items["present"]} == {
        "Elara", "Corvin", "Silver Key", "Salt Ledger", "Oathblade"
    }  # fmt: skip


async def test_present_at_with_valence_toward_someone(client, story: Story) -> None:
    # Elara trusts Oswin 0.8; Corvin feels nothing recorded toward him
    keep = await ask(client, story, type="present_at", location="Saltcrag Keep", toward="Oswin",
                     dimension="trust", min=0.5)  # fmt: skip
    assert [m["entity"]["name"] for m in keep["present"]] == ["Elara"]
    assert keep["present"][0]["valence"]["value"] == pytest.approx(0.8)
    assert keep["present"][0]["valence"]["sequence"] == 30
    assert keep["toward"]["name"] == "Oswin"
    assert keep["dimension"] == "trust"
    # nobody at the keep trusts Elara above 0.5 (Corvin has no feeling toward her; she none to herself)
    elara = await ask(client, story, type="present_at", location="Saltcrag Keep", toward="Elara", min=0.5)
    assert elara["present"] == []
    # at the inn: Tamsin trusts Elara 0.4 (event 18); Maud has no recorded trust toward her
    inn = await ask(client, story, type="present_at", location="Lantern Inn", toward="Elara")
    assert {m["entity"]["name"]: (m["valence"] or {}).get("value") for m in inn["present"]} == {
        "Tamsin": pytest.approx(0.4), "Maud": None
    }  # fmt: skip
    above = await ask(client, story, type="present_at", location="Lantern Inn", toward="Elara", min=0.3)
    assert [m["entity"]["name"] for m in above["present"]] == ["Tamsin"]
    assert above["present"][0]["valence"]["event_id"] == story.event_id(18)
    below = await ask(client, story, type="present_at", location="Lantern Inn", toward="Elara", max=0.3)
    assert below["present"] == []
    # bounds are exclusive: Oswin's trust in Elara is exactly 0.5
    market = await ask(client, story, type="present_at", location="Brinewell Market", toward="Elara", min=0.5)
    assert market["present"] == []
    market = await ask(
        client, story, type="present_at", location="Brinewell Market", toward="Elara", min=0.49
    )
    assert [m["entity"]["name"] for m in market["present"]] == ["Oswin"]


# ------------------------------------------------------------------------------------------------
# relationship_history


async def test_relationship_history_of_oswin_toward_corvin(client, story: Story) -> None:
    result = await ask(client, story, type="relationship_history", a="Oswin", b="Corvin", dimension="trust")
    assert result["answered_from"] == "ecs"
    assert result["from"]["name"] == "Oswin"
    assert result["to"]["name"] == "Corvin"
    changes = result["changes"]
    assert [c["sequence"] for c in changes] == [3, 11, 17, 21]
    assert [c["event_id"] for c in changes] == [story.event_id(s) for s in (3, 11, 17, 21)]
    assert [c["delta"] for c in changes] == pytest.approx([0.3, 0.2, -0.8, -0.5])
    assert [c["previous"] for c in changes] == pytest.approx([0.0, 0.3, 0.5, -0.3])
    assert [c["value"] for c in changes] == pytest.approx([0.3, 0.5, -0.3, -0.8])
    assert {c["dimension"] for c in changes} == {"trust"}
    assert changes[2]["kind"] == "discovery"
    assert "empty chest" in changes[2]["summary"]
    assert changes[2]["external_id"] == "salt-road-017"
    assert result["current"] == {
        "trust": {"value": pytest.approx(-0.8), "sequence": 21, "event_id": story.event_id(21)}
    }
    # ids, aliases and case; no dimension given means all of them (only trust here)
    same = await ask(client, story, type="relationship_history", a=result["from"]["id"], b="the magpie")
    assert same == result
    reverse = await ask(client, story, type="relationship_history", a="Corvin", b="Oswin")
    assert reverse["changes"] == []
    assert reverse["current"] == {}
    elara = await ask(client, story, type="relationship_history", a="Elara", b="Oswin")
    assert [c["sequence"] for c in elara["changes"]] == [8, 12, 28, 30]
    assert elara["current"]["trust"]["value"] == pytest.approx(0.8)


async def test_relationship_history_has_the_relation_types_set_and_removed(
    client, story: Story, degraded
) -> None:
    """Oswin employs Corvin from 3 until the betrayal is found out at 18; Elara and Oswin are sworn at 12."""
    result = await ask(client, story, type="relationship_history", a="Oswin", b="Corvin")
    changes = [(c["sequence"], c["type"], c["change"]) for c in result["type_changes"]]
    assert changes == [(3, "employs", "related"), (18, "employs", "unrelated")]
    assert [c["event_id"] for c in result["type_changes"]] == [story.event_id(3), story.event_id(18)]
    assert result["current_types"] == []
    sworn = await ask(client, story, type="relationship_history", a="Elara", b="Oswin")
    assert [(c["sequence"], c["type"], c["change"]) for c in sworn["type_changes"]] == [
        (12, "sworn_ally", "related")
    ]
    assert sworn["current_types"] == ["sworn_ally"]
    # What the relate said of the relation comes with it.
    assert result["type_changes"][0]["data"] == {"wage": "one tenth of the salt"}
    assert result["type_changes"][1]["data"] is None
    assert sworn["current_type_data"] == {"sworn_ally": {"sworn_at": "Lantern Inn"}}
    replayed = await hybrid.answer(degraded, hybrid.RelationshipHistoryQuery(a="Oswin", b="Corvin"))
    assert isinstance(replayed, hybrid.RelationshipHistoryResult)
    assert [(c.sequence, c.type, c.change) for c in replayed.type_changes] == changes
    assert replayed.type_changes[0].data == {"wage": "one tenth of the salt"}
    assert replayed.current_types == []
    replayed_sworn = await hybrid.answer(degraded, hybrid.RelationshipHistoryQuery(a="Elara", b="Oswin"))
    assert isinstance(replayed_sworn, hybrid.RelationshipHistoryResult)
    assert replayed_sworn.current_type_data == {"sworn_ally": {"sworn_at": "Lantern Inn"}}


@pytest.mark.parametrize("mode", ["full", "chronicle_only"])
async def test_a_bundle_says_what_a_relate_said_of_the_relation(client, story: Story, mode) -> None:
    response = await client.post(
        f"/api/chronicles/{story.chronicle}/context",
        json={"query": "Is Oswin sworn to Elara?", "mode": mode, "format": "json"}, headers=story.tenant.headers,
    )  # fmt: skip
    [oswin] = [s for s in response.json()["state"] if s["name"] == "Oswin"]
    [to_elara] = [r for r in oswin["relationships"] if r["other"] == "Elara" and r["direction"] == "outgoing"]
    assert to_elara["types"] == ["sworn_ally"]
    assert to_elara["type_data"] == {"sworn_ally": {"sworn_at": "Lantern Inn"}}


# ------------------------------------------------------------------------------------------------
# item_interactions


async def test_silver_key_holders_in_order(client, story: Story) -> None:
    result = await ask(client, story, type="item_interactions", item="silver key")
    assert result["answered_from"] == "ecs"
    assert result["item"]["name"] == "Silver Key"
    holders = result["holders"]
    assert names([h["holder"] for h in holders]) == ["Bram", "Corvin", "Tamsin", "Elara"]
    assert names([h["previous"] for h in holders]) == [None, "Bram", "Corvin", "Tamsin"]
    assert [h["event"]["sequence"] for h in holders] == [1, 7, 16, 18]
    assert [h["event"]["event_id"] for h in holders] == [story.event_id(s) for s in (1, 7, 16, 18)]
    theft = holders[1]
    assert theft["event"]["kind"] == "theft"
    assert {p["entity"]["name"]: p["roles"] for p in theft["participants"]} == {
        "Corvin": ["actor:agent", "transfer:to"],
        "Bram": ["actor:patient", "transfer:from"],
        "Maud": ["actor:witness"],
    }
    assert result["events"] == []  # every event naming the key moved it


async def test_ledger_and_draught(client, story: Story) -> None:
    ledger = await ask(client, story, type="item_interactions", item="Salt Ledger")
    assert [(h["holder"]["name"], h["event"]["sequence"]) for h in ledger["holders"]] == [
        ("Bram", 1), ("Corvin", 13), ("Tamsin", 22), ("Oswin", 24), ("Elara", 30)
    ]  # fmt: skip
    draught = await ask(client, story, type="item_interactions", item="Healing Draught")
    # Drunk to the dregs at 23 (destroyed in Maud's hand): held by no one since.
    assert [((h["holder"] or {}).get("name"), h["event"]["sequence"]) for h in draught["holders"]] == [
        ("Maud", 2), (None, 23)
    ]  # fmt: skip
    used = {e["event"]["sequence"]: e for e in draught["events"]}
    assert sorted(used) == [1, 23]  # spawned in the setup; drunk by Elara in event 23
    assert used[23]["roles"] == ["destroy"]
    assert {p["entity"]["name"]: p["roles"] for p in used[23]["participants"]} == {
        "Maud": ["actor:agent"],
        "Elara": ["actor:patient"],
    }


# ------------------------------------------------------------------------------------------------
# state_as_of


async def test_state_as_of_a_sequence_and_a_story_time(client, story: Story) -> None:
    at_13 = await ask(client, story, type="state_as_of", entity="Bram", sequence=13)
    assert at_13["answered_from"] == "chronicle"
    assert at_13["sequence"] == 13
    assert at_13["event"]["event_id"] == story.event_id(13)
    assert at_13["state"]["location"] == {
        "value": "Lantern Inn",
        "sequence": 4,
        "event_id": story.event_id(4),
    }
    assert at_13["state"]["status"] is None
    assert at_13["state"]["inventory"] == []  # both items were taken by then

    event_16 = story.events[15]
    at_16 = await ask(client, story, type="state_as_of", entity="Bram", occurred_at=event_16["occurred_at"])
    assert at_16["sequence"] == 16
    assert at_16["event"]["external_id"] == "salt-road-016"
    assert at_16["state"]["location"]["value"] == "Lantern Cellar"
    assert at_16["state"]["status"] == {"value": "dead", "sequence": 15, "event_id": story.event_id(15)}
    # a minute before the murder he was alive, already down in the cellar
    before = await ask(client, story, type="state_as_of", entity="Bram", occurred_at="2025-11-04T20:04:00Z")
    assert before["sequence"] == 14
    assert before["state"]["status"] is None
    assert before["state"]["location"]["value"] == "Lantern Cellar"

    # the ECS id and today's alias find the entity in the past, before the alias existed
    magpie = await ask(client, story, type="state_as_of", entity="the Magpie", sequence=5)
    assert magpie["entity"]["name"] == "Corvin"
    assert magpie["state"]["location"]["value"] == "Lantern Inn"
    assert magpie["state"]["aliases"] == []
    # before it was first mentioned it did not exist
    early = await ask(client, story, type="state_as_of", entity="Corvin", sequence=2)
    assert early["state"] is None
    assert early["entity"]["name"] == "Corvin"
    nothing = await ask(
        client, story, type="state_as_of", entity="Bram", occurred_at="2020-01-01T00:00:00+00:00"
    )
    assert (nothing["sequence"], nothing["event"], nothing["state"]) == (0, None, None)


# ------------------------------------------------------------------------------------------------
# Errors and isolation


@pytest.mark.parametrize(
    ("ref", "detail"),
    [
        ("Golden Key", "no entity 'Golden Key' in this chronicle; did you mean 'Silver Key'?"),
        (
            "the Lantern",
            "no entity 'the Lantern' in this chronicle; did you mean 'Lantern Cellar', 'Lantern Inn'?",
        ),
        ("Nobody", "no entity 'Nobody' in this chronicle"),
    ],
)
async def test_an_unknown_name_suggests_the_names_sharing_a_word(client, story: Story, ref, detail) -> None:
    response = await ask_status(client, story, {"type": "entity_fate", "entity": ref})
    assert response.status_code == 404, response.text
    assert response.json()["detail"] == f"entity: {detail}"


async def test_words_of_one_name_mean_that_entity(client, story: Story) -> None:
    """As in context questions: "Ledger" is the Salt Ledger, the only entity with that word."""
    fate = await ask(client, story, type="entity_fate", entity="the ledger")
    assert fate["entity"]["name"] == "Salt Ledger"
    key = await ask(client, story, type="item_interactions", item="key")
    assert key["item"]["name"] == "Silver Key"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "entity_fate", "entity": "Nobody"}, "entity"),
        ({"type": "event_participants", "event": "salt-road-999"}, "event"),
        ({"type": "event_participants", "event": str(uuid.uuid4())}, "event"),
        ({"type": "present_at", "location": "Atlantis"}, "location"),
        ({"type": "present_at", "location": "Saltcrag Keep", "toward": "Nobody"}, "toward"),
        ({"type": "relationship_history", "a": "Oswin", "b": "Nobody"}, "b"),
        ({"type": "relationship_history", "a": "Nobody", "b": "Oswin"}, "a"),
        ({"type": "item_interactions", "item": "Golden Key"}, "item"),
        ({"type": "state_as_of", "entity": str(uuid.uuid4()), "sequence": 3}, "entity"),
    ],
)
async def test_unknown_references_are_404_naming_the_field(client, story: Story, body, field) -> None:
    response = await ask_status(client, story, body)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["errors"][0]["field"] == field
    assert problem["detail"].startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "nonsense", "entity": "Bram"}, "type"),
        ({"entity": "Bram"}, "type"),
        ({"type": "entity_fate"}, "entity"),
        ({"type": "entity_fate", "entity": ""}, "entity"),
        ({"type": "entity_fate", "entity": "Bram", "extra": 1}, "extra"),
        ({"type": "present_at", "location": "Lantern Inn", "min": 0.3}, "min"),
        ({"type": "present_at", "location": "Lantern Inn", "toward": "Elara", "min": 2}, "min"),
        ({"type": "present_at", "location": "Lantern Inn", "toward": "Elara", "min": 0.5, "max": 0.1}, "max"),
        ({"type": "present_at", "location": "Oswin"}, "location"),  # a character is not a place
        ({"type": "state_as_of", "entity": "Bram"}, "sequence"),
        ({"type": "state_as_of", "entity": "Bram", "sequence": 3, "occurred_at": "2025-11-04T22:00:00Z"},
         "occurred_at"),
        ({"type": "state_as_of", "entity": "Bram", "sequence": -1}, "sequence"),
        ({"type": "state_as_of", "entity": "Bram", "sequence": 41}, "sequence"),  # 40 events so far
        ({"type": "state_as_of", "entity": "Bram", "occurred_at": "2025-11-04T22:00:00"}, "occurred_at"),
    ],
)  # fmt: skip
async def test_invalid_bodies_are_422_naming_the_field(client, story: Story, body, field) -> None:
    response = await ask_status(client, story, body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"].endswith("/invalid-request")
    [error] = problem["errors"]
    # msgspec reports missing and unknown fields at the object; the error names the field itself
    assert error["field"] == field, error


async def test_malformed_json_is_400(client, story: Story) -> None:
    response = await client.post(
        f"/api/chronicles/{story.chronicle}/query", content=b"{not json",
        headers=story.tenant.headers | {"content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 400


async def test_tenant_isolation(client, story: Story, other_tenant: Tenant) -> None:
    for body in (
        {"type": "entity_fate", "entity": "Bram"},
        {"type": "state_as_of", "entity": "Bram", "sequence": 3},
    ):
        response = await ask_status(client, story, body, headers=other_tenant.headers)
        assert response.status_code == 404
        assert "chronicle" in response.json()["detail"]
    theirs = (
        await client.post("/api/chronicles", json={"title": "other"}, headers=other_tenant.headers)
    ).json()
    await client.post(f"/api/chronicles/{theirs['id']}/events",
                      json={"events": [{"summary": "A quiet day at the mill.", "actors": ["Nell"]}]},
                      headers=other_tenant.headers)  # fmt: skip
    bram = (await ask(client, story, type="entity_fate", entity="Bram"))["entity"]["id"]
    for ref in ("Bram", bram):
        body = {"type": "entity_fate", "entity": ref}
        response = await client.post(
            f"/api/chronicles/{theirs['id']}/query", json=body, headers=other_tenant.headers
        )
        assert response.status_code == 404, response.text
        assert response.json()["errors"][0]["field"] == "entity"
    response = await client.post(f"/api/chronicles/{story.chronicle}/query",
                                 json={"type": "entity_fate", "entity": "Bram"})  # fmt: skip
    assert response.status_code == 401


async def test_openapi_documents_the_route(client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    operation = schema["paths"]["/api/chronicles/{chronicle_id}/query"]["post"]
    assert "entity_fate" in operation["description"]


# ------------------------------------------------------------------------------------------------
# Degraded mode: ECS unreachable


@pytest.fixture
async def degraded(engine, story: Story):
    """The hybrid functions with a chronicle engine that works and an ECS engine that cannot connect."""
    dead = create_engine("postgresql+asyncpg://lore:lore@127.0.0.1:1/lore", timeout_ms=2_000, pool_size=1)
    yield hybrid.Scope(engine, dead, story.tenant.id, uuid.UUID(story.chronicle))
    await dead.dispose()


def reasons(result) -> dict[str, str]:
    return {u.part: u.reason for u in result.unavailable}


async def test_degraded_entity_fate_comes_from_the_chronicle(degraded, story: Story) -> None:
    fate = await hybrid.answer(degraded, hybrid.EntityFateQuery(entity="Bram"))
    assert isinstance(fate, hybrid.EntityFateResult)
    assert fate.answered_from == "chronicle"
    assert "ECS unavailable" in reasons(fate)["ids"]
    assert fate.entity == hybrid.Ref(None, "Bram")
    assert fate.dead is True
    assert fate.current is not None
    assert fate.current.location is not None
    assert (fate.current.location.value, fate.current.location.sequence) == ("Lantern Cellar", 14)
    assert fate.current.status is not None
    assert (fate.current.status.value, fate.current.status.event_id) == ("dead", story.event_id(15))
    assert fate.death is not None
    assert fate.death.sequence == 15
    assert [e.event.sequence for e in fate.events] == [1, 4, 7, 13, 14, 15]
    # a held item is where its holder's own events put it
    key = await hybrid.answer(degraded, hybrid.EntityFateQuery(entity="silver key"))
    assert isinstance(key, hybrid.EntityFateResult)
    assert key.current is not None
    assert key.current.holder is not None
    assert key.current.holder.value == "Elara"
    assert key.current.location is not None
    assert key.current.location.value == "Saltcrag Keep"
    # aliases still resolve through the chronicle's alias events
    magpie = await hybrid.answer(degraded, hybrid.EntityFateQuery(entity="the Magpie"))
    assert isinstance(magpie, hybrid.EntityFateResult)
    assert magpie.entity.name == "Corvin"
    assert magpie.current is not None
    assert magpie.current.status is not None
    assert magpie.current.status.value == "imprisoned"


async def test_degraded_participants_say_standing_is_unavailable(degraded, client, story: Story) -> None:
    full = await ask(client, story, type="event_participants", event="salt-road-017")
    result = await hybrid.answer(degraded, hybrid.EventParticipantsQuery(event="salt-road-017"))
    assert isinstance(result, hybrid.EventParticipantsResult)
    assert result.answered_from == "chronicle"
    assert list(reasons(result)) == ["standing"]
    assert result.standing == []
    # who was there does not need ECS at all: the same participants, with the same (ECS) ids
    assert msgspec.to_builtins(result.participants) == full["participants"]


async def test_degraded_presence_history_items_and_past_state(degraded, client, story: Story) -> None:
    keep = await hybrid.answer(degraded, hybrid.PresentAtQuery(location="Saltcrag Keep"))
    assert isinstance(keep, hybrid.PresentAtResult)
    assert keep.answered_from == "chronicle"
    assert {"ids", "present"} <= set(reasons(keep))
    assert {(m.entity.name, m.status) for m in keep.present} == {("Elara", None), ("Corvin", "imprisoned")}
    inn = await hybrid.answer(
        degraded, hybrid.PresentAtQuery(location="Lantern Inn", toward="Elara", min=0.3)
    )
    assert isinstance(inn, hybrid.PresentAtResult)
    assert [(m.entity.name, m.valence.value if m.valence else None) for m in inn.present] == [
        ("Tamsin", pytest.approx(0.4))
    ]

    history = await hybrid.answer(degraded, hybrid.RelationshipHistoryQuery(a="Oswin", b="the magpie"))
    assert isinstance(history, hybrid.RelationshipHistoryResult)
    assert history.answered_from == "chronicle"
    assert (history.from_.name, history.to.name) == ("Oswin", "Corvin")
    assert [c.sequence for c in history.changes] == [3, 11, 17, 21]
    assert [c.value for c in history.changes] == pytest.approx([0.3, 0.5, -0.3, -0.8])
    assert [c.previous for c in history.changes] == pytest.approx([0.0, 0.3, 0.5, -0.3])
    assert history.current["trust"].value == pytest.approx(-0.8)
    assert history.current["trust"].sequence == 21

    ledger = await hybrid.answer(degraded, hybrid.ItemInteractionsQuery(item="Salt Ledger"))
    assert isinstance(ledger, hybrid.ItemInteractionsResult)
    assert ledger.answered_from == "chronicle"
    assert [(h.holder.name if h.holder else None, h.event.sequence) for h in ledger.holders] == [
        ("Bram", 1), ("Corvin", 13), ("Tamsin", 22), ("Oswin", 24), ("Elara", 30)
    ]  # fmt: skip

    past = await hybrid.answer(degraded, hybrid.StateAsOfQuery(entity="Bram", sequence=13))
    full = await ask(client, story, type="state_as_of", entity="Bram", sequence=13)
    assert msgspec.to_builtins(past) == full  # a replay either way, ids included

    with pytest.raises(hybrid.UnknownReference) as unknown:
        await hybrid.answer(degraded, hybrid.EntityFateQuery(entity="Nobody"))
    assert unknown.value.field == "entity"
    # an entity id needs ECS to resolve: not a 404, a "retry or use a name"
    with pytest.raises(hybrid.ReferenceUnavailable) as by_id:
        await hybrid.answer(degraded, hybrid.EntityFateQuery(entity=str(uuid.uuid4())))
    assert by_id.value.field == "entity"


async def test_entities_not_projected_yet_are_answered_from_the_chronicle(
    client, tenant: Tenant, monkeypatch
) -> None:
    # A lag within the staleness bound is caught up by the request itself (read-your-writes); one
    # over it is left to the projector, and the answer must then come from the chronicle.
    services = client.app.state.services
    monkeypatch.setattr(services, "staleness", msgspec.structs.replace(services.staleness, max_lag_events=1))
    chronicle = (
        await client.post("/api/chronicles", json={"title": "fresh"}, headers=tenant.headers)
    ).json()["id"]
    events = [
        {"summary": "Nell arrives at the mill.", "actors": ["Nell"], "location": "Old Mill"},
        {"summary": "Nell is given the millstone key.", "actors": ["Nell"],
         "effects": [{"op": "transfer", "item": "Millstone Key", "to": "Nell"}]},
    ]  # fmt: skip
    response = await client.post(
        f"/api/chronicles/{chronicle}/events", json={"events": events}, headers=tenant.headers
    )
    assert response.status_code == 200
    # the shared test app runs no background projector and the lag is over the bound: ECS is empty
    body = {"type": "entity_fate", "entity": "nell"}
    response = await client.post(f"/api/chronicles/{chronicle}/query", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    fate = response.json()
    assert fate["answered_from"] == "chronicle"
    assert "not in the ECS read model" in {u["part"]: u["reason"] for u in fate["unavailable"]}["ids"]
    assert fate["current"]["location"]["value"] == "Old Mill"
    assert [i["value"] for i in fate["current"]["inventory"]] == ["Millstone Key"]
    assert [(e["event"]["sequence"], [c["what"] for c in e["changes"]]) for e in fate["events"]] == [
        (1, ["moved"]), (2, ["received"])
    ]  # fmt: skip

    monkeypatch.undo()  # the default bound: the request projects the two events and answers from ECS
    response = await client.post(f"/api/chronicles/{chronicle}/query", json=body, headers=tenant.headers)
    assert response.json()["answered_from"] == "ecs"
    assert response.json()["current"]["location"]["value"] == "Old Mill"
