"""Dataset adapters (evals/datasets): valid events, faithful conversions, well-formed queries.

The bAbI and ProPara tests read the public data in ``../shared/datasets`` and skip when it is not
there; LoCoMo is tested on a tiny hand-made file of the same shape (the real data is not shipped).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from ecs.reducer import ChronicleEvent, WorldState, apply_event, is_dead, location_of, resolve
from evals.datasets.babi import (
    TASKS,
    BabiDataset,
    BabiParseError,
    ParsedQuestion,
    Statement,
    babi_file,
    parse_question,
    parse_statement,
    read_stories,
)
from evals.datasets.base import QUERY_KINDS, EvalQuery, EvalStream
from evals.datasets.common import DEFAULT_DATA_DIR, DatasetNotFoundError, validate_events
from evals.datasets.generated import GeneratedDataset
from evals.datasets.locomo import RECALL, LocomoDataset, parse_session_time
from evals.datasets.propara import ProParaDataset, read_paragraphs
from evals.datasets.registry import DatasetSpecError, get_dataset
from rag.events import EventIn, TransferEffect, normalize_name

AGREEMENT_MIN = 0.99


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not DEFAULT_DATA_DIR.is_dir():
        pytest.skip(f"public datasets not available: {DEFAULT_DATA_DIR} is absent (see ../shared/datasets)")
    return DEFAULT_DATA_DIR


# --------------------------------------------------------------------------------------------------
# Shared checks


def check_stream(stream: EvalStream, kinds: Iterable[str]) -> list[EventIn]:
    """Events validate as the API's batches; ids unique; queries point inside the stream."""
    assert stream.events, stream.name
    events = validate_events(stream.events)
    ids = [e.external_id for e in events]
    assert all(ids), f"{stream.name}: an event without external_id"
    assert len(set(ids)) == len(ids), f"{stream.name}: duplicate external ids"
    position = {eid: i for i, eid in enumerate(ids)}
    allowed = set(kinds)
    query_ids = [q.id for q in stream.queries]
    assert len(set(query_ids)) == len(query_ids), f"{stream.name}: duplicate query ids"
    for q in stream.queries:
        assert q.kind in allowed, q
        assert q.text.strip(), q
        assert 0 <= q.asked_after <= len(events), q
        for evidence in q.evidence:
            assert evidence in position, (q.id, evidence)
            assert position[evidence] < q.asked_after, f"{q.id}: evidence {evidence} not yet ingested"
        assert q.answer not in q.stale_values, q
    return events


def chronicle(events: list[EventIn]) -> Iterable[tuple[int, ChronicleEvent]]:
    for i, event in enumerate(events):
        assert event.external_id is not None
        yield (
            i,
            ChronicleEvent.from_event_in(event, event_id=event.external_id, sequence=i + 1, chronicle_id="c"),
        )


def location_name(state: WorldState, ref: str) -> str | None:
    entity = resolve(state, ref)
    if entity is None:
        return None
    place = location_of(state, entity.id)
    return None if place is None else state.entities[place].name


def replay_answers(
    events: list[EventIn], queries: list[EvalQuery]
) -> tuple[list[tuple[EvalQuery, Any]], int]:
    """Fold the events through the reducer, answering each query from the state after
    ``asked_after`` events; returns (query, reducer answer) pairs and the anomaly count."""
    state = WorldState(chronicle_id="c")
    ordered = sorted(queries, key=lambda q: q.asked_after)
    out: list[tuple[EvalQuery, Any]] = []
    anomalies = 0
    feed = iter(chronicle(events))
    done = 0
    for q in ordered:
        while done < q.asked_after:
            _, event = next(feed)
            anomalies += len(apply_event(state, event).anomalies)
            done += 1
        subject = q.subjects[0]
        if q.kind == "where_now":
            entity = resolve(state, subject)
            got = None if entity is None or is_dead(entity) else location_name(state, subject)
            if got is not None and q.answer is not None and normalize_name(got) == normalize_name(q.answer):
                got = q.answer
        elif q.kind == "is_at":
            where = location_name(state, subject)
            got = (
                "yes"
                if where is not None and normalize_name(where) == normalize_name(q.subjects[1])
                else "no"
            )
        elif q.kind == "exists":
            entity = resolve(state, subject)
            got = "yes" if entity is not None and not is_dead(entity) else "no"
        else:  # pragma: no cover
            raise AssertionError(q.kind)
        out.append((q, got))
    for _, event in feed:
        anomalies += len(apply_event(state, event).anomalies)
    return out, anomalies


# --------------------------------------------------------------------------------------------------
# bAbI: parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mary moved to the bathroom.", Statement("move", "Mary", place="bathroom")),
        ("John went to the hallway.", Statement("move", "John", place="hallway")),
        ("Daniel went back to the garden.", Statement("move", "Daniel", place="garden")),
        ("Sandra journeyed to the kitchen.", Statement("move", "Sandra", place="kitchen")),
        ("John travelled to the office.", Statement("move", "John", place="office")),
        ("John traveled to the office.", Statement("move", "John", place="office")),
        ("Sandra got the football there.", Statement("take", "Sandra", item="football")),
        ("Sandra grabbed the apple there.", Statement("take", "Sandra", item="apple")),
        ("Mary picked up the milk there.", Statement("take", "Mary", item="milk")),
        ("Daniel took the football there.", Statement("take", "Daniel", item="football")),
        ("Daniel took the football.", Statement("take", "Daniel", item="football")),
        ("John dropped the apple.", Statement("drop", "John", item="apple")),
        ("John dropped the apple there.", Statement("drop", "John", item="apple")),
        ("John discarded the milk.", Statement("drop", "John", item="milk")),
        ("John discarded the milk there.", Statement("drop", "John", item="milk")),
        ("Mary put down the football.", Statement("drop", "Mary", item="football")),
        ("Mary put down the football there.", Statement("drop", "Mary", item="football")),
        ("Mary left the football.", Statement("drop", "Mary", item="football")),
        ("Mary left the football there.", Statement("drop", "Mary", item="football")),
        ("Fred gave the football to Bill.", Statement("give", "Fred", item="football", receiver="Bill")),
        ("Fred handed the milk to Jeff.", Statement("give", "Fred", item="milk", receiver="Jeff")),
        ("Bill passed the apple to Mary.", Statement("give", "Bill", item="apple", receiver="Mary")),
    ],
)
def test_babi_statement_templates(text: str, expected: Statement) -> None:
    assert parse_statement(text) == expected


@pytest.mark.parametrize(
    ("text", "kind", "subjects"),
    [
        ("Where is Mary?", "where_now", ["Mary"]),
        ("Where is the football?", "where_now", ["football"]),
        ("Is Daniel in the office?", "is_at", ["Daniel", "office"]),
        ("Who gave the football to Fred?", "who_gave", ["football", "Fred"]),
        ("Who gave the football?", "who_gave", ["football"]),
        ("What did Fred give to Bill?", "what_given", ["Fred", "Bill"]),
        ("Who received the football?", "who_received", ["football"]),
        ("Who did Fred give the football to?", "who_received", ["football", "Fred"]),
    ],
)
def test_babi_question_templates(text: str, kind: str, subjects: list[str]) -> None:
    assert parse_question(text) == ParsedQuestion(kind, subjects)
    assert kind in QUERY_KINDS


@pytest.mark.parametrize("text", ["Mary is in the bathroom.", "The football is in the garden.", ""])
def test_babi_unknown_sentences_are_not_guessed(text: str) -> None:
    assert parse_statement(text) is None
    assert parse_question(text) is None


@pytest.mark.parametrize("task", TASKS)
def test_babi_files_parse_completely(data_dir: Path, task: int) -> None:
    stories = read_stories(babi_file(data_dir, task))
    assert len(stories) == 200
    statements = [line for s in stories for line in s.lines if not line.is_question]
    questions = [line for s in stories for line in s.lines if line.is_question]
    assert len(questions) == 1000
    unparsed_statements = [line.text for line in statements if parse_statement(line.text) is None]
    unparsed_questions = [line.text for line in questions if parse_question(line.text) is None]
    assert unparsed_statements == [], f"task {task}: {len(unparsed_statements)} unparsed statements"
    assert unparsed_questions == [], f"task {task}: {len(unparsed_questions)} unparsed questions"


def test_babi_strict_and_lenient(tmp_path: Path) -> None:
    folder = tmp_path / "babi"
    folder.mkdir()
    (folder / "qa1_single-supporting-fact_test.txt").write_text(
        "1 Mary moved to the bathroom.\n2 Mary sang a song.\n3 Where is Mary? \tbathroom\t1\n"
        "4 Why is Mary here? \tno idea\t1\n"
    )
    with pytest.raises(BabiParseError, match=r"unparsed statement 'Mary sang a song\.'"):
        list(BabiDataset(1, tmp_path).streams())
    (stream,) = BabiDataset(1, tmp_path, strict=False).streams()
    assert [e["kind"] for e in stream.events] == ["move", "unparsed"]
    assert "effects" not in stream.events[1]
    assert [q.kind for q in stream.queries] == ["where_now"]


# --------------------------------------------------------------------------------------------------
# bAbI: conversion


def test_babi_events_look_like_a_narrative_ai_wrote_them(data_dir: Path) -> None:
    (stream,) = BabiDataset(5, data_dir, limit=1).streams()
    first = stream.events[:3]
    assert first[0] == {
        "summary": "Fred picked up the football there.",
        "external_id": "babi5-s001-l01",
        "kind": "take",
        "actors": ["Fred"],
        "effects": [{"op": "transfer", "item": "football", "to": "Fred"}],
        "importance": 0.5,
    }
    assert first[1]["effects"] == [{"op": "transfer", "item": "football", "to": "Jeff", "from": "Fred"}]
    assert first[1]["actors"] == [{"name": "Fred", "role": "giver"}, {"name": "Jeff", "role": "receiver"}]
    assert first[2]["effects"] == [{"op": "move", "entity": "Bill", "to": "bathroom"}]
    assert first[2]["location"] == "bathroom"
    q = stream.queries[0]
    assert (q.id, q.kind, q.subjects, q.answer, q.asked_after, q.evidence) == (
        "babi5-s001-q03", "what_given", ["Fred", "Jeff"], "football", 2, ["babi5-s001-l02"],
    )  # fmt: skip


def test_babi_drop_places_item_where_the_actor_is(data_dir: Path) -> None:
    (stream,) = BabiDataset(2, data_dir, limit=1).streams()
    events = check_stream(stream, QUERY_KINDS)
    place: dict[str, str] = {}
    drops = 0
    for event in events:
        if event.kind == "move":
            place[event.effects[0].entity] = event.effects[0].to  # type: ignore[union-attr]
        if event.kind == "drop" and event.actor_refs()[0].name in place:
            drops += 1
            assert event.location == place[event.actor_refs()[0].name]
            assert event.effects[0].to == event.location  # type: ignore[union-attr]
    assert drops > 0


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("long", [False, True], ids=["stories", "long"])
def test_babi_streams_are_valid(data_dir: Path, task: int, long: bool) -> None:
    ds = BabiDataset(task, data_dir, long=long)
    streams = list(ds.streams())
    assert len(streams) == (1 if long else 200)
    n_events = n_queries = 0
    for stream in streams:
        check_stream(stream, QUERY_KINDS)
        n_events += len(stream.events)
        n_queries += len(stream.queries)
        for q in stream.queries:
            assert q.answer is not None
            assert q.evidence, q
    assert n_queries == 1000
    assert n_events == sum(len(s.lines) for s in read_stories(ds.path)) - 1000


@pytest.mark.parametrize(
    ("task", "long"), [(1, False), (2, False), (6, False), (1, True), (2, True), (6, True)]
)
def test_babi_reducer_agrees_with_gold(data_dir: Path, task: int, long: bool) -> None:
    """Replaying a stream's events through the reducer answers (nearly) every question like bAbI:
    the conversion is faithful. Measured: 1000/1000 for each of these."""
    agree = total = anomalies = 0
    wrong: list[tuple[str, Any, Any]] = []
    for stream in BabiDataset(task, data_dir, long=long).streams():
        answers, n_anomalies = replay_answers(validate_events(stream.events), stream.queries)
        anomalies += n_anomalies
        for q, got in answers:
            total += 1
            if got == q.answer:
                agree += 1
            else:
                wrong.append((q.id, q.answer, got))
    rate = agree / total
    assert total == 1000
    assert rate >= AGREEMENT_MIN, (
        f"babi{'-long' if long else ''}:{task} agreement {agree}/{total}: {wrong[:5]}"
    )
    assert anomalies == 0


@pytest.mark.parametrize("long", [False, True], ids=["stories", "long"])
def test_babi5_gives_agree_with_gold(data_dir: Path, long: bool) -> None:
    """Task 5 asks about gives, which the state does not keep as history: answer from the emitted
    ``transfer`` effects (latest matching give). Measured 998/1000: two bAbI answers ignore a later
    give of another item between the same people (story 63 line 27, story 186 line 22)."""
    agree = total = 0
    for stream in BabiDataset(5, data_dir, long=long).streams():
        events = validate_events(stream.events)
        gives = [
            (i, e.from_, e.item, e.to)
            for i, event in enumerate(events)
            for e in event.effects
            if isinstance(e, TransferEffect) and e.from_ is not None
        ]
        for q in stream.queries:
            s = q.subjects
            got = None
            for i, giver, item, receiver in reversed(gives):
                if i >= q.asked_after:
                    continue
                if q.kind == "who_gave" and item == s[0] and (len(s) < 2 or receiver == s[1]):
                    got = giver
                elif q.kind == "what_given" and (giver, receiver) == (s[0], s[1]):
                    got = item
                elif q.kind == "who_received" and item == s[0] and (len(s) < 2 or giver == s[1]):
                    got = receiver
                if got is not None:
                    break
            total += 1
            agree += got == q.answer
    assert total == 1000
    assert agree / total >= AGREEMENT_MIN, f"{agree}/{total}"


def test_babi_long_is_one_chronicle_of_all_stories(data_dir: Path) -> None:
    stories = list(BabiDataset(1, data_dir).streams())
    (long,) = BabiDataset(1, data_dir, long=True).streams()
    assert long.name == "babi-long1"
    assert long.events == [e for s in stories for e in s.events]
    offset = 0
    by_id = {q.id: q for q in long.queries}
    for story in stories:
        for q in story.queries:
            assert by_id[q.id].asked_after == q.asked_after + offset
            assert by_id[q.id].answer == q.answer
        offset += len(story.events)
    # Heavy supersession: the same few people move hundreds of times.
    movers = Counter(e["actors"][0] for e in long.events if e["kind"] == "move")
    assert len(movers) <= 6
    assert min(movers.values()) > 100
    stale = [q for q in long.queries if q.kind == "where_now" and len(q.stale_values) >= 3]
    assert len(stale) > 900


def test_babi_limits(data_dir: Path) -> None:
    assert [s.name for s in BabiDataset(2, data_dir, limit=3).streams()] == [
        "babi2-s001", "babi2-s002", "babi2-s003",
    ]  # fmt: skip
    (long,) = BabiDataset(2, data_dir, long=True, max_stories=2).streams()
    assert len(long.events) == sum(len(s.events) for s in BabiDataset(2, data_dir, limit=2).streams())


# --------------------------------------------------------------------------------------------------
# ProPara


@pytest.fixture(scope="module")
def propara_streams(data_dir: Path) -> list[EvalStream]:
    return list(ProParaDataset(data_dir).streams())


def test_propara_streams_and_queries(data_dir: Path, propara_streams: list[EvalStream]) -> None:
    paragraphs = {p.para_id: p for p in read_paragraphs(ProParaDataset(data_dir).path)}
    assert len(propara_streams) == 391
    kinds: Counter[str] = Counter()
    for stream in propara_streams:
        events = check_stream(stream, ("where_now", "exists"))
        paragraph = paragraphs[stream.name.removeprefix("propara-")]
        assert len(events) == len(paragraph.sentences) + 1
        assert [e.summary for e in events[1:]] == paragraph.sentences
        assert events[0].kind == "setup"
        assert 1 <= len(stream.queries) <= 12
        assert len({q.subjects[0] for q in stream.queries}) <= 2
        assert len({q.asked_after for q in stream.queries}) <= 6
        for q in stream.queries:
            kinds[q.kind] += 1
            assert len(q.subjects) == 1
            assert 2 <= q.asked_after <= len(events)
            assert len(q.evidence) == 1
            if q.kind == "exists":
                assert q.answer in ("yes", "no")
            else:
                assert q.answer is None or isinstance(q.answer, str)
                assert q.answer != "?"
    assert kinds["exists"] > 2000
    assert kinds["where_now"] > 1500


def test_propara_queries_follow_the_grid(data_dir: Path, propara_streams: list[EvalStream]) -> None:
    paragraphs = {p.para_id: p for p in read_paragraphs(ProParaDataset(data_dir).path)}
    stream = next(s for s in propara_streams if s.name == "propara-7")
    grid = paragraphs["7"]
    assert grid.participants == ["magma", "lava", "new rock"]
    for q in stream.queries:
        row = grid.states[grid.participants.index(q.subjects[0])]
        value = row[q.asked_after - 1]
        if q.kind == "exists":
            assert q.answer == ("no" if value == "-" else "yes")
        else:
            assert q.answer == (None if value == "-" else value)
    events = stream.events
    assert events[0]["effects"] == [
        {"op": "spawn", "entity": "magma", "kind": "participant"},
        {"op": "move", "entity": "magma", "to": "deep in the earth"},
    ]
    assert events[4]["effects"] == [
        {"op": "spawn", "entity": "lava", "kind": "participant"},
        {"op": "destroy", "entity": "magma"},
    ]


def test_propara_reducer_agrees_with_grid(propara_streams: list[EvalStream]) -> None:
    """The grid-derived effects, replayed, answer every query like the grid (measured: all)."""
    agree = total = anomalies = 0
    wrong: list[tuple[str, Any, Any]] = []
    for stream in propara_streams:
        answers, n = replay_answers(validate_events(stream.events), stream.queries)
        anomalies += n
        for q, got in answers:
            total += 1
            if got == q.answer:
                agree += 1
            else:
                wrong.append((q.id, q.answer, got))
    assert agree == total, wrong[:5]
    assert anomalies == 0


def test_propara_names_aliases_and_duplicates(propara_streams: list[EvalStream]) -> None:
    by_name = {s.name: s for s in propara_streams}
    # "droplets; precipitation; rain" -> droplets, with the other alternatives as aliases.
    effects = [e for ev in by_name["propara-13"].events for e in ev.get("effects", [])]
    assert {"op": "alias", "entity": "droplets", "alias": "precipitation"} in effects
    # A participant listed twice gets a distinct name.
    spawned = [
        e["entity"]
        for ev in by_name["propara-263"].events
        for e in ev.get("effects", [])
        if e["op"] == "spawn"
    ]
    assert "bales" in spawned
    assert "bales (2)" in spawned


# --------------------------------------------------------------------------------------------------
# LoCoMo (a tiny hand-made file of the same shape; the real data is not shipped)


def locomo_sample() -> list[dict[str, Any]]:
    return [
        {
            "sample_id": "conv-1",
            "conversation": {
                "speaker_a": "Ana",
                "speaker_b": "Ben",
                "session_2_date_time": "8:05 am on 10 June, 2023",
                "session_2": [
                    {"speaker": "Ben", "dia_id": "D2:1", "text": "I moved to Lisbon last week."},
                    {"speaker": "Ana", "dia_id": "D2:2", "text": "Wow!", "blip_caption": "a photo of a tram"},
                ],
                "session_1_date_time": "1:56 pm on 8 May, 2023",
                "session_1": [
                    {"speaker": "Ana", "dia_id": "D1:1", "text": "Hi Ben, how is Porto?"},
                    {"speaker": "Ben", "dia_id": "D1:2", "text": "Rainy, but I love it."},
                ],
            },
            "qa": [
                {
                    "question": "Where does Ben live now?",
                    "answer": "Lisbon",
                    "evidence": ["D2:1"],
                    "category": 1,
                },
                {
                    "question": "When did Ana greet Ben?",
                    "answer": 2023,
                    "evidence": ["D1:1; D9:9"],
                    "category": 2,
                },
                {
                    "question": "What did Ana paint?",
                    "adversarial_answer": "a tram",
                    "evidence": ["D2:2"],
                    "category": 5,
                },
            ],
        },
        {
            "sample_id": "conv-2",
            "conversation": {
                "speaker_a": "Cy",
                "speaker_b": "Di",
                "session_1_date_time": "sometime",
                "session_1": [{"speaker": "Cy", "dia_id": "D1:1", "text": "Hello."}],
            },
            "qa": [],
        },
    ]


def test_locomo_adapter(tmp_path: Path) -> None:
    path = tmp_path / "locomo10.json"
    path.write_text(json.dumps(locomo_sample()))
    ds = get_dataset(f"locomo:{path}")
    assert isinstance(ds, LocomoDataset)
    first, second = ds.streams()
    events = check_stream(first, [RECALL])
    assert first.name == "locomo-conv-1"
    assert [e.external_id for e in events] == [
        "locomo-conv-1-D1:1", "locomo-conv-1-D1:2", "locomo-conv-1-D2:1", "locomo-conv-1-D2:2",
    ]  # fmt: skip
    assert events[0].summary == "Ana: Hi Ben, how is Porto?"
    assert events[0].kind == "dialogue"
    assert events[0].actor_refs()[0].name == "Ana"
    assert events[0].occurred_at == dt.datetime(2023, 5, 8, 13, 56, tzinfo=dt.UTC)
    assert events[3].occurred_at == dt.datetime(2023, 6, 10, 8, 5, tzinfo=dt.UTC)
    assert events[3].summary == "Ana: Wow! [shares a photo: a photo of a tram]"
    q1, q2, q3 = first.queries
    assert (q1.kind, q1.answer, q1.evidence, q1.asked_after) == (RECALL, "Lisbon", ["locomo-conv-1-D2:1"], 4)
    assert q2.answer == "2023"
    assert q2.evidence == ["locomo-conv-1-D1:1"]
    assert q2.params == {"category": 2, "unresolved_evidence": ["D9:9"]}
    assert q3.answer is None
    assert q3.params["adversarial_answer"] == "a tram"
    (only,) = check_stream(second, [RECALL])
    assert only.occurred_at is None
    assert [s.name for s in get_dataset(f"locomo:{path}", limit=1).streams()] == ["locomo-conv-1"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:56 pm on 8 May, 2023", dt.datetime(2023, 5, 8, 13, 56, tzinfo=dt.UTC)),
        ("12:09 am on 1 Jan, 2024", dt.datetime(2024, 1, 1, 0, 9, tzinfo=dt.UTC)),
        ("12:30 pm on 31 December, 2022", dt.datetime(2022, 12, 31, 12, 30, tzinfo=dt.UTC)),
        ("noonish", None),
        ("1:00 pm on 31 February, 2023", None),
        (None, None),
    ],
)
def test_locomo_session_times(text: Any, expected: dt.datetime | None) -> None:
    assert parse_session_time(text) == expected


# --------------------------------------------------------------------------------------------------
# Generator


def test_generated_dataset() -> None:
    ds = get_dataset("generator:300:3")
    assert isinstance(ds, GeneratedDataset)
    (stream,) = ds.streams()
    events = check_stream(stream, QUERY_KINDS)
    assert len(events) == 300
    assert events[0].external_id == "gen-3-0000000"
    kinds = Counter(q.kind for q in stream.queries)
    assert set(kinds) == {
        "where_now", "who_holds", "is_alive", "feeling", "what_happened", "who_was_at", "where_before",
        "state_as_of",
    }  # fmt: skip
    for q in stream.queries:
        if q.kind == "who_was_at":
            assert q.subjects == []
            assert q.params["event"] in {e.external_id for e in events}
            assert q.answer == sorted(q.answer)
        if q.kind == "state_as_of":
            assert 1 <= q.params["as_of_sequence"] <= q.asked_after
        if q.kind == "feeling":
            assert set(q.answer) == {"dimension", "value", "sign"}
            assert q.params["dimension"] == "trust"
    # Deterministic.
    (again,) = get_dataset("generator:300:3").streams()
    assert again == stream
    assert [s.name for s in GeneratedDataset(50, [1, 2]).streams()] == [
        "generator-50-seed1",
        "generator-50-seed2",
    ]


# --------------------------------------------------------------------------------------------------
# Registry


def test_registry_specs(data_dir: Path) -> None:
    ds = get_dataset("babi:1")
    assert isinstance(ds, BabiDataset)
    assert (ds.task, ds.long, ds.name) == (1, False, "babi:1")
    ds = get_dataset("babi-long:6", data_dir)
    assert isinstance(ds, BabiDataset)
    assert (ds.task, ds.long, ds.name) == (6, True, "babi-long:6")
    ds = get_dataset("propara", str(data_dir), limit=5)
    assert isinstance(ds, ProParaDataset)
    assert len(list(ds.streams())) == 5
    ds = get_dataset("generator:100")
    assert isinstance(ds, GeneratedDataset)
    assert (ds.n_events, ds.seeds) == (100, [0])
    assert isinstance(get_dataset("generator:100:1,2"), GeneratedDataset)
    assert len(list(get_dataset("babi:5", limit=4).streams())) == 4


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown dataset spec"),
        ("babi", "expected babi:T"),
        ("babi:3", "T one of 1, 2, 5, 6"),
        ("babi:x", "must be an integer"),
        ("babi-long:", "expected babi-long:T"),
        ("generator", "expected generator:N"),
        ("generator:abc", "must be an integer"),
        ("generator:0", "must be positive"),
        ("generator:10:1:2", "expected generator:N"),
        ("propara:7", "takes no argument"),
        ("locomo:", "expected locomo:/path"),
    ],
)
def test_registry_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(DatasetSpecError, match=message):
        get_dataset(spec)


@pytest.mark.parametrize("spec", ["babi:1", "babi-long:2", "propara"])
def test_registry_missing_data_folder(tmp_path: Path, spec: str) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"not found.*\.\./shared/datasets"):
        get_dataset(spec, tmp_path / "absent")


def test_registry_missing_locomo_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"locomo10\.json"):
        get_dataset(f"locomo:{tmp_path / 'locomo10.json'}")
