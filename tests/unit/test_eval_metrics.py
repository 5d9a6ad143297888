"""evals.metrics on hand-made bundles: answer extraction per kind, scoring, stale detection and the
retrieval metrics (exact values); evals.report aggregation and the CI gate on synthetic records."""

from __future__ import annotations

import math
from typing import Any

import pytest

from evals import metrics
from evals.datasets.base import EvalQuery
from evals.harness import context_body, load_streams
from evals.metrics import extract_answer, is_stale, retrieval_metrics, score_answer, score_query
from evals.report import build_report, cell, check_gate, summary_markdown


def q(kind: str, subjects: list[str], answer: Any, **kw: Any) -> EvalQuery:
    return EvalQuery(id=f"q-{kind}", kind=kind, text=f"{kind}?", asked_after=10, subjects=subjects,
                     answer=answer, **kw)  # fmt: skip


def ev(
    seq: int,
    summary: str,
    *,
    actors: list[str] | None = None,
    location: str | None = None,
    score: float | None = None,
    superseded: bool = False,
    ext: str | None = None,
) -> dict[str, Any]:
    return {
        "id": f"id-{seq}", "sequence": seq, "external_id": ext or f"e{seq}", "summary": summary,
        "location": location, "actors": actors or [], "score": score, "superseded": superseded,
        "superseded_note": None, "kind": "x", "why": [],
    }  # fmt: skip


def fact(value: Any, seq: int | None = None) -> dict[str, Any]:
    return {"value": value, "sequence": seq, "event_id": None}


def entity(name: str, *, aliases: list[str] | None = None, location: str | None = None, loc_seq: int = 5,
           status: str | None = None, holder: str | None = None, relationships: list[Any] | None = None,
           kind: str = "character") -> dict[str, Any]:  # fmt: skip
    return {
        "id": name, "name": name, "kind": kind, "aliases": aliases or [],
        "location": fact(location, loc_seq) if location else None,
        "status": fact(status) if status else None, "holder": fact(holder) if holder else None,
        "inventory": [], "components": {}, "relationships": relationships or [],
    }  # fmt: skip


def bundle(
    state: list[Any] | None = None, history: list[Any] | None = None, recent: list[Any] | None = None
) -> dict[str, Any]:
    return {
        "mode": "full",
        "state": state or [],
        "history": history or [],
        "recent": recent or [],
        "token_count": 100,
    }


# --------------------------------------------------------------------------------------------------
# Retrieval metrics


def test_retrieval_metrics_exact_values() -> None:
    ranked = ["a", "x", "b", "y", "z", "c", "w", "v", "u", "t", "s"]
    m = retrieval_metrics(ranked, ["b", "c", "q"])
    assert m["recall@5"] == pytest.approx(1 / 3)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["all@5"] == 0.0
    assert m["all@10"] == 0.0
    assert m["mrr"] == pytest.approx(1 / 3)
    dcg = 1 / math.log2(4) + 1 / math.log2(7)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["in_bundle"] == 1.0


def test_retrieval_metrics_perfect_missing_and_empty() -> None:
    perfect = retrieval_metrics(["a", "b", "c"], ["a", "b"])
    assert perfect == {"recall@5": 1.0, "recall@10": 1.0, "all@5": 1.0, "all@10": 1.0, "mrr": 1.0,
                       "ndcg@10": pytest.approx(1.0), "in_bundle": 1.0}  # fmt: skip
    missing = retrieval_metrics(["x", "y"], ["a"])
    assert missing["mrr"] == 0.0
    assert missing["ndcg@10"] == 0.0
    assert missing["in_bundle"] == 0.0
    assert set(retrieval_metrics(["a"], []).values()) == {None}
    # Evidence at rank 11 counts for in_bundle and MRR only.
    late = retrieval_metrics([f"n{i}" for i in range(10)] + ["a"], ["a"])
    assert late["recall@10"] == 0.0
    assert late["mrr"] == pytest.approx(1 / 11)
    assert late["in_bundle"] == 1.0


def test_ranking_is_by_score_then_recent_newest_first() -> None:
    b = bundle(
        history=[ev(1, "old", score=0.01), ev(2, "best", score=0.03), ev(3, "tie", score=0.01)],
        recent=[ev(8, "r8"), ev(9, "r9"), ev(2, "dup")],
    )
    b["recent"][2]["id"] = "id-2"  # the same event as a history item: listed once
    assert [i["external_id"] for i in metrics.ranked_items(b)] == ["e2", "e1", "e3", "e9", "e8"]
    scored = score_query(q("recall", [], "x", evidence=["e9"]), b)
    assert scored["retrieval"]["mrr"] == pytest.approx(1 / 4)
    # A recent event that retrieval found too carries its score and ranks by it.
    b["recent"][0]["score"] = 0.02
    assert [i["external_id"] for i in metrics.ranked_items(b)] == ["e2", "e8", "e1", "e3", "e9"]


# --------------------------------------------------------------------------------------------------
# State kinds: read from state when there is one, else carelessly from the best-ranked event


def test_where_now_from_state_by_alias_and_from_history() -> None:
    query = q("where_now", ["Kaelric"], "the Salt Market", stale_values=["the Iron Gate"])
    history = [
        ev(3, "Kaelric walked to the Iron Gate.", actors=["Kaelric"], location="the Iron Gate", score=0.03),
        ev(7, "The Grey Fox arrived at the Salt Market.", actors=["the Grey Fox"], location="the Salt Market",
           score=0.02),
    ]  # fmt: skip
    with_state = bundle([entity("Kaelric", aliases=["the Grey Fox"], location="the Salt Market", loc_seq=7)],
                        [dict(history[0], superseded=True), history[1]])  # fmt: skip
    extracted = extract_answer(query, with_state)
    assert extracted.source == "state"
    assert extracted.answer == "the Salt Market"
    assert score_answer("where_now", extracted, "salt market")  # article and case ignored
    assert is_stale("where_now", extracted, query, with_state) is False  # the stale top event is flagged

    unflagged = bundle(with_state["state"], history)
    assert is_stale("where_now", extract_answer(query, unflagged), query, unflagged) is True

    baseline = bundle(history=history)
    careless = extract_answer(query, baseline)
    assert careless.source == "history"
    assert careless.answer == "the Iron Gate"
    assert careless.event == "e3"
    assert not score_answer("where_now", careless, query.answer)
    assert is_stale("where_now", careless, query, baseline) is True
    # Nothing about the subject at all: no answer, not stale.
    empty = bundle(history=[ev(1, "Rain fell.", score=0.1)])
    nothing = extract_answer(query, empty)
    assert nothing.source == "none"
    assert nothing.answer is None
    assert is_stale("where_now", nothing, query, empty) is False


def test_where_now_of_destroyed_entity_is_nowhere() -> None:
    query = q("where_now", ["magma"], None)
    b = bundle([entity("magma", location="deep in the earth", status="destroyed", kind="participant")])
    assert extract_answer(query, b).answer is None
    assert score_answer("where_now", extract_answer(query, b), None)
    dead = bundle([entity("Bram", location="the Cellar", status="dead")])
    assert extract_answer(q("where_now", ["Bram"], "the Cellar"), dead).answer == "the Cellar"


@pytest.mark.parametrize(
    ("summary", "actors", "expected"),
    [
        ("Aela handed the brass key to Bram.", ["Aela", "Bram"], "Bram"),
        ("Bram received the brass key from Aela.", ["Aela", "Bram"], "Bram"),
        ("Cass stole the brass key from Bram.", ["Cass", "Bram"], "Cass"),
        ("Cass picked up the brass key at the Mill.", ["Cass"], "Cass"),
        ("Cass dropped the brass key at the Mill.", ["Cass"], None),
        ("Cass smashed the brass key.", ["Cass"], None),
    ],
)
def test_who_holds_careless_reading(summary: str, actors: list[str], expected: str | None) -> None:
    b = bundle(history=[ev(4, summary, actors=actors, score=0.02)])
    assert extract_answer(q("who_holds", ["brass key"], expected), b).answer == expected


def test_who_holds_from_state_and_none() -> None:
    held = bundle([entity("brass key", holder="Bram", kind="item")])
    assert extract_answer(q("who_holds", ["brass key"], "Bram"), held).answer == "Bram"
    lying = bundle([entity("brass key", location="the Mill", kind="item")])
    extracted = extract_answer(q("who_holds", ["brass key"], None), lying)
    assert extracted.answer is None
    assert score_answer("who_holds", extracted, None)


def test_is_alive_and_exists() -> None:
    dead = bundle([entity("Bram", status="dead")])
    assert extract_answer(q("is_alive", ["Bram"], "no"), dead).answer == "no"
    alive = bundle([entity("Bram", status="unconscious")])
    assert extract_answer(q("is_alive", ["Bram"], "yes"), alive).answer == "yes"
    history = bundle(history=[ev(2, "Bram was murdered by Cass.", actors=["Bram", "Cass"], score=0.1)])
    query = q("is_alive", ["Bram"], "no", stale_values=["yes"])
    assert extract_answer(query, history).answer == "no"
    chatter = bundle(history=[ev(2, "Bram told Cass about the storm.", actors=["Bram", "Cass"], score=0.1)])
    careless = extract_answer(query, chatter)
    assert careless.answer == "yes"
    assert is_stale("is_alive", careless, query, chatter) is True
    # With state, an event that merely does not mention death asserts nothing stale.
    with_state = bundle(dead["state"], chatter["history"])
    assert is_stale("is_alive", extract_answer(query, with_state), query, with_state) is False
    assert not score_answer("is_alive", extract_answer(query, bundle()), "no")  # nothing to read

    gone = bundle([entity("log", status="destroyed", kind="participant")])
    assert extract_answer(q("exists", ["log"], "no"), gone).answer == "no"
    back = bundle([entity("log", status="exists", kind="participant")])
    assert extract_answer(q("exists", ["log"], "yes"), back).answer == "yes"
    unknown = bundle(history=[ev(1, "The log floats.", score=0.1)])
    assert extract_answer(q("exists", ["log"], "no"), unknown).answer == "yes"  # careless
    assert extract_answer(q("exists", ["log"], "no"), unknown, state_requested=True).answer == "no"
    assert extract_answer(q("exists", ["log"], "no"), bundle()).answer == "no"


def test_is_at() -> None:
    query = q("is_at", ["Daniel", "office"], "yes")
    assert extract_answer(query, bundle([entity("Daniel", location="office")])).answer == "yes"
    assert extract_answer(query, bundle([entity("Daniel", location="kitchen")])).answer == "no"
    moved = bundle(
        history=[ev(1, "Daniel went to the office.", actors=["Daniel"], location="office", score=0.1)]
    )
    assert extract_answer(query, moved).answer == "yes"


def test_feeling_from_relationship_and_lexicon() -> None:
    gold = {"dimension": "trust", "value": -0.4, "sign": "negative"}
    query = q("feeling", ["Aela", "Bram"], gold, params={"dimension": "trust"}, stale_values=[0.3])
    relation = {"other": "Bram", "direction": "outgoing", "types": [], "valence": {"trust": -0.4}}
    incoming = {"other": "Bram", "direction": "incoming", "types": [], "valence": {"trust": 0.9}}
    b = bundle([entity("Aela", relationships=[incoming, relation]), entity("Bram")])
    extracted = extract_answer(query, b)
    assert extracted.answer == {"dimension": "trust", "value": -0.4, "sign": "negative"}
    assert score_answer("feeling", extracted, gold)
    assert score_query(query, b)["value_error"] == pytest.approx(0.0)
    old = bundle([entity("Aela", relationships=[dict(relation, valence={"trust": 0.3})]), entity("Bram")])
    stale = extract_answer(query, old)
    assert not score_answer("feeling", stale, gold)
    assert is_stale("feeling", stale, query, old) is True
    no_relation = bundle([entity("Aela"), entity("Bram")])
    assert extract_answer(query, no_relation).answer["sign"] == "neutral"

    doubt = bundle(history=[ev(3, "Aela caught Bram in a lie.", actors=["Aela", "Bram"], score=0.1)])
    careless = extract_answer(query, doubt)
    assert careless.answer == {"dimension": "trust", "value": None, "sign": "negative"}
    assert score_answer("feeling", careless, gold)
    assert is_stale("feeling", careless, query, doubt) is False
    never = bundle(history=[ev(3, "Aela would never trust Bram again.", actors=["Aela", "Bram"], score=0.1)])
    assert extract_answer(query, never).answer["sign"] == "negative"
    faith = bundle(history=[ev(3, "Aela's faith in Bram grew.", actors=["Aela", "Bram"], score=0.1)])
    assert extract_answer(query, faith).answer["sign"] == "positive"


def test_what_happened() -> None:
    gold = {"status": "dead", "location": "the Mill"}
    query = q("what_happened", ["Bram"], gold, stale_values=["the Inn", "alive"])
    b = bundle([entity("Bram", status="dead", location="the Mill")])
    assert score_answer("what_happened", extract_answer(query, b), gold)
    wrong_place = bundle([entity("Bram", status="dead", location="the Inn")])
    extracted = extract_answer(query, wrong_place)
    assert not score_answer("what_happened", extracted, gold)
    assert is_stale("what_happened", extracted, query, wrong_place) is True
    history = bundle(
        history=[ev(5, "Bram was found dead at the Mill.", actors=["Bram"], location="the Mill", score=0.1)]
    )
    assert extract_answer(query, history).answer == gold
    chatter = bundle([entity("Bram", status="dead", location="the Mill")],
                     [ev(2, "Bram told Cass about rain.", actors=["Bram", "Cass"], score=0.1)])  # fmt: skip
    assert is_stale("what_happened", extract_answer(query, chatter), query, chatter) is False


def test_state_as_of_reads_like_where_now() -> None:
    query = q("state_as_of", ["Bram"], "the Inn", params={"as_of_sequence": 4}, stale_values=["the Mill"])
    assert extract_answer(query, bundle([entity("Bram", location="the Inn")])).answer == "the Inn"
    assert context_body(query, "full", max_tokens=900, preset="default")["as_of_sequence"] == 4
    assert context_body(q("where_now", ["Bram"], "x"), "vector", max_tokens=900, preset="default") == {
        "query": "where_now?", "focus": ["Bram"], "max_tokens": 900, "preset": "default", "format": "json",
        "as_of_sequence": 10, "retrieval": "vector", "include_state": False,
    }  # fmt: skip
    assert context_body(q("who_was_at", ["Aela", "Bram"], ["Aela", "Bram"]), "full", max_tokens=900,
                        preset="default")["focus"] == []  # fmt: skip


# --------------------------------------------------------------------------------------------------
# History kinds


def test_where_before_with_and_without_state() -> None:
    query = q("where_before", ["Bram"], "the Inn", stale_values=["the Mill", "the Gate"])
    history = [
        ev(2, "Bram walked to the Gate.", actors=["Bram"], location="the Gate", score=0.05),
        ev(5, "Bram walked to the Inn.", actors=["Bram"], location="the Inn", score=0.01),
        ev(6, "Bram and Cass talked at the Inn.", actors=["Bram", "Cass"], location="the Inn", score=0.04),
        ev(9, "Bram walked to the Mill.", actors=["Bram"], location="the Mill", score=0.02),
    ]
    with_state = bundle([entity("Bram", location="the Mill", loc_seq=9)], history)
    extracted = extract_answer(query, with_state)
    assert extracted.answer == "the Inn"
    assert extracted.event == "e6"
    assert score_answer("where_before", extracted, "the Inn")
    assert extract_answer(query, bundle(history=history)).answer == "the Inn"  # latest event = current
    # The move to the current place was not retrieved: the latest event is taken for the current place.
    partial = bundle(history=history[:3])
    assert extract_answer(query, partial).answer == "the Gate"
    assert is_stale("where_before", extract_answer(query, partial), query, partial) is True


def test_who_was_at_needs_the_named_event() -> None:
    query = q("who_was_at", [], ["Aela", "Bram"], params={"event": "e4"}, evidence=["e4"])
    b = bundle(history=[ev(4, "The Fox met Bram at the Inn.", actors=["the Fox", "Bram"], score=0.1)])
    extracted = extract_answer(query, b)
    assert extracted.answer == ["Bram", "the Fox"]
    assert score_answer("who_was_at", extracted, query.answer, b)
    missing = bundle(history=[ev(5, "Aela and Bram talked.", actors=["Aela", "Bram"], score=0.1)])
    assert not score_answer("who_was_at", extract_answer(query, missing), query.answer, missing)


def test_give_kinds_use_the_best_event_naming_all_subjects() -> None:
    history = [
        ev(3, "Mary gave the football to Fred.", actors=["Mary", "Fred"], score=0.02),
        ev(8, "Jeff gave the football to Bill.", actors=["Jeff", "Bill"], score=0.05),
        ev(9, "Fred went to the kitchen.", actors=["Fred"], score=0.06),
    ]
    b = bundle(history=history)
    who_gave = q("who_gave", ["football", "Fred"], "Mary", stale_values=["Jeff"])
    assert score_query(who_gave, b)["correct"] is True
    assert score_query(q("what_given", ["Mary", "Fred"], "football"), b)["correct"] is True
    assert score_query(q("who_received", ["football", "Jeff"], "Bill"), b)["correct"] is True
    # Only the ball's later give is in the bundle: wrong, and stale (an earlier giver).
    later = bundle(history=history[1:])
    scored = score_query(q("who_gave", ["football"], "Mary", stale_values=["Jeff"]), later)
    assert scored["correct"] is False
    assert scored["stale"] is True
    assert score_query(q("who_gave", ["football"], "Mary"), later)["stale"] is None  # nothing stale to give


# --------------------------------------------------------------------------------------------------
# Report aggregation and the gate


def record(mode: str, kind: str, correct: bool, *, stale: bool | None = None, latency: float = 10.0,
           asked_after: int = 10, dataset: str = "d") -> dict[str, Any]:  # fmt: skip
    return {
        "dataset": dataset, "stream": "s", "query_id": f"{kind}-{asked_after}-{correct}", "mode": mode,
        "kind": kind, "group": metrics.kind_group(kind), "asked_after": asked_after, "correct": correct,
        "stale": stale, "latency_ms": latency, "token_count": 100, "timings_ms": {"total": latency / 2},
        "bundle_mode": "full",
        "retrieval": {"recall@5": 1.0, "recall@10": 1.0, "all@5": 1.0, "all@10": 1.0, "mrr": 0.5,
                      "ndcg@10": 0.6, "in_bundle": 1.0}, "error": None,
    }  # fmt: skip


def test_cell_and_gate() -> None:
    rows = [record("full", "where_now", True, stale=False, latency=10.0),
            record("full", "where_now", True, stale=None, latency=20.0),
            record("full", "who_was_at", False, latency=30.0)]  # fmt: skip
    c = cell(rows)
    assert c["n"] == 3
    assert c["accuracy"] == pytest.approx(2 / 3)
    assert c["stale_eligible"] == 1
    assert c["stale_rate"] == 0.0
    assert c["latency_ms"]["p50"] == 20.0
    assert c["latency_ms"]["p95"] == pytest.approx(29.0)
    assert c["mrr"] == 0.5

    records = [*rows, record("hybrid", "where_now", False, stale=True), record("hybrid", "where_now", True)]
    config = {"modes": ["hybrid", "full"], "datasets": ["d"], "run_id": "t"}
    report = build_report(records, config, fail_under=0.95)
    assert report["modes"] == ["hybrid", "full"]
    assert report["overall"]["full"]["state"]["accuracy"] == 1.0
    assert report["overall"]["hybrid"]["state"]["accuracy"] == 0.5
    assert report["overall"]["hybrid"]["all"]["stale_rate"] == 1.0
    assert report["gate"]["passed"] is True
    assert check_gate(report, 1.01)["passed"] is False
    tied = build_report(
        [record("full", "where_now", True), record("hybrid", "where_now", True)], config, fail_under=0.5
    )
    assert tied["gate"]["passed"] is False
    assert "not above hybrid" in tied["gate"]["problems"][0]
    markdown = summary_markdown(report)
    assert "| current-state accuracy | 0.500 | 1.000 |" in markdown
    assert "PASSED" in markdown
    assert report["accuracy_vs_length"]["bins"][0]["label"] == "<=50"


def test_load_streams_limit_spreads_over_a_stream() -> None:
    queries = [EvalQuery(id=f"q{i}", kind="where_now", text="?", asked_after=i) for i in range(1, 11)]
    from evals.datasets.base import EvalStream

    stream = EvalStream(
        name="one", events=[{"summary": "x", "external_id": f"e{i}"} for i in range(10)], queries=queries
    )
    name, loaded = load_streams(stream, limit=4)
    assert name == "one"
    assert [q.id for q in loaded[0].queries] == ["q1", "q3", "q6", "q8"]
    _, everything = load_streams(stream)
    assert len(everything[0].queries) == 10


def test_give_kinds_prefer_a_give_event_and_feeling_the_latest_relationship() -> None:
    b = bundle(history=[ev(1, "Fred picked up the football there.", actors=["Fred"], score=0.05)],
               recent=[ev(7, "Jeff gave the football to Fred.", actors=["Jeff", "Fred"]),
                       ev(11, "Fred gave the football to Jeff.", actors=["Fred", "Jeff"])])  # fmt: skip
    scored = score_query(q("who_received", ["football", "Fred"], "Jeff", evidence=["e11"]), b)
    assert scored["extracted"]["event"] == "e11"
    assert scored["correct"] is True
    # A replayed state may know the other under its name and under an alias: the latest counts.
    relations = [
        {"other": "Quenilek", "direction": "outgoing", "valence": {"trust": -0.18}, "sequence": 147},
        {"other": "the Sparrow", "direction": "outgoing", "valence": {"trust": -0.51}, "sequence": 264},
        {"other": "Quenilek", "direction": "outgoing", "valence": {"respect": 0.3}, "sequence": 300},
    ]
    state = bundle([entity("Belanion", relationships=relations), entity("Quenilek", aliases=["the Sparrow"])])
    query = q("feeling", ["Belanion", "Quenilek"], {"dimension": "trust", "value": -0.51, "sign": "negative"},
              params={"dimension": "trust"}, stale_values=[-0.18])  # fmt: skip
    assert extract_answer(query, state).answer["value"] == -0.51
    assert score_query(query, state)["stale"] is False


def test_summary_words_are_not_stale_claims() -> None:
    query = q("exists", ["tiny parts of rocks"], "yes", stale_values=["no"])
    b = bundle([entity("tiny parts of rocks", status="exists", kind="participant")],
               [ev(3, "Waves crushed the rocks into tiny parts of rocks.", score=0.1)])  # fmt: skip
    scored = score_query(query, b, state_requested=True)
    assert scored["correct"] is True
    assert scored["stale"] is False


def test_stale_fact_rate_is_over_current_state_questions_and_history_misses_are_apart() -> None:
    """An earlier giver ranked first for "who gave the milk" is a history miss, not a superseded
    fact passed off as current: it shows as the earlier-answer rate, not the stale-fact rate."""
    give = q("who_gave", ["milk"], "Mary", stale_values=["Fred"], evidence=["e9"])
    b = bundle(history=[ev(4, "Fred handed the milk to Jeff.", actors=["Fred", "Jeff"], score=0.05)],
               recent=[ev(9, "Mary handed the milk to Fred.", actors=["Mary", "Fred"])])  # fmt: skip
    assert score_query(give, b)["stale"] is True
    who = q("who_was_at", [], ["Aela", "Bram"], params={"event": "e4"}, stale_values=["Cyra"])
    assert score_query(who, b)["stale"] is None  # its answer cannot be a superseded value
    records = [record("full", "where_now", True, stale=False), record("full", "who_gave", False, stale=True),
               record("full", "who_was_at", True, stale=None)]  # fmt: skip
    report = build_report(records, {"modes": ["full"], "datasets": ["d"], "run_id": "t"})
    assert report["overall"]["full"]["state"]["stale_rate"] == 0.0
    assert report["overall"]["full"]["history"]["stale_rate"] == 1.0
    markdown = summary_markdown(report)
    assert "| stale-fact rate ↓ (current state) | 0.000 |" in markdown
    assert "| earlier-answer rate ↓ (history kinds) | 1.000 |" in markdown
    assert "| stale-eligible (state / history) | 1 / 1 |" in markdown
