"""ProPara grids v1 (Allen Institute for AI, Apache-2.0): participants' existence and location
through a procedural paragraph.

Input: ``<data_dir>/propara/grids.v1.train.json``, JSON lines; each paragraph has ``para_id``,
``sentence_texts`` (n steps), ``participants`` and ``states`` (per participant n + 1 values: the
state before the first step, then after each step; ``-`` = does not exist, ``?`` = exists, place
unknown, anything else = a location name).

What the benchmark measures, and therefore how events are made
    ProPara's grid IS the annotation of what each sentence changes. A narrative AI would write
    structured effects from its own reading of the sentence; here we write the effects the grid
    states, because the point is whether the service keeps and serves tracked state correctly over
    a process - not natural-language understanding. So the effects are gold by construction, and
    the queries check that the service returns the state those effects establish (including after
    destruction, re-creation and moves between locations). This is stated, not hidden: a system
    that only reads the summaries gets no help from the grid.

One stream per paragraph (391 in the train split), ``1 + n`` events:

- ``propara-{para_id}-s00`` (kind ``setup``): the state before the first step, as a sentence
  ("Before the process starts: magma is at deep in the earth."), with the effects creating the
  participants that exist then.
- ``propara-{para_id}-s{i:02d}`` for step i (kind ``step``): summary = the sentence; effects from
  the grid transition ``states[i-1] -> states[i]`` of every participant:

  ==================  =======================================================================
  transition          effects
  ==================  =======================================================================
  ``-`` -> place      ``spawn`` (kind ``participant``; the first time the name appears) or
                      ``status exists`` (re-creation after a destroy, or a name first seen as
                      someone's location), then ``move`` -> place
  ``-`` -> ``?``      the same, without the move
  place -> place'     ``move`` -> place'
  ``?`` -> place      ``move`` -> place
  place -> ``?``      nothing: the place is no longer known, no position effect
  X -> ``-``          ``destroy`` (status ``destroyed``; the reducer keeps the last position)
  ==================  =======================================================================

  Actors: the participants already known to the chronicle whose name occurs in the sentence
  (whole words, case-insensitive; role ``participant``). Events have no location, so presence
  never moves anyone.

Names
    Locations are the grid's strings, verbatim. A participant is named by the first ``;``-separated
    alternative of its grid string (``"droplets; precipitation; rain"`` -> ``droplets``); the other
    alternatives are declared as aliases unless they collide with another participant's name or
    alias or with a location string of the paragraph. A participant string repeated in a paragraph
    gets a suffix (``bales (2)``). A location string may name another participant ("the salt is in
    the water"): then it resolves to that entity, which is what it means. The one place a
    participant's location is its own name (``young frog`` at ``young frog``) gets no position
    effect and no ``where_now`` query.

Queries (at most 2 participants x 3 steps per paragraph, deterministic): the participants with the
most state changes (ties: grid order); for each, the last step plus the two latest other steps
where its state changed (filled up with the earliest steps). At each chosen step k (``asked_after`` =
k + 1: the setup event and k steps), ``exists`` (``yes``/``no``) and, unless the place is ``?``,
``where_now`` (the location, ``None`` when it does not exist). ``evidence`` = the event that
established the current value; ``stale_values`` = earlier distinct known places (most recent
first; for ``None`` answers the place it was last at), or the other existence answer if it held
earlier. ``exists`` is not asked while a participant has not been created yet but its name already
denotes a place in the chronicle ("plant" as the place water goes, before the plant grows): the
chronicle rightly knows a "plant" then, so the question is ambiguous.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from evals.datasets.base import EvalQuery, EvalStream
from evals.datasets.common import event_json, require_dir, require_file, resolve_data_dir
from rag.events import (
    ActorRef,
    AliasEffect,
    DestroyEffect,
    Effect,
    EventIn,
    MoveEffect,
    SpawnEffect,
    StatusEffect,
    normalize_name,
)

__all__ = [
    "ABSENT",
    "GRIDS_FILE",
    "UNKNOWN",
    "ProParaDataset",
    "ProParaParagraph",
    "paragraph_stream",
    "read_paragraphs",
]

GRIDS_FILE: Final = "grids.v1.train.json"
ABSENT: Final = "-"
UNKNOWN: Final = "?"
PARTICIPANT_KIND: Final = "participant"
QUERY_PARTICIPANTS: Final = 2
QUERY_STEPS: Final = 3


class ProParaParagraph:
    __slots__ = ("para_id", "participants", "sentences", "states")

    def __init__(self, para_id: str, sentences: list[str], participants: list[str], states: list[list[str]]):
        if len(states) != len(participants):
            raise ValueError(f"paragraph {para_id}: {len(participants)} participants, {len(states)} rows")
        for row in states:
            if len(row) != len(sentences) + 1:
                raise ValueError(
                    f"paragraph {para_id}: a state row has {len(row)} values, not {len(sentences) + 1}"
                )
        self.para_id = para_id
        self.sentences = sentences
        self.participants = participants
        self.states = states


def read_paragraphs(path: Path) -> list[ProParaParagraph]:
    out: list[ProParaParagraph] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            out.append(
                ProParaParagraph(
                    str(row["para_id"]),
                    [" ".join(s.split()) for s in row["sentence_texts"]],
                    [" ".join(p.split()) for p in row["participants"]],
                    [[" ".join(x.split()) for x in r] for r in row["states"]],
                )
            )
    return out


def _names(paragraph: ProParaParagraph) -> tuple[list[str], list[list[str]]]:
    """Each participant's entity name and its (non-colliding) aliases."""
    locations = {normalize_name(x) for row in paragraph.states for x in row if x not in (ABSENT, UNKNOWN)}
    alternatives = [
        [a for a in (s.strip() for s in p.split(";")) if a] or [p] for p in paragraph.participants
    ]
    names: list[str] = []
    taken: set[str] = set()
    for alts in alternatives:
        base, name, n = alts[0], alts[0], 1
        while normalize_name(name) in taken:
            n += 1
            name = f"{base} ({n})"
        names.append(name)
        taken.add(normalize_name(name))
    use_count: dict[str, int] = {}
    for alts in alternatives:
        for a in {normalize_name(a) for a in alts}:
            use_count[a] = use_count.get(a, 0) + 1
    aliases = [
        [
            a
            for a in alts[1:]
            if use_count[normalize_name(a)] == 1
            and normalize_name(a) not in taken
            and normalize_name(a) not in locations
        ]
        for alts in alternatives
    ]
    return names, aliases


def _known(value: str) -> bool:
    return value not in (ABSENT, UNKNOWN)


def _mentions(sentence: str, names: list[str]) -> bool:
    text = sentence.casefold()
    return any(re.search(rf"(?<!\w){re.escape(n.casefold())}(?!\w)", text) for n in names)


def paragraph_stream(paragraph: ProParaParagraph) -> EvalStream:
    pid = paragraph.para_id
    names, aliases = _names(paragraph)
    n_steps = len(paragraph.sentences)
    ids = [f"propara-{pid}-s{i:02d}" for i in range(n_steps + 1)]
    seen: dict[str, int] = {}  # normalized names the chronicle knows -> column first named
    spawned: dict[int, int] = {}  # participant -> column it was first created
    events: list[dict[str, Any]] = []

    def own_place(p: int, value: str) -> bool:
        return _known(value) and normalize_name(value) == normalize_name(names[p])

    def effects_for(p: int, column: int, before: str, after: str) -> tuple[list[Effect], list[Effect]]:
        """(creation effects, other effects) of one participant's transition."""
        name = names[p]
        created: list[Effect] = []
        other: list[Effect] = []
        if after == ABSENT:
            if before != ABSENT:
                other.append(DestroyEffect(entity=name))
            return created, other
        if before == ABSENT:
            if p not in spawned and normalize_name(name) not in seen:
                created.append(SpawnEffect(entity=name, kind=PARTICIPANT_KIND))
            else:
                created.append(StatusEffect(entity=name, status="exists"))
            if p not in spawned:
                created.extend(AliasEffect(entity=name, alias=a) for a in aliases[p])
            spawned.setdefault(p, column)
        if _known(after) and after != before and not own_place(p, after):
            other.append(MoveEffect(entity=name, to=after))
        return created, other

    def transition(column: int) -> list[Effect]:
        """The effects of going from ``states[column - 1]`` to ``states[column]`` (column 0: from
        nothing to the initial state): creations first, so that a participant named as another's
        location in the same event is created as a participant."""
        created: list[Effect] = []
        other: list[Effect] = []
        for p, row in enumerate(paragraph.states):
            c, o = effects_for(p, column, ABSENT if column == 0 else row[column - 1], row[column])
            created.extend(c)
            other.extend(o)
        effects = created + other
        for e in effects:
            for ref in (getattr(e, "entity", None), getattr(e, "to", None), getattr(e, "alias", None)):
                if ref is not None:
                    seen.setdefault(normalize_name(ref), column)
        return effects

    # The setup event: what exists before the first step.
    effects = transition(0)
    described: list[str] = []
    for p, row in enumerate(paragraph.states):
        if row[0] == UNKNOWN:
            described.append(f"{names[p]} exists (location unknown)")
        elif row[0] != ABSENT:
            described.append(f"{names[p]} is at {row[0]}")
    listing = ", ".join(names)
    summary = (
        f"Before the process starts: {'; '.join(described)}."
        if described
        else f"Before the process starts, none of its participants ({listing}) exists yet."
    )
    events.append(event_json(EventIn(summary=summary, external_id=ids[0], kind="setup", effects=effects)))

    for i, sentence in enumerate(paragraph.sentences, 1):
        actors: list[str | ActorRef] = [
            ActorRef(name=names[p], role="participant")
            for p in range(len(names))
            if normalize_name(names[p]) in seen
            and _mentions(sentence, [a.strip() for a in paragraph.participants[p].split(";") if a.strip()])
        ]
        effects = transition(i)
        events.append(
            event_json(
                EventIn(summary=sentence, external_id=ids[i], kind="step", actors=actors, effects=effects)
            )
        )

    queries: list[EvalQuery] = []
    changes = [sum(row[k] != row[k - 1] for k in range(1, n_steps + 1)) for row in paragraph.states]
    chosen = sorted(range(len(names)), key=lambda p: (-changes[p], p))[:QUERY_PARTICIPANTS]
    for p in sorted(chosen):
        row = paragraph.states[p]
        changed = [k for k in range(1, n_steps) if row[k] != row[k - 1]]
        others = changed[-(QUERY_STEPS - 1) :]
        others += [k for k in range(1, n_steps) if k not in others][: QUERY_STEPS - 1 - len(others)]
        steps = sorted({*others, n_steps})
        for k in steps:
            # Not created yet, but the name already denotes a place the chronicle knows: "does
            # it exist?" is ambiguous there, so it is not asked.
            as_place = (
                seen.get(normalize_name(names[p]), n_steps + 1) <= k and spawned.get(p, n_steps + 1) > k
            )
            queries.extend(_queries(pid, names[p], row, k, ids, own_place(p, row[k]), not as_place))
    queries.sort(key=lambda q: (q.asked_after, q.id))
    return EvalStream(name=f"propara-{pid}", events=events, queries=queries)


def _queries(
    pid: str, name: str, row: list[str], k: int, ids: list[str], own_place: bool, ask_exists: bool
) -> list[EvalQuery]:
    value = row[k]
    exists = value != ABSENT
    # The step that established the current existence / place (0 = the setup event).
    since_exists = k
    while since_exists > 0 and (row[since_exists - 1] != ABSENT) == exists:
        since_exists -= 1
    since_value = k
    while since_value > 0 and row[since_value - 1] == value:
        since_value -= 1
    earlier = row[:k]
    slug = re.sub(r"[^a-z0-9]+", "-", name.casefold()).strip("-") or "p"
    other = "no" if exists else "yes"
    out: list[EvalQuery] = []
    if ask_exists:
        out.append(
            EvalQuery(
                id=f"propara-{pid}-{slug}-k{k:02d}-exists",
                kind="exists",
                text=f"After step {k}, does the {name} exist?",
                asked_after=k + 1,
                subjects=[name],
                answer="yes" if exists else "no",
                evidence=[ids[since_exists]],
                stale_values=[other] if any((v != ABSENT) != exists for v in earlier) else [],
            )
        )
    if value != UNKNOWN and not own_place:
        answer = value if exists else None
        places: list[str] = []
        for v in reversed(earlier):
            if _known(v) and v != answer and v not in places:
                places.append(v)
        out.append(
            EvalQuery(
                id=f"propara-{pid}-{slug}-k{k:02d}-where",
                kind="where_now",
                text=f"After step {k}, where is the {name}?",
                asked_after=k + 1,
                subjects=[name],
                answer=answer,
                evidence=[ids[since_value]],
                stale_values=places[:5],
            )
        )
    return out


class ProParaDataset:
    """One stream per ProPara paragraph (grids v1, train split: 391)."""

    def __init__(self, data_dir: str | Path | None = None, *, limit: int | None = None) -> None:
        folder = require_dir(resolve_data_dir(data_dir) / "propara", "ProPara")
        self.path = require_file(folder / GRIDS_FILE, "ProPara grids")
        self.limit = limit
        self.name = "propara"

    def paragraphs(self) -> list[ProParaParagraph]:
        paragraphs = read_paragraphs(self.path)
        return paragraphs if self.limit is None else paragraphs[: self.limit]

    def streams(self) -> Iterator[EvalStream]:
        for paragraph in self.paragraphs():
            yield paragraph_stream(paragraph)
