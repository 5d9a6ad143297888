"""bAbI tasks 1, 2, 5 and 6 (Facebook Research, CC BY 3.0) as event streams with structured effects.

Input: ``<data_dir>/babi/qa{task}_*_test.txt`` (numbered lines; a question line is
``N question<TAB>answer<TAB>supporting line ids``; numbering restarts at 1 for each story).

Conversion: each statement line becomes one event, with the structured effects a narrative AI
would write for it, produced by a small deterministic rule-based parser of the bAbI templates
(:func:`parse_statement`); the summary is the sentence itself. The adapter keeps its own picture of
the story (who is where, who holds what) to fill in what a sentence leaves implicit ("there", the
place an item is dropped):

============================================================  =======================================
sentence                                                      event
============================================================  =======================================
``Mary moved to the bathroom.`` (moved, went, went back,      kind ``move``, actors [Mary], location
journeyed, travelled, traveled)                               ``bathroom``, ``move`` Mary -> bathroom
``Sandra got the football there.`` (got, grabbed, picked      kind ``take``, actors [Sandra], location
up, took; "there" optional)                                   = Sandra's current place (if known),
                                                              ``transfer`` football -> Sandra
``John dropped the apple.`` (dropped, discarded, put down,    kind ``drop``, actors [John], location
left; "there" optional)                                       = John's place, ``move`` apple -> it
                                                              (unknown place: ``unset holder``)
``Fred gave the football to Bill.`` (gave, handed, passed)    kind ``give``, actors [Fred (giver),
                                                              Bill (receiver)], location = Fred's
                                                              place, ``transfer`` football from Fred
                                                              to Bill
============================================================  =======================================

Names: bAbI's words as written - people capitalised (``Mary``), items and locations lower case
without the article (``football``, ``bathroom``), in events and answers alike.

Questions (:func:`parse_question`): ``Where is Mary?`` / ``Where is the football?`` -> ``where_now``
[subject] (an item held by someone is where its holder is); ``Is Daniel in the office?`` ->
``is_at`` [Daniel, office], answer ``yes``/``no``; ``Who gave the football to Fred?`` ->
``who_gave`` [football, Fred]; ``Who gave the football?`` -> ``who_gave`` [football];
``What did Fred give to Bill?`` -> ``what_given`` [Fred, Bill]; ``Who received the football?`` ->
``who_received`` [football]; ``Who did Fred give the football to?`` -> ``who_received``
[football, Fred]. The answer is bAbI's gold answer; ``asked_after`` is the number of events before
the question line in the stream; ``evidence`` the external ids of the supporting lines;
``stale_values``: ``where_now`` - the subject's earlier places in the stream, most recent first,
distinct, without the answer; ``is_at`` - the other answer if it was true earlier in the stream;
the ``give`` kinds - earlier givers / items / receivers of matching gives.

External ids ``babi{task}-s{story:03d}-l{line:02d}`` (stories counted from 1), query ids
``babi{task}-s{story:03d}-q{line:02d}``. :class:`BabiDataset` gives one stream per story; with
``long=True`` (``babi-long:N``) all stories of the task are concatenated in file order into ONE
stream: names are reused across stories, so the same people move hundreds of times (heavy
supersession), the ids stay unique and ``asked_after`` counts from the start of the stream.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Literal

from evals.datasets.base import EvalQuery, EvalStream
from evals.datasets.common import DatasetNotFoundError, event_json, require_dir, resolve_data_dir
from rag.events import ActorRef, Effect, EventIn, MoveEffect, TransferEffect, UnsetEffect

__all__ = [
    "TASKS",
    "BabiDataset",
    "BabiLine",
    "BabiParseError",
    "BabiStory",
    "ParsedQuestion",
    "Statement",
    "babi_file",
    "parse_question",
    "parse_statement",
    "read_stories",
]

TASKS: Final = (1, 2, 5, 6)

_PERSON = r"[A-Z][a-z]+"
_THING = r"[a-z]+(?: [a-z]+)*?"
_MOVE = re.compile(
    rf"^(?P<actor>{_PERSON}) (?:moved|went back|went|journeyed|travell?ed) to the (?P<place>{_THING})\.$"
)
_TAKE = re.compile(
    rf"^(?P<actor>{_PERSON}) (?:got|grabbed|picked up|took) the (?P<item>{_THING})(?: there)?\.$"
)
_DROP = re.compile(
    rf"^(?P<actor>{_PERSON}) (?:dropped|discarded|put down|left) the (?P<item>{_THING})(?: there)?\.$"
)
_GIVE = re.compile(
    rf"^(?P<actor>{_PERSON}) (?:gave|handed|passed) the (?P<item>{_THING}) to (?P<receiver>{_PERSON})\.$"
)

_QUESTIONS: Final[tuple[tuple[str, re.Pattern[str], tuple[str, ...]], ...]] = (
    ("where_now", re.compile(rf"^Where is (?P<a>{_PERSON})\?$"), ("a",)),
    ("where_now", re.compile(rf"^Where is the (?P<a>{_THING})\?$"), ("a",)),
    ("is_at", re.compile(rf"^Is (?P<a>{_PERSON}) in the (?P<b>{_THING})\?$"), ("a", "b")),
    ("who_gave", re.compile(rf"^Who gave the (?P<a>{_THING}) to (?P<b>{_PERSON})\?$"), ("a", "b")),
    ("who_gave", re.compile(rf"^Who gave the (?P<a>{_THING})\?$"), ("a",)),
    ("what_given", re.compile(rf"^What did (?P<a>{_PERSON}) give to (?P<b>{_PERSON})\?$"), ("a", "b")),
    ("who_received", re.compile(rf"^Who received the (?P<a>{_THING})\?$"), ("a",)),
    ("who_received", re.compile(rf"^Who did (?P<b>{_PERSON}) give the (?P<a>{_THING}) to\?$"), ("a", "b")),
)


class BabiParseError(ValueError):
    """A bAbI line the rule-based parser does not understand (strict mode)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Statement:
    """What one statement says: ``move`` (actor -> place), ``take`` (actor takes item), ``drop``
    (actor puts item down where they are), ``give`` (actor gives item to receiver)."""

    verb: Literal["move", "take", "drop", "give"]
    actor: str
    place: str | None = None
    item: str | None = None
    receiver: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedQuestion:
    kind: str
    subjects: list[str]


@dataclasses.dataclass(frozen=True, slots=True)
class BabiLine:
    number: int
    text: str
    answer: str | None = None
    """Set on question lines only."""
    support: tuple[int, ...] = ()

    @property
    def is_question(self) -> bool:
        return self.answer is not None


@dataclasses.dataclass(frozen=True, slots=True)
class BabiStory:
    index: int
    """1-based position of the story in its file."""
    lines: list[BabiLine]


def parse_statement(text: str) -> Statement | None:
    """The structured reading of a bAbI statement (tasks 1, 2, 5, 6), or ``None``."""
    text = " ".join(text.split())
    if m := _MOVE.match(text):
        return Statement("move", m["actor"], place=m["place"])
    if m := _GIVE.match(text):
        return Statement("give", m["actor"], item=m["item"], receiver=m["receiver"])
    if m := _TAKE.match(text):
        return Statement("take", m["actor"], item=m["item"])
    if m := _DROP.match(text):
        return Statement("drop", m["actor"], item=m["item"])
    return None


def parse_question(text: str) -> ParsedQuestion | None:
    """The query kind and subjects of a bAbI question (tasks 1, 2, 5, 6), or ``None``."""
    text = " ".join(text.split())
    for kind, pattern, groups in _QUESTIONS:
        if m := pattern.match(text):
            return ParsedQuestion(kind, [m[g] for g in groups])
    return None


def read_stories(path: Path) -> list[BabiStory]:
    """The stories of one bAbI file, in order."""
    stories: list[BabiStory] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        number_text, _, rest = raw.partition(" ")
        try:
            number = int(number_text)
        except ValueError:
            raise BabiParseError(f"{path}:{lineno}: no line number in {raw!r}") from None
        if number == 1 or not stories:
            stories.append(BabiStory(index=len(stories) + 1, lines=[]))
        if "\t" in rest:
            fields = rest.split("\t")
            if len(fields) < 2:
                raise BabiParseError(f"{path}:{lineno}: malformed question line {raw!r}")
            support = tuple(int(x) for x in fields[2].split()) if len(fields) > 2 else ()
            line = BabiLine(number, fields[0].strip(), fields[1].strip(), support)
        else:
            line = BabiLine(number, rest.strip())
        stories[-1].lines.append(line)
    return stories


def babi_file(data_dir: Path, task: int) -> Path:
    """``<data_dir>/babi/qa{task}_*_test.txt``."""
    if task not in TASKS:
        raise ValueError(f"bAbI task {task} is not supported; choose one of {', '.join(map(str, TASKS))}")
    folder = require_dir(data_dir / "babi", "bAbI")
    matches = sorted(folder.glob(f"qa{task}_*_test.txt"))
    if not matches:
        raise DatasetNotFoundError(f"bAbI task {task}: no qa{task}_*_test.txt in {folder}")
    return matches[0]


def _distinct_recent(values: list[Any], exclude: Any) -> list[Any]:
    out: list[Any] = []
    for value in reversed(values):
        if value is not None and value != exclude and value not in out:
            out.append(value)
    return out


class _Story:
    """The adapter's own picture of the world while converting: places, holders, give log."""

    def __init__(self) -> None:
        self.place: dict[str, str] = {}
        """person -> current place; item -> place where it lies (only while not held)."""
        self.holder: dict[str, str] = {}
        self.history: dict[str, list[str]] = {}
        """entity -> effective places over time (consecutive duplicates collapsed)."""
        self.gives: list[tuple[str, str, str]] = []
        """(giver, item, receiver) in stream order."""

    def where(self, entity: str) -> str | None:
        holder = self.holder.get(entity)
        return self.place.get(holder) if holder is not None else self.place.get(entity)

    def _note(self, entity: str) -> None:
        where = self.where(entity)
        if where is None:
            return
        log = self.history.setdefault(entity, [])
        if not log or log[-1] != where:
            log.append(where)

    def _note_with_items(self, person: str) -> None:
        self._note(person)
        for item, holder in self.holder.items():
            if holder == person:
                self._note(item)

    def apply(self, st: Statement) -> tuple[str | None, list[Effect], list[str | ActorRef]]:
        """Update the picture; return the event's location, effects and actors."""
        actor = st.actor
        if st.verb == "move":
            assert st.place is not None
            self.place[actor] = st.place
            self._note_with_items(actor)
            return st.place, [MoveEffect(entity=actor, to=st.place)], [actor]
        assert st.item is not None
        item = st.item
        here = self.place.get(actor)
        if st.verb == "take":
            self.holder[item] = actor
            self.place.pop(item, None)
            self._note(item)
            return here, [TransferEffect(item=item, to=actor)], [actor]
        if st.verb == "drop":
            self.holder.pop(item, None)
            if here is None:
                # Dropped somewhere we cannot name: it is no longer carried, place unknown.
                self.place.pop(item, None)
                return None, [UnsetEffect(entity=item, component="holder")], [actor]
            self.place[item] = here
            self._note(item)
            return here, [MoveEffect(entity=item, to=here)], [actor]
        assert st.receiver is not None
        receiver = st.receiver
        self.holder[item] = receiver
        self.place.pop(item, None)
        self.gives.append((actor, item, receiver))
        if here is not None:
            # Presence: the receiver is where the giving happens.
            self.place[receiver] = here
            self._note_with_items(receiver)
        actors: list[str | ActorRef] = [
            ActorRef(name=actor, role="giver"),
            ActorRef(name=receiver, role="receiver"),
        ]
        return here, [TransferEffect(item=item, to=receiver, from_=actor)], actors

    def stale(self, kind: str, subjects: list[str], answer: str) -> list[Any]:
        if kind == "where_now":
            return _distinct_recent(self.history.get(subjects[0], []), answer)
        if kind == "is_at":
            person, place = subjects
            log = self.history.get(person, [])[:-1]
            if answer == "yes":
                return ["no"] if any(p != place for p in log) else []
            return ["yes"] if place in log else []
        other: str | None = subjects[1] if len(subjects) > 1 else None
        if kind == "who_gave":  # subjects: item, receiver (optional)
            return _distinct_recent(
                [g for g, i, r in self.gives if i == subjects[0] and other in (None, r)], answer
            )
        if kind == "what_given":  # subjects: giver, receiver
            return _distinct_recent([i for g, i, r in self.gives if g == subjects[0] and r == other], answer)
        if kind == "who_received":  # subjects: item, giver (optional)
            return _distinct_recent(
                [r for g, i, r in self.gives if i == subjects[0] and other in (None, g)], answer
            )
        return []


class BabiDataset:
    """bAbI task ``task`` (1, 2, 5 or 6): one stream per story, or one long stream (``long``).

    ``strict`` (default): a line the parser does not understand raises :class:`BabiParseError`;
    otherwise an unparsed statement becomes an event without effects (kind ``unparsed``) and an
    unparsed question is dropped. ``limit`` caps the number of streams, ``max_stories`` the number
    of stories read (for a shorter long stream).
    """

    def __init__(
        self,
        task: int,
        data_dir: str | Path | None = None,
        *,
        long: bool = False,
        limit: int | None = None,
        max_stories: int | None = None,
        strict: bool = True,
    ) -> None:
        self.task = task
        self.long = long
        self.limit = limit
        self.max_stories = max_stories
        self.strict = strict
        self.path = babi_file(resolve_data_dir(data_dir), task)
        self.name = f"babi-long:{task}" if long else f"babi:{task}"

    def stories(self) -> list[BabiStory]:
        """The stories used: the first ``max_stories`` of the file (all when ``None``)."""
        stories = read_stories(self.path)
        return stories if self.max_stories is None else stories[: self.max_stories]

    def streams(self) -> Iterator[EvalStream]:
        stories = self.stories()
        if self.long:
            if self.limit is None or self.limit > 0:
                yield self._stream(f"babi-long{self.task}", stories)
            return
        for story in stories if self.limit is None else stories[: self.limit]:
            yield self._stream(f"babi{self.task}-s{story.index:03d}", [story])

    def _stream(self, name: str, stories: list[BabiStory]) -> EvalStream:
        events: list[dict[str, Any]] = []
        queries: list[EvalQuery] = []
        world = _Story()
        prefix = f"babi{self.task}"
        for story in stories:
            ids = {line.number: f"{prefix}-s{story.index:03d}-l{line.number:02d}" for line in story.lines}
            for line in story.lines:
                where = f"{self.path.name}, story {story.index}, line {line.number}"
                if line.is_question:
                    parsed = parse_question(line.text)
                    if parsed is None:
                        if self.strict:
                            raise BabiParseError(f"{where}: unparsed question {line.text!r}")
                        continue
                    assert line.answer is not None
                    queries.append(
                        EvalQuery(
                            id=f"{prefix}-s{story.index:03d}-q{line.number:02d}",
                            kind=parsed.kind,
                            text=line.text,
                            asked_after=len(events),
                            subjects=parsed.subjects,
                            answer=line.answer,
                            evidence=[ids[n] for n in sorted(line.support) if n in ids],
                            stale_values=world.stale(parsed.kind, parsed.subjects, line.answer),
                        )
                    )
                    continue
                statement = parse_statement(line.text)
                if statement is None:
                    if self.strict:
                        raise BabiParseError(f"{where}: unparsed statement {line.text!r}")
                    event = EventIn(summary=line.text, external_id=ids[line.number], kind="unparsed")
                else:
                    location, effects, actors = world.apply(statement)
                    event = EventIn(
                        summary=line.text,
                        external_id=ids[line.number],
                        kind=statement.verb,
                        actors=actors,
                        location=location,
                        effects=effects,
                    )
                events.append(event_json(event))
        return EvalStream(name=name, events=events, queries=queries)
