"""Context bundles on the sample story: state wins over history, budgets hold, output is stable."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from app.cli import load_sample_story
from ecs.projector import Projector
from ecs.reducer import apply_event
from ecs.repository import read_checkpoint
from ecs.state_source import ChronicleReplayStateSource, EcsStateSource, KnownNamesCache
from rag.context import ContextRequest, assemble_context
from rag.presets import get_preset
from rag.templates import TemplateRegistry
from rag.tokens import get_counter
from tests.conftest import Tenant


@pytest.fixture
async def story(client, engine, tenant: Tenant) -> str:
    chronicle = (await client.post("/api/chronicles", json={"title": "salt"}, headers=tenant.headers)).json()[
        "id"
    ]
    events = [msgspec.to_builtins(e) for e in load_sample_story()]
    response = await client.post(
        f"/api/chronicles/{chronicle}/events", json={"events": events}, headers=tenant.headers
    )
    assert response.status_code == 200
    await Projector(engine, engine).catch_up(uuid.UUID(chronicle))
    return chronicle


async def context(client, tenant: Tenant, chronicle: str, **body) -> dict:
    response = await client.post(f"/api/chronicles/{chronicle}/context", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    return response.json()


def state_of(bundle: dict, name: str) -> dict:
    return next(s for s in bundle["state"] if s["name"] == name)


async def test_where_is_bram_now_answers_from_state_and_marks_stale_history(client, tenant, story) -> None:
    bundle = await context(client, tenant, story, query="Where is Bram now?")
    assert bundle["mode"] == "full", bundle["degraded_reason"]
    assert bundle["chronicle_sequence"] == 40 and bundle["ecs_sequence"] == 40
    bram = state_of(bundle, "Bram")
    assert bram["location"]["value"] == "Lantern Cellar"
    assert bram["status"]["value"] == "dead"
    assert bram["status"]["sequence"] == 15
    assert "location" in bundle["manifest"]["facets"]
    stale = [h for h in bundle["history"] if h["superseded"]]
    assert stale, [(h["sequence"], h["summary"], h["why"]) for h in bundle["history"]]
    assert all("now: Bram at Lantern Cellar" in h["superseded_note"] for h in stale)
    assert "Lantern Cellar" in bundle["text"]
    assert bundle["token_count"] <= 1500


async def test_budget_is_honoured_exactly_and_history_is_cut_first(client, tenant, story) -> None:
    full = await context(client, tenant, story, query="What happened to the silver key?", max_tokens=4000)
    for budget in (400, 250, 120):
        bundle = await context(
            client, tenant, story, query="What happened to the silver key?", max_tokens=budget
        )
        assert bundle["token_count"] <= budget
        assert len(bundle["state"]) == len(full["state"])  # pinned state is never dropped
        assert len(bundle["history"]) <= len(full["history"])
    tiny = await context(client, tenant, story, query="What happened to the silver key?", max_tokens=120)
    reasons = {o["reason"] for o in tiny["manifest"]["omitted"]}
    assert "token budget" in reasons
    # Cut to fewer tokens than the state needs: whole lines, no header left with nothing under it,
    # one final newline.
    for budget in (40, 60, 90):
        cut = await context(client, tenant, story, query="Where is Bram and who does he trust?", max_tokens=budget,
                            format="both")  # fmt: skip
        assert cut["token_count"] <= budget
        assert cut["text"].endswith("\n") and not cut["text"].endswith("\n\n"), (budget, cut["text"])
        assert not cut["text"].rstrip("\n").splitlines()[-1].startswith("#"), (budget, cut["text"])


async def test_same_request_gives_byte_identical_text(client, tenant, story) -> None:
    a = await context(client, tenant, story, query="Who does Oswin trust?", format="both")
    b = await context(client, tenant, story, query="Who does Oswin trust?", format="both")
    assert a["text"] == b["text"]
    assert a["history"] == b["history"]


async def test_text_format_and_templates(client, tenant, story) -> None:
    response = await client.post(f"/api/chronicles/{story}/context", json={"query": "Where is Elara?", "format": "text",
                                 "template": "compact"}, headers=tenant.headers)  # fmt: skip
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "Elara" in response.text
    missing = await client.post(f"/api/chronicles/{story}/context", json={"query": "x", "template": "nope"},
                                headers=tenant.headers)  # fmt: skip
    assert missing.status_code == 422
    assert "default" in missing.json()["detail"] and "roleplay" in missing.json()["detail"]
    bad_preset = await client.post(f"/api/chronicles/{story}/context", json={"query": "x", "preset": "nope"},
                                   headers=tenant.headers)  # fmt: skip
    assert bad_preset.status_code == 422 and "recent-heavy" in bad_preset.json()["detail"]


async def test_as_of_sequence_gives_the_past_state(client, tenant, story) -> None:
    bundle = await context(client, tenant, story, query="Where is Bram?", as_of_sequence=13)
    bram = state_of(bundle, "Bram")
    assert bram["location"]["value"] == "Lantern Inn"
    assert bram["status"] is None
    assert all(h["sequence"] <= 13 for h in bundle["history"] + bundle["recent"])


async def test_chronicle_only_mode_still_answers_where_now(client, tenant, story) -> None:
    bundle = await context(client, tenant, story, query="Where is Bram now?", mode="chronicle_only")
    assert bundle["mode"] == "chronicle_only"
    assert bundle["degraded_reason"]
    assert bundle["state_source"] == "chronicle replay"
    bram = state_of(bundle, "Bram")
    assert bram["location"]["value"] == "Lantern Cellar"
    assert bram["status"]["value"] == "dead"


@pytest.mark.parametrize("mode", ["full", "chronicle_only"])
async def test_a_valence_is_cited_with_the_event_that_last_changed_it(client, tenant, story, mode) -> None:
    bundle = await context(client, tenant, story, query="Does Elara trust Oswin?", mode=mode)
    assert bundle["mode"] == mode
    events = (
        await client.get(f"/api/chronicles/{story}/events", params={"limit": 100}, headers=tenant.headers)
    ).json()["items"]
    event_at = {e["sequence"]: e["id"] for e in events}
    [to_oswin] = [
        r
        for r in state_of(bundle, "Elara")["relationships"]
        if r["other"] == "Oswin" and r["direction"] == "outgoing"
    ]
    # Set to 0.7 in event 28, then +0.1 in event 30: the sum is exactly 0.8, not 0.7999999999999999.
    assert to_oswin["valence"] == {"trust": 0.8}
    assert to_oswin["event_id"] == event_at[30]


async def test_who_has_an_item_is_answered_by_its_holder_line(client, tenant, story) -> None:
    # "the key": one word of the Silver Key's name is enough to make it the focus.
    bundle = await context(client, tenant, story, query="Who has the key now?", format="both")
    assert [f["name"] for f in bundle["focus"]] == ["Silver Key"]
    holder = state_of(bundle, "Silver Key")["holder"]
    assert holder["value"] == "Elara"
    assert "### Silver Key (item)\n- Location: Saltcrag Keep" in bundle["text"]
    assert f"- Held by: Elara (since #{holder['sequence']})\n" in bundle["text"]


@pytest.mark.parametrize("mode", ["full", "chronicle_only"])
@pytest.mark.parametrize(
    ("query", "as_of", "place", "present"),
    [
        ("Who is at the Lantern Inn?", None, "Lantern Inn", ["Maud", "Tamsin"]),
        ("Who was at Saltcrag Keep?", None, "Saltcrag Keep", ["Corvin", "Elara"]),
        ("Who was at the inn then?", 13, "Lantern Inn", ["Bram", "Elara", "Maud", "Oswin", "Tamsin"]),
    ],
)
async def test_who_is_at_a_place_lists_those_there_under_it(
    client, tenant, story, mode, query, as_of, place, present
) -> None:
    bundle = await context(client, tenant, story, query=query, mode=mode, as_of_sequence=as_of, format="both")
    assert bundle["mode"] == mode
    assert [f["name"] for f in bundle["focus"]] == [place]
    assert bundle["manifest"]["present"] == {place: present}
    # Names only: their whole states would crowd the history out of the budget.
    assert [s["name"] for s in bundle["state"]] == [place]
    assert f"### {place} (location)\n- Present: {', '.join(present)}\n" in bundle["text"]


async def test_a_place_not_asked_about_for_presence_lists_no_one(client, tenant, story) -> None:
    bundle = await context(client, tenant, story, query="What is the Lantern Inn like?", format="both")
    assert [s["name"] for s in bundle["state"]] == ["Lantern Inn"]
    assert bundle["manifest"]["present"] == {}
    assert "Present:" not in bundle["text"]


async def test_an_event_named_in_the_question_is_in_the_history(client, tenant, story) -> None:
    events = (
        await client.get(f"/api/chronicles/{story}/events", params={"limit": 100}, headers=tenant.headers)
    ).json()["items"]
    by_sequence = {e["sequence"]: e for e in events}
    for query, sequence in (
        ("What happened in #3?", 3),
        (f"Who was there at {by_sequence[7]['external_id']}?", 7),
        (f"Tell me about {by_sequence[11]['id']}.", 11),
    ):
        bundle = await context(client, tenant, story, query=query)
        [named] = [h for h in bundle["history"] if h["sequence"] == sequence]
        assert named["why"] == ["named in the question"], query
        assert named["score"] == 1.0
        assert named["id"] == by_sequence[sequence]["id"]
    # Not yet written as of an earlier point: not there.
    bundle = await context(client, tenant, story, query="What happened in #30?", as_of_sequence=20)
    assert all(h["sequence"] <= 20 for h in bundle["history"] + bundle["recent"])
    # A reference to another chronicle's event finds nothing here.
    other = await context(client, tenant, story, query="What happened at dl-004 and #999?")
    assert all(h["why"] != ["named in the question"] for h in other["history"])


async def test_pov_limits_history_to_what_the_character_could_know(client, tenant, story) -> None:
    bundle = await context(client, tenant, story, query="What happened at the Lantern Inn?", pov="Elara",
                           max_tokens=4000)  # fmt: skip
    # Elara rode out from the keep on day 1 and arrived at the inn in event 8; the arrival at the
    # inn in event 4 was before she was there.
    sequences = {h["sequence"] for h in bundle["history"] + bundle["recent"]}
    assert 4 not in sequences
    assert any(o["reason"] == "pov cannot know it" for o in bundle["manifest"]["omitted"]) or sequences


async def test_tenant_isolation_through_retrieval(client, tenant, other_tenant, story) -> None:
    response = await client.post(f"/api/chronicles/{story}/context", json={"query": "Bram"},
                                 headers=other_tenant.headers)  # fmt: skip
    assert response.status_code == 404
    theirs = (
        await client.post("/api/chronicles", json={"title": "other"}, headers=other_tenant.headers)
    ).json()
    await client.post(f"/api/chronicles/{theirs['id']}/events",
                      json={"events": [{"summary": "A quiet day at the mill.", "actors": ["Nell"]}]},
                      headers=other_tenant.headers)  # fmt: skip
    bundle = await context(
        client, other_tenant, theirs["id"], query="Where did Bram die in the Lantern Cellar?"
    )
    assert all("Bram" not in h["summary"] for h in bundle["history"] + bundle["recent"])


async def test_a_held_item_that_moved_with_its_holder_is_marked_superseded(client, engine, tenant) -> None:
    chronicle = (await client.post("/api/chronicles", json={"title": "ball"}, headers=tenant.headers)).json()[
        "id"
    ]
    events = [
        {"summary": "Mary went to the kitchen.", "actors": ["Mary"], "location": "kitchen"},
        {"summary": "Mary picked up the football there.", "actors": ["Mary"], "location": "kitchen",
         "effects": [{"op": "transfer", "item": "football", "to": "Mary"}]},
        {"summary": "Mary travelled to the garden.", "actors": ["Mary"], "location": "garden",
         "effects": [{"op": "move", "entity": "Mary", "to": "garden"}]},
    ]  # fmt: skip
    await client.post(f"/api/chronicles/{chronicle}/events", json={"events": events}, headers=tenant.headers)
    await Projector(engine, engine).catch_up(uuid.UUID(chronicle))
    for mode in ("auto", "chronicle_only"):
        bundle = await context(client, tenant, chronicle, query="Where is the football?", mode=mode)
        football = state_of(bundle, "football")
        assert football["location"]["value"] == "garden"
        assert football["location"]["sequence"] == 3  # it moved when its holder did
        pickup = next(h for h in bundle["history"] + bundle["recent"] if h["sequence"] == 2)
        assert pickup["superseded"], (mode, pickup)
        assert "now: football at garden" in pickup["superseded_note"]


async def test_events_just_appended_are_in_the_state_without_waiting_for_the_projector(
    client, engine, tenant
) -> None:
    """Read-your-writes: the shared test app runs no background projector, so only the request's
    own catch-up can put the move appended just before into the state."""
    chronicle = (await client.post("/api/chronicles", json={"title": "ryw"}, headers=tenant.headers)).json()[
        "id"
    ]
    events = [
        {"summary": "Ilse entered the mill.", "actors": ["Ilse"], "location": "mill"},
        {"summary": "Ilse walked to the weir.", "actors": ["Ilse"], "location": "weir",
         "effects": [{"op": "move", "entity": "Ilse", "to": "weir"}]},
    ]  # fmt: skip
    for event in events:  # one POST each, asking right after each, as a turn-by-turn client does
        response = await client.post(
            f"/api/chronicles/{chronicle}/events", json={"events": [event]}, headers=tenant.headers
        )
        assert response.status_code == 200
        bundle = await context(client, tenant, chronicle, query="Where is Ilse now?")
        assert bundle["mode"] == "full", bundle["degraded_reason"]
        assert (
            bundle["ecs_sequence"] == bundle["chronicle_sequence"] == response.json()["events"][0]["sequence"]
        )
        assert state_of(bundle, "Ilse")["location"]["value"] == event["location"]
    listed = await client.get(
        f"/api/chronicles/{chronicle}/entities", params={"location": "weir"}, headers=tenant.headers
    )
    assert [e["name"] for e in listed.json()["items"]] == ["Ilse"]


async def test_a_lag_over_the_bound_is_not_caught_up_in_the_request(
    client, engine, tenant, monkeypatch
) -> None:
    """Catching up a long backlog inside a request would blow its latency: over the staleness
    bound the request is served from the chronicle replay instead, and ECS is left untouched."""
    services = client.app.state.services
    monkeypatch.setattr(services, "staleness", msgspec.structs.replace(services.staleness, max_lag_events=1))
    chronicle = (await client.post("/api/chronicles", json={"title": "lag"}, headers=tenant.headers)).json()[
        "id"
    ]
    events = [
        {"summary": f"Ilse counted sack {n} at the mill.", "actors": ["Ilse"], "location": "mill"}
        for n in range(3)
    ]
    await client.post(f"/api/chronicles/{chronicle}/events", json={"events": events}, headers=tenant.headers)
    bundle = await context(client, tenant, chronicle, query="Where is Ilse now?")
    assert bundle["mode"] == "chronicle_only"
    assert "3 events behind" in bundle["degraded_reason"]
    assert state_of(bundle, "Ilse")["location"]["value"] == "mill"
    status = (await client.get(f"/api/chronicles/{chronicle}/ecs", headers=tenant.headers)).json()
    assert status["checkpoint_sequence"] == 0


async def test_a_failing_projection_is_not_retried_by_requests_and_they_fall_back(
    client, engine, tenant, monkeypatch
) -> None:
    """Read-your-writes must not turn every request into a retry of an event that fails to project
    (that would park the chronicle within a few requests, skipping the backoff); the requests
    answer from the chronicle replay meanwhile."""
    services = client.app.state.services

    def reducer(state, event):
        if "cursed" in event.summary:
            raise RuntimeError("this event cannot be projected")
        return apply_event(state, event)

    monkeypatch.setattr(services.projector, "reducer", reducer)
    chronicle = (await client.post("/api/chronicles", json={"title": "bad"}, headers=tenant.headers)).json()[
        "id"
    ]
    events = [
        {"summary": "Ilse entered the mill.", "actors": ["Ilse"], "location": "mill"},
        {"summary": "Ilse read the cursed page at the weir.", "actors": ["Ilse"], "location": "weir"},
    ]
    for event in events:
        await client.post(
            f"/api/chronicles/{chronicle}/events", json={"events": [event]}, headers=tenant.headers
        )
    attempts = []
    for _ in range(3):
        bundle = await context(client, tenant, chronicle, query="Where is Ilse now?")
        assert bundle["mode"] == "chronicle_only", bundle["degraded_reason"]
        assert state_of(bundle, "Ilse")["location"]["value"] == "weir"
        async with engine.connect() as conn:
            checkpoint = await read_checkpoint(conn, uuid.UUID(chronicle))
        attempts.append((checkpoint.last_sequence, checkpoint.attempts))
    assert attempts == [(1, 1)] * 3  # the first request tried once; the others left it to the backoff
    assert "failing" in bundle["degraded_reason"]


@pytest.mark.parametrize(
    "query", ["Where is Bram now?", "What happened to the silver key?", "Who does Oswin trust?"]
)
async def test_a_second_search_connection_changes_nothing_but_timings(
    engine, embedder, tenant, story, query
) -> None:
    # A request alone on the service searches vectors on a connection of its own; a busy one
    # searches everything on one connection. Both must build the same bundle.
    chronicle = uuid.UUID(story)
    request = ContextRequest(
        tenant_id=tenant.id, chronicle_id=chronicle, query=query, preset=get_preset("default")
    )

    async def embed(texts: list[str]) -> list[list[float]]:
        return embedder.embed(texts)

    bundles = []
    for spare in (False, True):
        bundle = await assemble_context(
            engine, request, chronicle_sequence=40, state_source=EcsStateSource(engine, engine, tenant.id, chronicle),
            mode="full", degraded_reason=None, embed=embed, counter=get_counter(), templates=TemplateRegistry(),
            spare_connection=spare,
        )  # fmt: skip
        bundles.append(msgspec.structs.replace(bundle, timings_ms={}))
    assert bundles[0] == bundles[1]
    assert bundles[0].history


async def _post(client, tenant: Tenant, title: str, events: list[dict]) -> str:
    chronicle = (await client.post("/api/chronicles", json={"title": title}, headers=tenant.headers)).json()[
        "id"
    ]
    response = await client.post(
        f"/api/chronicles/{chronicle}/events", json={"events": events}, headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    return chronicle


ALIAS_STORY = [
    {"summary": "Quenilek went to the mill.", "actors": ["Quenilek"], "location": "mill"},
    {"summary": "From then on Quenilek was known as the Sparrow.", "actors": ["Quenilek"],
     "effects": [{"op": "alias", "entity": "Quenilek", "alias": "the Sparrow"}]},
    {"summary": "The Sparrow picked up the pipe at the mill.", "actors": ["the Sparrow"], "location": "mill",
     "effects": [{"op": "transfer", "item": "pipe", "to": "the Sparrow"}]},
    {"summary": "The Sparrow walked to the bridge.", "actors": ["the Sparrow"], "location": "bridge",
     "effects": [{"op": "move", "entity": "the Sparrow", "to": "bridge"}]},
]  # fmt: skip


async def test_degraded_holder_named_by_an_alias_is_the_entity_not_a_second_one(
    client, engine, tenant
) -> None:
    """The pipe's own events never include the alias declaration, so a replay of them alone made
    "the Sparrow" an entity of its own; the replay now starts from the chronicle's alias groups."""
    chronicle = await _post(client, tenant, "alias", ALIAS_STORY)
    await Projector(engine, engine).catch_up(uuid.UUID(chronicle))
    for mode in ("auto", "chronicle_only"):
        bundle = await context(
            client, tenant, chronicle, query="Who has the pipe?", focus=["pipe"], mode=mode
        )
        pipe = state_of(bundle, "pipe")
        assert pipe["holder"]["value"] == "Quenilek", (mode, pipe)
        assert pipe["location"]["value"] == "bridge", (mode, pipe)


async def test_degraded_replay_finds_focus_and_aliases_beyond_its_recent_scan(client, engine, tenant) -> None:
    """Known names come from the last `scan_events` events, but a focus name and an alias declared
    earlier are found in the whole chronicle; an entity the chronicle did not have by the as-of
    sequence has no state, even though the alias seed knows its name."""
    filler = [
        {"summary": f"Mara counted sack {n} at the weir.", "actors": ["Mara"], "location": "weir"}
        for n in range(4)
    ]
    chronicle = await _post(client, tenant, "scan", [*ALIAS_STORY, *filler])
    chronicle_id = uuid.UUID(chronicle)

    def source(**kwargs: object) -> ChronicleReplayStateSource:
        return ChronicleReplayStateSource(engine, tenant.id, chronicle_id, scan_events=2, **kwargs)

    assert {k.id for k in await source().known_entities()} >= {"mara", "weir", "quenilek"}
    assert "pipe" not in {k.id for k in await source().known_entities()}
    quenilek = next(k for k in await source().known_entities() if k.id == "quenilek")
    assert quenilek.aliases == ["the Sparrow"]  # declared 6 events before the scanned two

    found = source(focus=["the pipe", "Pipe", "nobody"])
    pipe = next(k for k in await found.known_entities() if k.id == "pipe")
    assert pipe.kind == "item"
    assert "nobody" not in {k.id for k in await found.known_entities()}
    [state] = await found.entity_states(["pipe"], None)
    assert (state.holder.value, state.location.value) == ("Quenilek", "bridge")
    assert await source().entity_states(["quenilek"], 0) == []
    [early] = await source().entity_states(["quenilek"], 1)
    assert early.location.value == "mill"


async def test_alias_declarations_are_read_once_then_only_the_new_ones(client, engine, tenant) -> None:
    chronicle = await _post(client, tenant, "aliases", ALIAS_STORY)
    chronicle_id, cache = uuid.UUID(chronicle), KnownNamesCache()

    async def aliases_at(sequence: int) -> dict[str, list[str]]:
        source = ChronicleReplayStateSource(
            engine, tenant.id, chronicle_id, known_cache=cache, chronicle_sequence=sequence
        )
        return {k.id: k.aliases for k in await source.known_entities() if k.aliases}

    assert await aliases_at(4) == {"quenilek": ["the Sparrow"]}
    assert cache.aliases(chronicle_id) == (4, [("Quenilek", "the Sparrow")])
    # Planted: were the declarations read again from the start, the Widow would be gone.
    cache.put_aliases(chronicle_id, 4, [("Quenilek", "the Sparrow"), ("Mara", "the Widow")])
    more = {
        "summary": "Some called him Old Bird.",
        "effects": [{"op": "alias", "entity": "the Sparrow", "alias": "Old Bird"}],
    }
    await client.post(f"/api/chronicles/{chronicle}/events", json={"events": [more]}, headers=tenant.headers)
    assert await aliases_at(5) == {"quenilek": ["Old Bird", "the Sparrow"], "mara": ["the Widow"]}
    assert cache.aliases(chronicle_id)[0] == 5


async def test_a_recent_event_retrieval_found_keeps_its_score(client, tenant) -> None:
    chronicle = await _post(client, tenant, "recent", ALIAS_STORY)
    bundle = await context(client, tenant, chronicle, query="Who picked up the pipe?", focus=["pipe"])
    assert bundle["history"] == []  # all four events are recent: each is shown once, there
    by_sequence = {r["sequence"]: r for r in bundle["recent"]}
    pickup = by_sequence[3]
    assert pickup["why"][0] == "recent" and any(w.startswith("entity#") for w in pickup["why"]), pickup
    assert pickup["score"] == max(r["score"] or 0.0 for r in bundle["recent"]) > 0
