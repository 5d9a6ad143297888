"""Scoring context bundles against gold answers: pure functions, no I/O, no LLM.

Every function here takes the bundle as the service returns it (``POST .../context`` with
``format: "json"``, decoded to plain dicts) and a query (:class:`evals.datasets.base.EvalQuery`, the
generator's ``Query``, or anything with the same attributes).

Reading an answer off a bundle
==============================

Two readers, the same for every mode, so that baselines and the product are compared on what the
bundle *contains*, not on who reads it:

* **State reader.** When the bundle's ``state`` has an entry for the query's subject (matched by
  name or alias, case-insensitive, a leading "the"/"a"/"an" ignored) the answer is read from it:
  ``location.value``, ``holder.value``, ``status.value``, the outgoing relationship's
  ``valence[dimension]``; a *destroyed* entity is nowhere (``where_now`` -> ``None``), the dead
  stay where they fell. Only bundles built with ``include_state`` (the ``full`` and
  ``chronicle_only`` modes) have state; in those, an entity the state does not know does not
  exist (``exists`` -> "no").
* **Careless history reader.** Otherwise (the retrieval baselines, or an entity the state does not
  know) the answer is read from the single best-ranked event that *involves* the subject: an actor
  of the event is the subject or one of its aliases known from the bundle's state, or the summary
  names it (whole words). The ranking is the bundle's own: the events retrieval found by score
  (highest first, ties by sequence) - the ``history``, and the ``recent`` events that carry a score
  because retrieval found them too - then the other ``recent`` events newest first. What that one
  event says is taken as the answer:

  - location (``where_now``, ``state_as_of``, ``is_at``, ``what_happened``): the event's ``location``;
  - holder (``who_holds``): ``None`` if the summary says the item was dropped, left, abandoned,
    hidden or destroyed; the *last* actor if it says it was given/handed/sold/entrusted/passed/
    received; otherwise the *first* actor (took, stole, picked up, looted, found ...);
  - alive (``is_alive``): "no" if the summary has a death word (died, killed, slew, murdered,
    drowned, corpse, body of ...), else "yes"; ``exists``: "no" on destroy words (or when no event
    involves the subject at all), else "yes";
  - status (``what_happened``): dead / unconscious / destroyed by the same word lists, else alive;
  - feeling: the sign of a small sentiment lexicon on the best-ranked event naming both people
    ("doubt", "lie", "wary", "traitor" ... negative; "trust", "faith", "fond", "respect" ...
    positive); no value.

  This is what a model skimming the top of the context would conclude; it is deliberately simple
  and documented so that the baseline numbers can be read for what they are.

Kinds and how they are scored
=============================

State kinds (:data:`STATE_KINDS`, the "current-state accuracy" of the CI gate): ``where_now``,
``who_holds``, ``is_alive``, ``exists``, ``is_at``, ``feeling``, ``what_happened``, ``state_as_of``
(asked with ``as_of_sequence`` = the query's ``params.as_of_sequence``, see the harness). Exact match
after name normalisation (an alias of the gold answer counts as wrong: the reader has no way to
know it, e.g. a degraded-mode holder named by an alias); ``None`` (nowhere / nobody - also what a
reader with nothing to read says) must match ``None``, except that ``is_alive`` / ``is_at`` with
nothing to read are wrong rather than a lucky default; ``feeling`` is correct when
the *sign* matches (a reader without state cannot give a number; the error of the value, when there
is one, is recorded as ``value_error``); ``what_happened`` needs both status and location right.

History kinds (:data:`HISTORY_KINDS`), answered from the events in the bundle:

* ``where_before``: the current location is taken from the state (its ``location`` and the sequence
  that set it) or, without state, from the latest event in the bundle involving the subject; the
  answer is the location of the latest earlier event involving the subject at another place. This
  reads the bundle chronologically (a "before" question has no other sensible reading).
* ``who_was_at``: correct when the named event (``params.event``) is in the bundle, history or
  recent: its actor list is the answer (aliases in it cannot be resolved without an LLM, so the
  presence of the evidence is what is scored); the recorded answer is that actor list.
* ``who_gave`` / ``what_given`` / ``who_received`` and any kind not listed here: the answer event is
  the best-ranked event that names *all* subjects - for the give kinds the best-ranked such event
  with a give verb (gave, handed, passed, sold, received ...) if there is one - else the
  best-ranked naming the first subject; correct when the gold answer is named in its summary or
  actors. The direction of the give is not parsed.

Stale facts
===========

A query is *stale-eligible* when it has ``stale_values`` (``who_was_at`` never is: its answer is
the named event's actor list, which cannot be a superseded value). It is stale when the extracted
answer is one of the stale values (and not the gold), or - state kinds only - when the best-ranked
event involving the subject structurally asserts a stale value (its ``location`` puts the subject
at a stale place, or its actors make a stale holder, as read above; words of the summary are not
counted as claims) and the bundle does not mark it ``superseded``: the bundle ranks first a
superseded fact without saying so.

The *stale-fact rate* of the report is over the eligible **state** kinds only: a superseded value
given as how things stand. For the history kinds the stale values are the other past values (an
older place for ``where_before``, earlier givers and receivers for the give kinds); answering with
one is a miss of a question about the past, reported apart as the *earlier-answer rate* (see
``evals.report``).

Retrieval metrics
=================

Over the external ids of the ranked bundle items (as above: scored events by score, then the other
``recent`` ones) against the query's ``evidence``: recall@k (share of evidence in the top k),
all-evidence@k (1 if all of it is), MRR (1 / rank of the first evidence item, 0 if none), nDCG@10
(binary relevance, ideal DCG over ``min(len(evidence), 10)`` items) and ``in_bundle`` (any evidence
anywhere in the bundle). Queries without evidence get ``None``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

from rag.events import normalize_name

__all__ = [
    "HISTORY_KINDS",
    "STATE_KINDS",
    "Extraction",
    "extract_answer",
    "find_state",
    "kind_group",
    "mentions",
    "norm",
    "ranked_items",
    "retrieval_metrics",
    "score_answer",
    "score_query",
]

STATE_KINDS: Final = (
    "where_now",
    "who_holds",
    "is_alive",
    "exists",
    "is_at",
    "feeling",
    "what_happened",
    "state_as_of",
)
HISTORY_KINDS: Final = ("where_before", "who_was_at", "who_gave", "what_given", "who_received")
GIVE_KINDS: Final = frozenset({"who_gave", "what_given", "who_received"})
RECALL_KS: Final = (5, 10)
NDCG_K: Final = 10
DEAD_STATUSES: Final = frozenset({"dead", "destroyed"})
GONE_STATUSES: Final = frozenset({"destroyed", "consumed", "gone", "nonexistent", "non-existent", "removed"})
VALUE_TOLERANCE: Final = 1e-6

_ARTICLE: Final = re.compile(r"^(?:the|a|an)\s+")
_DEATH: Final = re.compile(
    r"\b(?:died|dies|dead|death|killed|kills|slew|slain|murdered|drowned|succumbed|struck down|fell to"
    r"|breathed (?:\w+ )?last|corpse|body of|remains of|'s body)\b",
    re.IGNORECASE,
)
_KNOCKOUT: Final = re.compile(
    r"\b(?:knocked senseless|knocked out|fainted|collapsed|unconscious|passed out)\b", re.IGNORECASE
)
_DESTROY: Final = re.compile(
    r"\b(?:smashed|destroyed|broke \w+ beyond repair|beyond repair|into the fire|burned|crushed|consumed)\b",
    re.IGNORECASE,
)
_DROP: Final = re.compile(
    r"\b(?:dropped|abandoned|discarded|put down|set down|left (?:it|\w+ \w+) (?:at|behind|there)|hid|buried"
    r"|left behind|left there|lost)\b",
    re.IGNORECASE,
)
_GIVE: Final = re.compile(
    r"\b(?:gave|give|gives|handed|hands|entrusted|passed|sold|received|receives|delivered|lent)\b",
    re.IGNORECASE,
)
_NEGATIVE: Final = re.compile(
    r"\b(?:doubt\w*|lie|lied|lies|wary|no longer|never trust|traitor|distrust\w*|suspicious|betray\w*"
    r"|afraid|frighten\w*|lost respect|thought less|cooled|faded|resent\w*|rival|stole|robbed|broke with"
    r"|hate\w*|angry|quarrel\w*|cheat\w*)\b",
    re.IGNORECASE,
)
_POSITIVE: Final = re.compile(
    r"\b(?:trust\w*|faith|impressed|kept a promise|fond|respect\w*|admir\w*|grateful|thank\w*|allies"
    r"|ally|pledged|helped|saved|forgave|friend\w*|loyal\w*)\b",
    re.IGNORECASE,
)
_NEUTRAL: Final = re.compile(r"\bneither\b.*\bnor\b|\bstranger\b", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------
# Names and mentions


def norm(value: Any) -> str | None:
    """Comparison key of a name or value: case/space-insensitive, without a leading article."""
    if value is None:
        return None
    return _ARTICLE.sub("", normalize_name(str(value)))


def _get(query: Any, field: str, default: Any = None) -> Any:
    if isinstance(query, Mapping):
        return query.get(field, default)
    return getattr(query, field, default)


def find_state(bundle: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The bundle's state entry for a name or alias, if any."""
    key = norm(name)
    for entry in bundle.get("state") or []:
        names = [entry.get("name"), *(entry.get("aliases") or [])]
        if key in {norm(n) for n in names if n}:
            return dict(entry)
    return None


def names_of(bundle: Mapping[str, Any], name: str) -> list[str]:
    """The name plus the aliases the bundle's state knows for it."""
    entry = find_state(bundle, name)
    out = [name]
    if entry is not None:
        out += [entry["name"], *(entry.get("aliases") or [])]
    return list(dict.fromkeys(n for n in out if n))


@lru_cache(maxsize=4096)
def _word_pattern(key: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in key.split()) + r"(?!\w)", re.IGNORECASE)


def named_in(text: str | None, names: Iterable[str]) -> bool:
    """Whether a text names any of ``names`` as whole words (a leading article optional)."""
    if not text:
        return False
    for name in names:
        key = norm(name)
        if key and _word_pattern(key).search(text):
            return True
    return False


def mentions(item: Mapping[str, Any], names: Sequence[str]) -> bool:
    """Whether a history item involves one of the names: as an actor, or named in its summary."""
    keys = {norm(n) for n in names}
    if any(norm(a) in keys for a in item.get("actors") or []):
        return True
    return named_in(item.get("summary"), names)


def ranked_items(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Bundle events in rank order: the ones retrieval found by score (highest first, ties by
    sequence) - every ``history`` item, and the ``recent`` ones that carry a score because retrieval
    found them too - then the other ``recent`` events newest first (each event once)."""
    history = list(bundle.get("history") or [])
    seen = {h.get("id") for h in history}
    recent = [r for r in bundle.get("recent") or [] if r.get("id") not in seen]
    found = sorted(
        [*history, *(r for r in recent if r.get("score") is not None)],
        key=lambda h: (-(h.get("score") or 0.0), h.get("sequence") or 0),
    )
    rest = sorted((r for r in recent if r.get("score") is None), key=lambda r: -(r.get("sequence") or 0))
    return [dict(h) for h in found] + [dict(r) for r in rest]


def _first(items: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any] | None:
    for item in items:
        if mentions(item, names):
            return dict(item)
    return None


# --------------------------------------------------------------------------------------------------
# Careless readings of a single event


def careless_location(item: Mapping[str, Any] | None) -> str | None:
    return None if item is None else item.get("location")


def careless_holder(item: Mapping[str, Any] | None) -> str | None:
    if item is None:
        return None
    summary = item.get("summary") or ""
    actors = list(item.get("actors") or [])
    if not actors or _DESTROY.search(summary) or _DROP.search(summary):
        return None
    if _GIVE.search(summary) and len(actors) > 1:
        return str(actors[-1])
    return str(actors[0])


def careless_alive(item: Mapping[str, Any] | None) -> str | None:
    if item is None:
        return None
    return "no" if _DEATH.search(item.get("summary") or "") else "yes"


def careless_exists(item: Mapping[str, Any] | None) -> str:
    if item is None:
        return "no"
    return "no" if _DESTROY.search(item.get("summary") or "") else "yes"


def careless_status(item: Mapping[str, Any] | None) -> str | None:
    if item is None:
        return None
    summary = item.get("summary") or ""
    if _DEATH.search(summary):
        return "dead"
    if _KNOCKOUT.search(summary):
        return "unconscious"
    if _DESTROY.search(summary):
        return "destroyed"
    return "alive"


def careless_sign(item: Mapping[str, Any] | None) -> str | None:
    if item is None:
        return None
    summary = item.get("summary") or ""
    if _NEUTRAL.search(summary):
        return "neutral"
    if _NEGATIVE.search(summary):
        return "negative"
    if _POSITIVE.search(summary):
        return "positive"
    return "neutral"


def _sign(value: float | None) -> str | None:
    if value is None:
        return None
    return "positive" if value > 0 else "negative" if value < 0 else "neutral"


# --------------------------------------------------------------------------------------------------
# Extraction


class Extraction:
    """What a reader concludes from a bundle for one query.

    ``answer``: the extracted answer (same shape as the gold); ``source``: "state", "history" or
    "none"; ``event``: the external id of the event the answer (or the careless claim) was read
    from; ``claim``: what the best-ranked event involving the subject asserts, read carelessly
    (state kinds, for stale detection); ``claim_superseded``: whether the bundle marks that event
    superseded.
    """

    __slots__ = ("answer", "claim", "claim_superseded", "event", "source")

    def __init__(
        self,
        answer: Any,
        source: str,
        event: str | None = None,
        claim: Any = None,
        claim_superseded: bool = False,
    ) -> None:
        self.answer = answer
        self.source = source
        self.event = event
        self.claim = claim
        self.claim_superseded = claim_superseded

    def as_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "source": self.source,
            "event": self.event,
            "claim": self.claim,
            "claim_superseded": self.claim_superseded,
        }


def kind_group(kind: str) -> str:
    """``state`` (current-state accuracy) or ``history``."""
    return "state" if kind in STATE_KINDS else "history"


def _dimension(query: Any) -> str:
    params = _get(query, "params") or {}
    answer = _get(query, "answer")
    if params.get("dimension"):
        return str(params["dimension"])
    if isinstance(answer, Mapping) and answer.get("dimension"):
        return str(answer["dimension"])
    return "trust"


def _state_answer(kind: str, query: Any, bundle: Mapping[str, Any], entry: Mapping[str, Any]) -> Any:
    subjects = list(_get(query, "subjects") or [])
    location = (entry.get("location") or {}).get("value")
    status = (entry.get("status") or {}).get("value")
    if kind in ("where_now", "state_as_of"):
        # A destroyed entity is nowhere (the reducer keeps its last position); the dead stay put.
        return None if status is not None and norm(status) in GONE_STATUSES else location
    if kind == "who_holds":
        return (entry.get("holder") or {}).get("value")
    if kind == "is_alive":
        return "no" if status is not None and norm(status) in DEAD_STATUSES else "yes"
    if kind == "exists":
        return "no" if status is not None and norm(status) in GONE_STATUSES else "yes"
    if kind == "is_at":
        return (
            "yes"
            if len(subjects) > 1 and location is not None and norm(location) == norm(subjects[1])
            else "no"
        )
    if kind == "what_happened":
        return {"status": status, "location": location}
    if kind == "feeling":
        dimension = _dimension(query)
        other = set(map(norm, names_of(bundle, subjects[1]))) if len(subjects) > 1 else set()
        # The latest outgoing relationship to the other (by name or alias) that has the dimension; a
        # replayed state may hold two (the other under its name and under an alias). None: neutral.
        value = 0.0
        latest = -1
        for relation in entry.get("relationships") or []:
            valence = relation.get("valence") or {}
            if (
                relation.get("direction", "outgoing") == "outgoing"
                and norm(relation.get("other")) in other
                and dimension in valence
                and (relation.get("sequence") or 0) > latest
            ):
                value, latest = float(valence[dimension]), relation.get("sequence") or 0
        return {"dimension": dimension, "value": value, "sign": _sign(value)}
    raise ValueError(f"not a state kind: {kind}")


def _careless_answer(kind: str, query: Any, bundle: Mapping[str, Any], item: Mapping[str, Any] | None) -> Any:
    """The careless reading of one event (see the module docstring)."""
    subjects = list(_get(query, "subjects") or [])
    if kind in ("where_now", "state_as_of"):
        return careless_location(item)
    if kind == "who_holds":
        return careless_holder(item)
    if kind == "is_alive":
        return careless_alive(item)
    if kind == "exists":
        return careless_exists(item)
    if kind == "is_at":
        if item is None:
            return None
        location = careless_location(item)
        return (
            "yes"
            if len(subjects) > 1 and location is not None and norm(location) == norm(subjects[1])
            else "no"
        )
    if kind == "what_happened":
        if item is None:
            return None
        return {"status": careless_status(item), "location": careless_location(item)}
    if kind == "feeling":
        sign = careless_sign(item)
        return None if sign is None else {"dimension": _dimension(query), "value": None, "sign": sign}
    raise ValueError(f"not a state kind: {kind}")


def _claim(kind: str, query: Any, item: Mapping[str, Any] | None) -> Any:
    """What one event structurally asserts about the subject, for stale detection: where it is
    (the event's location) or who holds it. Words in the summary (death, destruction, feelings) are
    not counted: too noisy to call an event's claim."""
    if item is None:
        return None
    subjects = list(_get(query, "subjects") or [])
    location = careless_location(item)
    if kind in ("where_now", "state_as_of"):
        return location
    if kind == "who_holds":
        return careless_holder(item)
    if kind == "is_at" and location is not None and len(subjects) > 1:
        return "yes" if norm(location) == norm(subjects[1]) else "no"
    if kind == "what_happened" and location is not None:
        return {"status": None, "location": location}
    return None


def extract_answer(query: Any, bundle: Mapping[str, Any], *, state_requested: bool = False) -> Extraction:
    """Read the answer to ``query`` off ``bundle`` (see the module docstring for the rules).

    ``state_requested``: the bundle was asked for with state (``include_state``); then an entity the
    state does not know does not exist (``exists`` -> "no", read from the state)."""
    kind = str(_get(query, "kind"))
    subjects = list(_get(query, "subjects") or [])
    ranked = ranked_items(bundle)

    if kind in STATE_KINDS:
        if not subjects:
            return Extraction(None, "none")
        names = names_of(bundle, subjects[0])
        if kind == "feeling" and len(subjects) > 1:
            both = names_of(bundle, subjects[1])
            top = next((i for i in ranked if mentions(i, names) and mentions(i, both)), None)
        else:
            top = _first(ranked, names)
        claim = _claim(kind, query, top)
        event = top.get("external_id") if top else None
        superseded = bool(top and top.get("superseded"))
        entry = find_state(bundle, subjects[0])
        if entry is not None:
            return Extraction(_state_answer(kind, query, bundle, entry), "state", event, claim, superseded)
        if kind == "exists" and state_requested:
            return Extraction("no", "state", event, claim, superseded)
        answer = _careless_answer(kind, query, bundle, top)
        return Extraction(answer, "history" if top is not None else "none", event, claim, superseded)

    if kind == "where_before":
        return _where_before(query, bundle, ranked)

    if kind == "who_was_at":
        target = str((_get(query, "params") or {}).get("event") or "")
        found = next((i for i in ranked if target and i.get("external_id") == target), None)
        if found is None:
            return Extraction(None, "none")
        return Extraction(sorted(found.get("actors") or []), "history", target)

    # who_gave / what_given / who_received / unknown kinds: the best-ranked event naming all subjects
    # (for the give kinds, a give event first).
    groups = [names_of(bundle, s) for s in subjects]
    naming = [i for i in ranked if groups and all(mentions(i, g) for g in groups)]
    item = None
    if kind in GIVE_KINDS:
        item = next((i for i in naming if _GIVE.search(i.get("summary") or "")), None)
    if item is None and naming:
        item = naming[0]
    if item is None and groups:
        item = _first(ranked, groups[0])
    if item is None and not groups and ranked:
        item = ranked[0]
    if item is None:
        return Extraction(None, "none")
    return Extraction(item.get("summary"), "history", item.get("external_id"))


def _where_before(query: Any, bundle: Mapping[str, Any], ranked: list[dict[str, Any]]) -> Extraction:
    subjects = list(_get(query, "subjects") or [])
    if not subjects:
        return Extraction(None, "none")
    names = names_of(bundle, subjects[0])
    involved = sorted(
        (i for i in ranked if mentions(i, names) and i.get("location")),
        key=lambda i: -(i.get("sequence") or 0),
    )
    entry = find_state(bundle, subjects[0])
    location = (entry or {}).get("location") or None
    if location is not None and location.get("value") is not None:
        current, since, source = location["value"], location.get("sequence"), "state"
    elif involved:
        current, since, source = involved[0]["location"], involved[0].get("sequence"), "history"
    else:
        return Extraction(None, "none")
    for item in involved:
        if since is not None and (item.get("sequence") or 0) >= since:
            continue
        if norm(item["location"]) != norm(current):
            return Extraction(item["location"], source, item.get("external_id"))
    return Extraction(None, source)


# --------------------------------------------------------------------------------------------------
# Scoring


def _same(a: Any, b: Any) -> bool:
    return norm(a) == norm(b)


def _mentioned(value: Any, text: str | None, actors: Sequence[str] = ()) -> bool:
    if value is None:
        return False
    if isinstance(value, list | tuple):
        return bool(value) and all(_mentioned(v, text, actors) for v in value)
    if isinstance(value, Mapping):
        return False
    if norm(value) in {norm(a) for a in actors}:
        return True
    return named_in(text, [str(value)])


def score_answer(
    kind: str, extracted: Extraction, gold: Any, bundle: Mapping[str, Any] | None = None
) -> bool:
    """Whether the extracted answer is right (see the module docstring)."""
    answer = extracted.answer
    if kind == "feeling":
        gold_sign = gold.get("sign") if isinstance(gold, Mapping) else None
        if gold_sign is None and isinstance(gold, Mapping):
            gold_sign = _sign(gold.get("value"))
        return isinstance(answer, Mapping) and answer.get("sign") == gold_sign
    if kind == "what_happened":
        if not isinstance(answer, Mapping) or not isinstance(gold, Mapping):
            return False
        return _same(answer.get("status"), gold.get("status")) and _same(
            answer.get("location"), gold.get("location")
        )
    if kind in STATE_KINDS or kind == "where_before":
        if extracted.source == "none" and kind in ("is_alive", "is_at"):
            return False  # nothing to read: no answer, not a lucky default
        return _same(answer, gold)
    if kind == "who_was_at":
        return extracted.event is not None
    item = _item_by_external_id(bundle, extracted.event) if bundle is not None else None
    actors = list(item.get("actors") or []) if item else []
    return _mentioned(gold, answer if isinstance(answer, str) else None, actors)


def _item_by_external_id(bundle: Mapping[str, Any], external_id: str | None) -> dict[str, Any] | None:
    if external_id is None:
        return None
    for item in [*(bundle.get("history") or []), *(bundle.get("recent") or [])]:
        if item.get("external_id") == external_id:
            return dict(item)
    return None


def _matches_stale(kind: str, value: Any, stale: Sequence[Any], gold: Any) -> bool:
    if value is None:
        return False
    if kind == "feeling":
        number = value.get("value") if isinstance(value, Mapping) else None
        gold_value = gold.get("value") if isinstance(gold, Mapping) else None
        if number is None:
            return False
        if gold_value is not None and abs(float(number) - float(gold_value)) <= VALUE_TOLERANCE:
            return False
        return any(
            isinstance(s, int | float) and abs(float(number) - float(s)) <= VALUE_TOLERANCE for s in stale
        )
    if kind == "what_happened":
        if not isinstance(value, Mapping):
            return False
        gold = gold if isinstance(gold, Mapping) else {}
        keys = {norm(s) for s in stale if not isinstance(s, Mapping | list)}
        for field in ("location", "status"):
            v = value.get(field)
            if v is not None and norm(v) in keys and not _same(v, gold.get(field)):
                return True
        return False
    if isinstance(value, Mapping | list):
        return False
    keys = {norm(s) for s in stale if not isinstance(s, Mapping | list)}
    return norm(value) in keys and not _same(value, gold)


def is_stale(
    kind: str, extracted: Extraction, query: Any, bundle: Mapping[str, Any] | None = None
) -> bool | None:
    """``None`` when the query has no stale values (or is a ``who_was_at``); else whether the bundle
    gave or ranked first, unflagged, a superseded value (see the module docstring)."""
    stale = list(_get(query, "stale_values") or [])
    if not stale:
        return None
    gold = _get(query, "answer")
    if kind in STATE_KINDS or kind == "where_before":
        if _matches_stale(kind, extracted.answer, stale, gold):
            return True
        return (
            kind in STATE_KINDS
            and not extracted.claim_superseded
            and _matches_stale(kind, extracted.claim, stale, gold)
        )
    if kind == "who_was_at":
        return None  # the answer is the event's actors: no value of it can be superseded
    item = _item_by_external_id(bundle, extracted.event) if bundle is not None else None
    if item is None:
        return False
    actors = list(item.get("actors") or [])
    text = item.get("summary")
    return not _mentioned(gold, text, actors) and any(_mentioned(s, text, actors) for s in stale)


def retrieval_metrics(ranked_ids: Sequence[str | None], evidence: Sequence[str]) -> dict[str, float | None]:
    """recall@k, all-evidence@k (k = 5, 10), MRR, nDCG@10 and in_bundle; ``None`` without evidence."""
    wanted = {e for e in evidence if e}
    keys = (
        [f"recall@{k}" for k in RECALL_KS]
        + [f"all@{k}" for k in RECALL_KS]
        + ["mrr", f"ndcg@{NDCG_K}", "in_bundle"]
    )
    if not wanted:
        return dict.fromkeys(keys)
    hits = [i is not None and i in wanted for i in ranked_ids]
    out: dict[str, float | None] = {}
    for k in RECALL_KS:
        found = {i for i in ranked_ids[:k] if i in wanted}
        out[f"recall@{k}"] = len(found) / len(wanted)
        out[f"all@{k}"] = 1.0 if found == wanted else 0.0
    first = next((rank for rank, hit in enumerate(hits, start=1) if hit), None)
    out["mrr"] = 0.0 if first is None else 1.0 / first
    seen: set[str] = set()
    dcg = 0.0
    for rank, identifier in enumerate(ranked_ids[:NDCG_K], start=1):
        if identifier in wanted and identifier not in seen:
            seen.add(identifier)
            dcg += 1.0 / math.log2(rank + 1)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(wanted), NDCG_K) + 1))
    out[f"ndcg@{NDCG_K}"] = dcg / ideal
    out["in_bundle"] = 1.0 if first is not None else 0.0
    return out


def score_query(query: Any, bundle: Mapping[str, Any], *, state_requested: bool = False) -> dict[str, Any]:
    """Everything the report needs about one bundle for one query (JSON-ready)."""
    kind = str(_get(query, "kind"))
    extracted = extract_answer(query, bundle, state_requested=state_requested)
    gold = _get(query, "answer")
    correct = score_answer(kind, extracted, gold, bundle)
    stale = is_stale(kind, extracted, query, bundle)
    ranked = ranked_items(bundle)
    ranked_ids = [i.get("external_id") for i in ranked]
    metrics = retrieval_metrics(ranked_ids, list(_get(query, "evidence") or []))
    value_error = None
    if (
        kind == "feeling"
        and isinstance(extracted.answer, Mapping)
        and isinstance(gold, Mapping)
        and extracted.answer.get("value") is not None
        and gold.get("value") is not None
    ):
        value_error = abs(float(extracted.answer["value"]) - float(gold["value"]))
    return {
        "kind": kind,
        "group": kind_group(kind),
        "extracted": extracted.as_dict(),
        "correct": correct,
        "stale": stale,
        "value_error": value_error,
        "retrieval": metrics,
        "ranked": ranked_ids[:20],
    }
