"""Hybrid retrieval over a chronicle's events: vector, full-text and entity search, fused.

Three sources each rank candidates, restricted to one tenant's chronicle (and to the query's
as-of / point-of-view / exclusion filters):

* ``vector``: cosine distance on the HNSW index. With pgvector 0.8 iterative index scans
  (``hnsw.iterative_scan = relaxed_order``) the index keeps scanning until ``k`` rows pass the
  filter, so a chronicle that is a tiny fraction of the table still gets ``k`` rows.
* ``lexical``: ``websearch_to_tsquery('english', text)`` against the generated ``search_vector``,
  ranked by ``ts_rank_cd``. See :func:`lexical_search` for how natural-language questions are
  relaxed from "all words" to "any word".
* ``entity``: events whose ``entity_keys`` (actors, location and effect targets, normalised)
  overlap the focus entities.

The full-text and entity sources rank only the newest ``CANDIDATE_POOL`` matches of each of their
conditions, found by `_newest_matches` in steps whose cost does not hang on the planner's
estimates; a vector search over few events of a big table is an exact scan (`vector_search`).

:func:`fuse` combines them by weighted reciprocal rank fusion plus a mild recency prior, and
:func:`collapse_near_duplicates` re-selects the best by MMR, collapsing near-duplicate events.
:func:`retrieve` runs the whole pipeline. Weights and sizes come from a
:class:`rag.presets.RetrievalPreset`.

Like ``rag.store``, functions take an ``AsyncConnection`` and never commit; every query filters by
tenant id and chronicle id. The searches set their planner and index parameters with
``set_config(..., is_local => true)``: they hold until the end of the caller's transaction (one
statement per transaction, repeated only when a search needs other values), so the connection
must be transactional (the SQLAlchemy default, ``engine.connect()`` or ``engine.begin()``; not an
AUTOCOMMIT connection). :func:`prepare_search` sets them all at once for a preset.

Everything is deterministic: equal scores are ordered by sequence, newest first, then by id.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import msgspec
import numpy as np
import numpy.typing as npt
from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    ARRAY,
    Float,
    Integer,
    LargeBinary,
    Select,
    String,
    Text,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from rag.events import normalize_name
from rag.presets import RetrievalPreset
from rag.schema import chronicle_events, chronicles

__all__ = [
    "ALL_SOURCES",
    "CANDIDATE_POOL",
    "MODES",
    "SOURCE_ORDER",
    "Candidate",
    "CollapsedEvent",
    "Hit",
    "RetrievalQuery",
    "RetrievalResult",
    "RetrievedEvent",
    "Searched",
    "Selected",
    "Source",
    "collapse_near_duplicates",
    "entity_search",
    "fuse",
    "lexical_search",
    "lexical_terms",
    "recency_bonus",
    "retrieve",
    "search_source",
    "sources_for_mode",
    "vector_search",
    "vector_statement",
]

Source = Literal["vector", "lexical", "entity"]
IterativeScan = Literal["off", "relaxed_order", "strict_order"]
HnswSettings = tuple[int, IterativeScan, int]
"""ef_search, iterative_scan, max_scan_tuples."""

SOURCE_ORDER: Final[tuple[Source, ...]] = ("vector", "lexical", "entity")
ALL_SOURCES: Final[frozenset[Source]] = frozenset(SOURCE_ORDER)

MODES: Final[Mapping[str, frozenset[Source]]] = {
    "hybrid": ALL_SOURCES,
    "vector": frozenset({"vector"}),
    "lexical": frozenset({"lexical"}),
    "entity": frozenset({"entity"}),
}
"""Baselines for the evaluation harness: ``RetrievalQuery(..., sources=MODES["vector"])``."""

_TS_CONFIG: Final = "english"
# Matches websearch_to_tsquery's operators: a quoted phrase, the OR keyword, a negated word.
_WEBSEARCH_OPERATORS: Final = re.compile(r'"|(?:^|\s)or(?:\s|$)|(?:^|\s)-\w', re.IGNORECASE)
_WORD: Final = re.compile(r"\w+")


def sources_for_mode(mode: str) -> frozenset[Source]:
    """The sources of a mode (``hybrid``, ``vector``, ``lexical``, ``entity``)."""
    try:
        return MODES[mode]
    except KeyError:
        raise KeyError(f"unknown retrieval mode {mode!r}; available: {', '.join(sorted(MODES))}") from None


# --------------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------------


class RetrievalQuery(msgspec.Struct, frozen=True, kw_only=True):
    """What to look for, and in which part of which chronicle.

    ``text`` feeds the lexical source, ``query_vector`` (the caller embeds ``text`` with the
    chronicle's embedder) the vector source and ``entity_keys`` (normalised names or aliases of
    the focus entities, see ``rag.events.normalize_name``; normalised again here) the entity
    source; a source without its input contributes nothing. ``sources`` restricts the sources
    used (see ``MODES``).

    Filters, applied by every source:

    * ``as_of_sequence``: only events with ``sequence <= as_of_sequence`` (the story as it stood
      then); the recency prior is then measured from it.
    * ``pov_keys``: a point-of-view hook; when non-empty, only events whose ``entity_keys``
      overlap these keys (the events the point-of-view character took part in, or that happened
      at, or touched, an entity listed). Empty means no restriction.
    * ``exclude_ids``: events never to return (for example those already in the context).
    """

    tenant_id: uuid.UUID
    chronicle_id: uuid.UUID
    text: str = ""
    query_vector: list[float] | None = None
    entity_keys: list[str] = []
    as_of_sequence: int | None = None
    pov_keys: list[str] = []
    exclude_ids: list[uuid.UUID] = []
    sources: frozenset[Source] = ALL_SOURCES


class Hit(msgspec.Struct, frozen=True, kw_only=True):
    """One event as one source ranked it.

    ``score`` is the source's own measure: cosine similarity (vector), ``ts_rank_cd`` (lexical)
    or the event's importance (entity). ``matched_keys`` are the focus keys an entity hit
    involves, and ``as_actor`` whether one of them is among its actors.
    """

    event_id: uuid.UUID
    sequence: int
    source: Source
    rank: int
    score: float
    matched_keys: tuple[str, ...] = ()
    as_actor: bool = False


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """A fused candidate: ``score = rrf_score + recency_bonus``."""

    event_id: uuid.UUID
    sequence: int
    score: float
    rrf_score: float
    recency_bonus: float
    ranks: dict[str, int]
    source_scores: dict[str, float]
    reasons: list[str]


class CollapsedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A candidate dropped as a near-duplicate of a selected event."""

    event_id: uuid.UUID
    sequence: int
    into_event_id: uuid.UUID
    into_sequence: int
    similarity: float


class RetrievedEvent(msgspec.Struct, frozen=True, kw_only=True):
    event_id: uuid.UUID
    sequence: int
    external_id: str | None
    kind: str
    summary: str
    actors: list[dict[str, Any]]
    location: str | None
    effects: list[dict[str, Any]]
    occurred_at: dt.datetime | None
    importance: float
    score: float
    rrf_score: float
    recency_bonus: float
    mmr_score: float
    ranks: dict[str, int]
    source_scores: dict[str, float]
    reasons: list[str]
    collapsed_ids: list[uuid.UUID]


class RetrievalResult(msgspec.Struct, frozen=True, kw_only=True):
    preset: str
    sources: list[str]
    max_sequence: int
    events: list[RetrievedEvent]
    collapsed: list[CollapsedEvent]
    hit_counts: dict[str, int]
    candidates: int
    timings_ms: dict[str, float]


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


def _last_in_range(head: int, q: RetrievalQuery) -> int:
    """The last sequence a search of ``q`` may return: the chronicle's last (``head``) or the
    as-of sequence, whichever is lower."""
    return head if q.as_of_sequence is None else min(head, q.as_of_sequence)


def _normalized_keys(keys: Iterable[str]) -> list[str]:
    return sorted({key for key in (normalize_name(k) for k in keys) if key})


# The statements are built once per shape (which optional filters, how many focus keys) with
# bound parameters, not once per request: building a Core statement and computing its cache key
# cost more CPU than executing it (~0.15-0.3 ms each, several per context request).


def _shape(q: RetrievalQuery) -> tuple[bool, bool, bool]:
    return q.as_of_sequence is not None, bool(q.pov_keys), bool(q.exclude_ids)


def _filters(as_of: bool, pov: bool, exclude: bool) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [
        chronicle_events.c.tenant_id == bindparam("tenant_id"),
        chronicle_events.c.chronicle_id == bindparam("chronicle_id"),
    ]
    if as_of:
        conditions.append(chronicle_events.c.sequence <= bindparam("as_of_sequence"))
    if pov:
        conditions.append(chronicle_events.c.entity_keys.overlap(bindparam("pov_keys", type_=ARRAY(Text))))
    if exclude:
        conditions.append(chronicle_events.c.id.not_in(bindparam("exclude_ids", expanding=True)))
    return conditions


def _filter_params(q: RetrievalQuery) -> dict[str, Any]:
    params: dict[str, Any] = {"tenant_id": q.tenant_id, "chronicle_id": q.chronicle_id}
    if q.as_of_sequence is not None:
        params["as_of_sequence"] = q.as_of_sequence
    if q.pov_keys:
        params["pov_keys"] = _normalized_keys(q.pov_keys)
    if q.exclude_ids:
        params["exclude_ids"] = list(q.exclude_ids)
    return params


CANDIDATE_POOL: Final = 2_000
"""The full-text and entity sources rank at most this many of the newest events matching (per
condition, see `_newest_matches`); chronicles with fewer matches are ranked in full."""

FIRST_WALK: Final = 256
"""Events the first step of `_newest_matches` walks back through, newest first."""
WALK_OVER_INDEX: Final = 0.25
"""Cost of walking past one event over that of fetching one match found on a GIN index (measured
at a million events: about 1 us per event walked in sequence order, 4 us per match fetched from
all over the table)."""

# Planned for the words and names at hand, not once for all: a generic plan cannot tell a rare
# name (a few rows, found on the GIN index) from a common one (see `_newest_matches`, which leaves
# only rare conditions to the planner, and the exact vector path). The HNSW parameters go
# in the same statement: one round trip per transaction instead of one per search (plus, before,
# a savepoint and its rollback around every vector search). All transaction-local.
_SEARCH_SETTINGS: Final = select(
    func.set_config("plan_cache_mode", "force_custom_plan", True),
    func.set_config("hnsw.ef_search", bindparam("ef_search", type_=String), True),
    func.set_config("hnsw.iterative_scan", bindparam("iterative_scan", type_=String), True),
    func.set_config("hnsw.max_scan_tuples", bindparam("max_scan_tuples", type_=String), True),
)
# pgvector's own defaults, for a transaction whose first search is not a vector search.
_DEFAULT_HNSW: Final[HnswSettings] = (40, "off", 20_000)


async def _settle(conn: AsyncConnection, hnsw: HnswSettings | None) -> None:
    """Custom plans and (``hnsw`` given) these HNSW parameters for the rest of ``conn``'s transaction.

    What was set is remembered per transaction in ``conn.info``, so a transaction's later
    searches cost no statement unless they need other HNSW values. (A savepoint rolled back
    after a search would undo the settings behind this record's back; the searches here take no
    savepoints.)
    """
    transaction = conn.get_transaction()
    applied: tuple[Any, HnswSettings] | None = conn.info.get("search_settings")
    current = None
    if applied is not None and transaction is not None and applied[0] is transaction:
        current = applied[1]
    if current is not None and (hnsw is None or hnsw == current):
        return
    values = hnsw or current or _DEFAULT_HNSW
    ef_search, iterative_scan, max_scan_tuples = values
    await conn.execute(
        _SEARCH_SETTINGS,
        {
            "ef_search": str(ef_search),
            "iterative_scan": iterative_scan,
            "max_scan_tuples": str(max_scan_tuples),
        },  # fmt: skip
    )
    conn.info["search_settings"] = (conn.get_transaction(), values)


async def prepare_search(conn: AsyncConnection, preset: RetrievalPreset) -> None:
    """Set up ``conn``'s transaction for every source of ``preset`` in one statement."""
    await _settle(conn, (preset.ef_search, "relaxed_order", preset.max_scan_tuples))


EXACT_SCAN_EVENTS: Final = 20_000
"""A vector search over at most this many events is exact when they are a small part of the table."""
EXACT_SCAN_SHARE: Final = 0.05
"""...at most this share of it (the planner's row estimate of the table)."""
_TABLE_ROWS_TTL_S: Final = 60.0
_table_rows: weakref.WeakKeyDictionary[Any, tuple[float, float]] = weakref.WeakKeyDictionary()
_TABLE_ROWS: Final = text("SELECT reltuples FROM pg_class WHERE oid = 'chronicle_events'::regclass")


async def _events_in_table(conn: AsyncConnection) -> float:
    """The planner's row estimate of ``chronicle_events`` (-1: never analysed), at most a minute old."""
    key = conn.sync_engine
    now = time.monotonic()
    known = _table_rows.get(key)
    if known is None or now - known[0] > _TABLE_ROWS_TTL_S:
        known = (now, float(await conn.scalar(_TABLE_ROWS) or -1.0))
        _table_rows[key] = known
    return known[1]


@functools.cache
def _exact_select(shape: tuple[bool, bool, bool]) -> Select[Any]:
    distance = chronicle_events.c.embedding.cosine_distance(bindparam("query_vector", type_=Vector()))
    # OFFSET 0 keeps the ORDER BY out of the subquery, so the planner cannot take the HNSW index:
    # every event in range is read along the (chronicle_id, sequence) btree and measured.
    in_range = (
        select(chronicle_events.c.id, chronicle_events.c.sequence, distance.label("distance"))
        .where(*_filters(*shape), chronicle_events.c.embedding.is_not(None))
        .offset(0)
        .subquery("in_range")
    )
    return select(in_range).order_by(in_range.c.distance).limit(bindparam("k", type_=Integer))


@functools.cache
def _vector_select(shape: tuple[bool, bool, bool]) -> Select[Any]:
    distance = chronicle_events.c.embedding.cosine_distance(bindparam("query_vector", type_=Vector()))
    return (
        select(chronicle_events.c.id, chronicle_events.c.sequence, distance.label("distance"))
        .where(*_filters(*shape))
        .order_by(distance)
        .limit(bindparam("k", type_=Integer))
    )


def vector_statement(q: RetrievalQuery, k: int) -> Select[Any]:
    """The k-nearest-neighbour query (exposed so tests and operators can EXPLAIN it)."""
    if q.query_vector is None:
        raise ValueError("the query has no vector")
    return _vector_select(_shape(q)).params(query_vector=q.query_vector, k=k, **_filter_params(q))


async def vector_search(
    conn: AsyncConnection,
    q: RetrievalQuery,
    k: int,
    ef_search: int,
    *,
    iterative_scan: IterativeScan = "relaxed_order",
    max_scan_tuples: int = 20_000,
    head: int | None = None,
    exact_up_to: int = EXACT_SCAN_EVENTS,
) -> list[Hit]:
    """The k events nearest to ``q.query_vector`` by cosine distance; [] without a vector.

    The HNSW parameters are set with ``set_config(..., true)`` (bound parameters) and hold until
    the end of the caller's transaction, never beyond it (see :func:`_settle`). ``relaxed_order``
    may return rows slightly out of distance order, so the rows are re-sorted here (distance,
    then newest sequence, then id). Whether the planner uses the HNSW index at all is its choice:
    for a small chronicle an exact scan of the chronicle's rows through the (tenant_id,
    chronicle_id) btree is usually cheaper, and exact.

    Except where it chooses wrong: a search as of an early sequence of a long chronicle (or of a
    small chronicle in a big table) passes few of the rows the graph walk meets, and the
    iterative scan visits tens of thousands before k pass (120 to 200 ms at p95 as of 1 % of a
    million events). So when the events in range (``head``, the chronicle's last sequence, or
    the as-of sequence, whichever is lower) are at most ``exact_up_to`` and at most
    ``EXACT_SCAN_SHARE`` of the table, they are all measured instead: exact, and bounded by
    their number. ``exact_up_to=0`` always leaves the choice to the planner.
    """
    if q.query_vector is None or k < 1:
        return []
    await _settle(conn, (ef_search, iterative_scan, max_scan_tuples))
    params = {"query_vector": q.query_vector, "k": k, **_filter_params(q)}
    in_range = q.as_of_sequence if head is None else _last_in_range(head, q)
    exact = (
        in_range is not None
        and in_range <= exact_up_to
        and in_range <= EXACT_SCAN_SHARE * await _events_in_table(conn)
    )
    statement = _exact_select(_shape(q)) if exact else _vector_select(_shape(q))
    rows = (await conn.execute(statement, params)).all()
    ordered = sorted(rows, key=lambda r: (float(r.distance), -int(r.sequence), r.id))
    return [
        Hit(event_id=r.id, sequence=r.sequence, source="vector", rank=i, score=1.0 - float(r.distance))
        for i, r in enumerate(ordered, start=1)
    ]


def lexical_terms(text: str) -> tuple[str, str] | None:
    """The (strict, relaxed) websearch strings for ``text``; None when it has no words.

    Strict is the text as the user wrote it (``websearch_to_tsquery`` ANDs the words and honours
    quotes, ``or`` and ``-word``). A natural-language question ("who killed the innkeeper in the
    cellar") rarely has all its words in one summary, so when the text uses none of those
    operators the relaxed form ORs its words; with operators, relaxed equals strict.
    """
    words = _WORD.findall(text)
    if not words:
        return None
    if _WEBSEARCH_OPERATORS.search(text):
        return text, text
    return text, " or ".join(words)


class _Condition(msgspec.Struct, frozen=True):
    """One candidate condition of a source, as the two statements `_newest_matches` chooses from.

    Each takes a batch: the matching rows newest first, at most ``:pool``, below ``:hi``; and
    returns the batch's best ``:k`` in the source's order, each row with the batch's size
    (``batch_rows``), its lowest sequence (``batch_bottom``) and how many of it meet the narrow
    condition (``batch_narrow``). Ranking in PostgreSQL keeps the batch there: at 100,000 events
    a batch of a thousand rows decoded in the service cost it more than the search did.

    ``walk`` reads the events in ``lo < sequence <= hi`` newest first and keeps those that match:
    it costs the window's events whatever PostgreSQL estimates (the inner LIMIT keeps the
    condition out of the scan, so the planner cannot turn it into a GIN lookup). ``rest`` leaves
    the plan to PostgreSQL over all of ``sequence <= hi``: right for a rare condition, found on a
    GIN index.
    """

    walk: Select[Any]
    rest: Select[Any]


Columns = Callable[[Any], list[ColumnElement[Any]]]
Predicate = Callable[[Any], ColumnElement[bool]]


def _condition(
    shape: tuple[bool, bool, bool],
    source_columns: tuple[str, ...],
    columns: Columns,
    condition: Predicate,
    ranking: Columns,
    narrow: Predicate,
) -> _Condition:
    """Both statements of ``condition``, over the table columns ``source_columns``.

    ``columns``, ``condition``, ``ranking`` (the ORDER BY) and ``narrow`` build their expressions
    from a column collection: the table's or the inner walk's for the first two, the batch's for
    the others.
    """
    as_of, pov, exclude = shape
    table = chronicle_events.c
    sequence = chronicle_events.c.sequence
    rest = (
        select(table.id, table.sequence, *columns(table))
        .where(*_filters(*shape), sequence <= bindparam("hi", type_=Integer), condition(table))
        .order_by(sequence.desc())
        .limit(bindparam("pool", type_=Integer))
    )
    # The point-of-view and exclusion filters stay outside the inner scan, so that it reads
    # exactly the window's events.
    needed = {"id", "sequence", "entity_keys", *source_columns}
    inner = (
        select(*(chronicle_events.c[name] for name in sorted(needed)))
        .where(
            *_filters(as_of, False, False),
            sequence > bindparam("lo", type_=Integer),
            sequence <= bindparam("hi", type_=Integer),
        )
        .order_by(sequence.desc())
        .limit(bindparam("span", type_=Integer))
        .subquery("newest_events")
    )
    outside: list[ColumnElement[bool]] = [condition(inner.c)]
    if pov:
        outside.append(inner.c.entity_keys.overlap(bindparam("pov_keys", type_=ARRAY(Text))))
    if exclude:
        outside.append(inner.c.id.not_in(bindparam("exclude_ids", expanding=True)))
    walk = (
        select(inner.c.id, inner.c.sequence, *columns(inner.c))
        .where(*outside)
        .order_by(inner.c.sequence.desc())
        .limit(bindparam("pool", type_=Integer))
    )

    def best_of(step: Select[Any]) -> Select[Any]:
        batch = step.subquery("batch")
        return (
            select(
                batch,
                func.count().over().label("batch_rows"),
                func.min(batch.c.sequence).over().label("batch_bottom"),
                func.count().filter(narrow(batch.c)).over().label("batch_narrow"),
            )
            .order_by(*ranking(batch.c))
            .limit(bindparam("k", type_=Integer))
        )

    return _Condition(walk=best_of(walk), rest=best_of(rest))


async def _newest_matches(
    conn: AsyncConnection,
    conditions: tuple[_Condition, _Condition | None],
    params: Mapping[str, Any],
    newest: int,
) -> list[Any]:
    """The best ``:k`` of each batch of the candidates (see `_Condition`): the newest
    ``CANDIDATE_POOL`` rows of a wide condition and of a narrower one within it (None: none).

    The candidates are exactly those of one query per condition over the whole chronicle
    ("newest first, the first ``CANDIDATE_POOL``"), but that query's cost was at the mercy of the
    planner's estimate: for correlated words (a first and a last name, whose estimate is the
    product of their frequencies) it collected and sorted every match, a tenth of a
    million-event chronicle, instead of walking back through the newest (0.65 s instead of 15
    ms), and an overestimate walks a whole chronicle for a rare name.

    So the density of matches is measured instead: the newest ``FIRST_WALK`` events are walked
    (sequences are gap-free: a window of sequences is a window of events), then each step either
    walks back as far as the density seen so far says the missing rows are (with a margin), or,
    when fetching every remaining match from the GIN index is cheaper than that walk, leaves the
    rest of the chronicle to the planner (a rare condition). Once the wide pool is full the
    narrow condition goes on alone from where the wide one stopped. The batches do not overlap,
    so the best ``:k`` of all the candidates are among the rows returned.
    """
    pool = CANDIDATE_POOL
    wide, narrow = conditions
    best: list[Any] = []
    current, wide_found, narrow_found = wide, 0, 0
    hi, examined = newest, 0
    while hi > 0:
        missing = pool - (wide_found if current is wide else narrow_found)
        found = pool - missing
        density = found / examined if examined else None
        if density is None:
            statement, span = current.walk, FIRST_WALK
        elif density > 0 and density * density * hi >= WALK_OVER_INDEX * missing:
            # Walking the missing rows' expected span (missing / density events) costs less than
            # fetching every remaining match (density * hi) from the index.
            statement, span = current.walk, max(FIRST_WALK, math.ceil(missing / density * 1.25))
        else:
            statement, span = current.rest, hi  # rare: every remaining match, on the index
        lo = max(0, hi - span)
        batch = (
            await conn.execute(statement, {**params, "lo": lo, "hi": hi, "span": hi - lo, "pool": missing})
        ).all()
        best.extend(batch)
        batch_rows = int(batch[0].batch_rows) if batch else 0
        if current is wide:
            wide_found += batch_rows
            narrow_found += int(batch[0].batch_narrow) if batch else 0
        else:
            narrow_found += batch_rows
        full = batch_rows == missing
        # A full batch was read down to its lowest row only: the rest of the window comes again.
        bottom = int(batch[0].batch_bottom) - 1 if full else lo
        examined += hi - bottom
        hi = bottom
        if full:
            if current is narrow or narrow is None or narrow_found >= pool:
                break
            current = narrow
    return best


async def _newest_sequence(conn: AsyncConnection, q: RetrievalQuery, head: int | None) -> int:
    """Where the walk back starts: the as-of sequence or the chronicle's last (read if not given)."""
    if head is None:
        head = await conn.scalar(_HEAD, {"chronicle_id": q.chronicle_id, "tenant_id": q.tenant_id}) or 0
    return _last_in_range(int(head), q)


@functools.cache
def _lexical_conditions(
    shape: tuple[bool, bool, bool], operators: bool
) -> tuple[_Condition, _Condition | None]:
    config: ColumnElement[Any] = literal_column(f"'{_TS_CONFIG}'::regconfig")
    strict = func.websearch_to_tsquery(config, bindparam("strict_text", type_=String))
    relaxed = func.websearch_to_tsquery(config, bindparam("relaxed_text", type_=String))

    def columns(c: Any) -> list[ColumnElement[Any]]:
        return [
            func.ts_rank_cd(c.search_vector, relaxed, type_=Float).label("rank"),
            c.search_vector.op("@@")(strict).label("all_words"),
        ]

    def any_word(c: Any) -> ColumnElement[bool]:
        # Or all of them: PostgreSQL's parser keeps some tokens whole (an e-mail address, a URL)
        # that the relaxed text splits into words, and the walk needs all-words matches to be
        # any-word matches too.
        return c.search_vector.op("@@")(relaxed.op("||")(strict))  # type: ignore[no-any-return]

    def all_words(c: Any) -> ColumnElement[bool]:
        return c.search_vector.op("@@")(strict)  # type: ignore[no-any-return]

    def ranking(b: Any) -> list[ColumnElement[Any]]:
        return [b.all_words.desc(), b.rank.desc(), b.sequence.desc(), b.id]

    def narrow(b: Any) -> ColumnElement[bool]:
        return b.all_words  # type: ignore[no-any-return]

    def of(condition: Predicate) -> _Condition:
        return _condition(shape, ("search_vector",), columns, condition, ranking, narrow)

    # With websearch operators the relaxed text is the strict one: one condition, one pool.
    if operators:
        return of(all_words), None
    return of(any_word), of(all_words)


async def lexical_search(
    conn: AsyncConnection, q: RetrievalQuery, k: int, *, head: int | None = None
) -> list[Hit]:
    """Full-text matches for ``q.text``, best first; [] for empty or stopword-only text.

    Events matching the strict query (all words) come first, then those matching only the relaxed
    one (any word); within each group by ``ts_rank_cd`` against the relaxed query (which rewards
    covering more of the words, close together, in the summary over names and places), then
    newest sequence, then id. Only candidates are ranked: the newest ``CANDIDATE_POOL`` matches
    of all the words and of any word or all of them (a common word or name matches a tenth of a
    long chronicle). ``head``: the chronicle's last sequence, when the caller has it.
    """
    terms = lexical_terms(q.text)
    if terms is None or k < 1:
        return []
    strict_text, relaxed_text = terms
    params = {"strict_text": strict_text, "relaxed_text": relaxed_text, "k": k, **_filter_params(q)}
    await _settle(conn, None)
    newest = await _newest_sequence(conn, q, head)
    conditions = _lexical_conditions(_shape(q), strict_text == relaxed_text)
    rows = await _newest_matches(conn, conditions, params, newest)
    # The order of the SQL's ORDER BY (uuids compare as bytes there, as integers here: the same).
    rows.sort(key=lambda r: (not r.all_words, -float(r.rank), -int(r.sequence), r.id))
    return [
        Hit(event_id=r.id, sequence=r.sequence, source="lexical", rank=i, score=float(r.rank))
        for i, r in enumerate(rows[:k], start=1)
    ]


@functools.lru_cache(maxsize=256)
def _entity_conditions(shape: tuple[bool, bool, bool], n_keys: int) -> tuple[_Condition, _Condition | None]:
    keys = bindparam("keys", type_=ARRAY(Text))

    def columns(c: Any) -> list[ColumnElement[Any]]:
        matched = sum(
            (
                case((c.entity_keys.contains(bindparam(f"key_{i}", type_=ARRAY(Text))), 1), else_=0)
                for i in range(n_keys)
            ),
            start=literal(0, Integer),
        )
        return [
            c.importance,
            c.entity_keys,
            matched.label("matched"),
            c.actor_keys.overlap(keys).label("as_actor"),
        ]

    def any_key(c: Any) -> ColumnElement[bool]:
        return c.entity_keys.overlap(keys)  # type: ignore[no-any-return]

    def all_keys(c: Any) -> ColumnElement[bool]:
        return c.entity_keys.contains(keys)  # type: ignore[no-any-return]

    def ranking(b: Any) -> list[ColumnElement[Any]]:
        return [b.matched.desc(), b.as_actor.desc(), b.importance.desc(), b.sequence.desc(), b.id]

    def narrow(b: Any) -> ColumnElement[bool]:
        return b.matched == n_keys  # type: ignore[no-any-return]

    def of(condition: Predicate) -> _Condition:
        return _condition(shape, ("importance", "actor_keys"), columns, condition, ranking, narrow)

    # Candidates: the newest events involving any focus entity, and (for several) the newest
    # involving all of them.
    return of(any_key), of(all_keys) if n_keys > 1 else None


async def entity_search(
    conn: AsyncConnection, q: RetrievalQuery, k: int, *, head: int | None = None
) -> list[Hit]:
    """Events involving the focus entities (``entity_keys && keys``, on the GIN index).

    Ranked by how many focus keys the event involves, then whether one of them acts in it (as
    opposed to being only its location or an effect's target), then importance, then newest.
    Only candidates are ranked: the newest ``CANDIDATE_POOL`` events involving any focus entity
    and (for several) the newest involving all of them; a main character is in a tenth of a long
    chronicle. ``head``: the chronicle's last sequence, when the caller has it.
    """
    keys = _normalized_keys(q.entity_keys)
    if not keys or k < 1:
        return []
    params: dict[str, Any] = {"keys": keys, "k": k, **_filter_params(q)}
    params.update({f"key_{i}": [key] for i, key in enumerate(keys)})
    await _settle(conn, None)
    newest = await _newest_sequence(conn, q, head)
    rows = await _newest_matches(conn, _entity_conditions(_shape(q), len(keys)), params, newest)
    rows.sort(key=lambda r: (-int(r.matched), not r.as_actor, -float(r.importance), -int(r.sequence), r.id))
    wanted = set(keys)
    return [
        Hit(
            event_id=r.id,
            sequence=r.sequence,
            source="entity",
            rank=i,
            score=float(r.importance),
            matched_keys=tuple(sorted(wanted.intersection(r.entity_keys))),
            as_actor=bool(r.as_actor),
        )
        for i, r in enumerate(rows[:k], start=1)
    ]


# --------------------------------------------------------------------------------------------------
# Fusion and collapse
# --------------------------------------------------------------------------------------------------


def _reason(hit: Hit) -> str:
    match hit.source:
        case "vector":
            return f"vector#{hit.rank} ({hit.score:.2f})"
        case "lexical":
            return f"lexical#{hit.rank} ({hit.score:.2f})"
        case "entity":
            role = "actor" if hit.as_actor else "involved"
            return f"entity#{hit.rank}: {', '.join(hit.matched_keys)} ({role})"
    raise AssertionError(hit.source)  # pragma: no cover


def recency_bonus(sequence: int, max_sequence: int, preset: RetrievalPreset) -> float:
    """``recency_weight * 0.5 ** (events back from max_sequence / recency_half_life)``."""
    if preset.recency_weight == 0.0 or max_sequence <= 0:
        return 0.0
    distance = max(0, max_sequence - sequence)
    return preset.recency_weight * math.pow(0.5, distance / preset.recency_half_life)


def fuse(hit_lists: Iterable[Sequence[Hit]], preset: RetrievalPreset, max_sequence: int) -> list[Candidate]:
    """Weighted reciprocal rank fusion plus the recency prior, best first.

    ``rrf_score = sum over sources of weight_s / (rrf_k + rank_s)``; ``score = rrf_score +
    recency_bonus`` (see ``rag.presets``). Each candidate keeps its rank and raw score per source
    and readable ``reasons``. Ties: newest sequence first, then id.
    """
    ranks: dict[uuid.UUID, dict[str, int]] = {}
    scores: dict[uuid.UUID, dict[str, float]] = {}
    reasons: dict[uuid.UUID, list[str]] = {}
    sequences: dict[uuid.UUID, int] = {}
    by_source: dict[str, list[Hit]] = {}
    for hits in hit_lists:
        for hit in hits:
            by_source.setdefault(hit.source, []).append(hit)
    # A fixed source order (and rank order within one) makes the float sums reproducible.
    for source in SOURCE_ORDER:
        for hit in sorted(by_source.get(source, []), key=lambda h: h.rank):
            seen = ranks.setdefault(hit.event_id, {})
            if source in seen:
                continue  # a source lists an event once; keep its best rank
            seen[source] = hit.rank
            scores.setdefault(hit.event_id, {})[source] = hit.score
            reasons.setdefault(hit.event_id, []).append(_reason(hit))
            sequences[hit.event_id] = hit.sequence
    candidates: list[Candidate] = []
    for event_id, event_ranks in ranks.items():
        rrf = sum(
            preset.weight(s) / (preset.rrf_k + event_ranks[s]) for s in SOURCE_ORDER if s in event_ranks
        )
        bonus = recency_bonus(sequences[event_id], max_sequence, preset)
        event_reasons = reasons[event_id]
        if bonus > 0.0:
            event_reasons = [*event_reasons, f"recency +{bonus:.4f}"]
        candidates.append(
            Candidate(
                event_id=event_id,
                sequence=sequences[event_id],
                score=rrf + bonus,
                rrf_score=rrf,
                recency_bonus=bonus,
                ranks=event_ranks,
                source_scores=scores[event_id],
                reasons=event_reasons,
            )
        )
    candidates.sort(key=lambda c: (-c.score, -c.sequence, c.event_id))
    return candidates


class Selected(msgspec.Struct, frozen=True, kw_only=True):
    """A candidate kept by :func:`collapse_near_duplicates`, in selection order."""

    candidate: Candidate
    mmr_score: float
    collapsed_ids: list[uuid.UUID]


def collapse_near_duplicates(
    candidates: Sequence[Candidate],
    vectors: Mapping[uuid.UUID, Sequence[float] | npt.NDArray[np.float32]],
    preset: RetrievalPreset,
) -> tuple[list[Selected], list[CollapsedEvent]]:
    """MMR re-selection of at most ``preset.top_k`` candidates, collapsing near-duplicates.

    Repeatedly picks the remaining candidate with the best
    ``mmr_lambda * score / best_score - (1 - mmr_lambda) * max(0, max cosine to the selected)``
    (ties: fused order). After each pick, every remaining candidate whose cosine to the pick
    exceeds ``duplicate_threshold`` is dropped and recorded as collapsed into it. A candidate
    without a vector is never a duplicate and never penalised. ``candidates`` must be in fused
    order (as :func:`fuse` returns them).
    """
    n = len(candidates)
    if n == 0:
        return [], []
    dimension = next((len(v) for v in vectors.values() if len(v) > 0), 0)
    matrix = np.zeros((n, dimension), dtype=np.float64)
    for i, candidate in enumerate(candidates):
        vector = vectors.get(candidate.event_id)
        if vector is not None and len(vector) == dimension and dimension > 0:
            row = np.asarray(vector, dtype=np.float64)
            norm = float(np.linalg.norm(row))
            if norm > 0.0:
                matrix[i] = row / norm
    # einsum, not `matrix @ matrix.T`: for a few dozen rows the multi-threaded BLAS call is fast
    # when idle but took 10-40 ms at the 90th percentile on a busy 2-core machine (thread wake-ups).
    similarity: npt.NDArray[np.float64] = np.einsum("ik,jk->ij", matrix, matrix)
    best = max(c.score for c in candidates)
    relevance = np.array([c.score / best if best > 0 else 0.0 for c in candidates], dtype=np.float64)
    penalty = np.zeros(n, dtype=np.float64)  # max(0, max cosine to any selected item)
    remaining = list(range(n))  # kept in fused order, so the first best MMR score wins ties
    selected: list[Selected] = []
    collapsed: list[CollapsedEvent] = []
    lam = preset.mmr_lambda
    while remaining and len(selected) < preset.top_k:
        mmr = lam * relevance[remaining] - (1.0 - lam) * penalty[remaining]
        pick = remaining[int(np.argmax(mmr))]
        pick_mmr = float(mmr.max())
        remaining.remove(pick)
        chosen = candidates[pick]
        # Whole-array steps over the remaining candidates (in fused order) instead of one numpy
        # scalar at a time: the same comparisons and maxima, a tenth of the interpreter work.
        rest = np.array(remaining, dtype=np.intp)
        similar = similarity[pick, rest]
        is_duplicate = similar > preset.duplicate_threshold
        duplicates: list[uuid.UUID] = []
        for i, cosine in zip(rest[is_duplicate].tolist(), similar[is_duplicate].tolist(), strict=True):
            duplicates.append(candidates[i].event_id)
            collapsed.append(
                CollapsedEvent(
                    event_id=candidates[i].event_id,
                    sequence=candidates[i].sequence,
                    into_event_id=chosen.event_id,
                    into_sequence=chosen.sequence,
                    similarity=cosine,
                )
            )
        survivors = rest[~is_duplicate]
        penalty[survivors] = np.maximum(penalty[survivors], similar[~is_duplicate])
        remaining = survivors.tolist()
        selected.append(Selected(candidate=chosen, mmr_score=pick_mmr, collapsed_ids=duplicates))
    return selected, collapsed


# --------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


_HEAD: Final = select(chronicles.c.last_sequence).where(
    chronicles.c.id == bindparam("chronicle_id"), chronicles.c.tenant_id == bindparam("tenant_id")
)


class Searched(msgspec.Struct, frozen=True, kw_only=True):
    """One source's hits for a query, and how long the search took."""

    hits: list[Hit]
    ms: float


async def search_source(
    conn: AsyncConnection,
    q: RetrievalQuery,
    preset: RetrievalPreset,
    source: Source,
    *,
    head: int | None = None,
) -> Searched:
    """Run one source of :func:`retrieve` on its own (see ``retrieve(..., searched=)``).

    ``head``: the chronicle's last sequence, when the caller has it (saves the full-text and
    entity sources reading it).
    """
    t = time.perf_counter()
    if source == "vector":
        hits = await vector_search(
            conn, q, preset.k_vector, preset.ef_search, max_scan_tuples=preset.max_scan_tuples, head=head
        )
    elif source == "lexical":
        hits = await lexical_search(conn, q, preset.k_lexical, head=head)
    else:
        hits = await entity_search(conn, q, preset.k_entity, head=head)
    return Searched(hits=hits, ms=_ms(t))


async def retrieve(
    conn: AsyncConnection,
    q: RetrievalQuery,
    preset: RetrievalPreset,
    *,
    searched: Mapping[Source, Searched] | None = None,
    chronicle_sequence: int | None = None,
) -> RetrievalResult | None:
    """Run the sources, fuse, load the best ``rerank_pool`` events, collapse, return ``top_k``.

    None when the chronicle does not exist for this tenant. The sources run one after the other
    on ``conn``, except those in ``searched``: results of :func:`search_source` for the same query
    and preset that the caller already has (a context request runs the sources that need no query
    vector while the question is still being embedded). ``chronicle_sequence``: the chronicle's
    last sequence as the caller has just read it (so it exists); otherwise it is read here.
    ``timings_ms`` has one entry per stage (``chronicle``, each source run, ``fuse``, ``load``,
    ``collapse``) and ``total``.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    head = chronicle_sequence
    if head is None:
        head = await conn.scalar(_HEAD, {"chronicle_id": q.chronicle_id, "tenant_id": q.tenant_id})
    timings["chronicle"] = _ms(t)
    if head is None:
        return None
    max_sequence = _last_in_range(int(head), q)

    if any(source not in (searched or {}) for source in q.sources):
        await prepare_search(conn, preset)
    hit_lists: dict[str, list[Hit]] = {}
    for source in SOURCE_ORDER:
        if source not in q.sources:
            continue
        done = searched.get(source) if searched is not None else None
        if done is None:
            done = await search_source(conn, q, preset, source, head=int(head))
        timings[source] = done.ms
        hit_lists[source] = done.hits

    t = time.perf_counter()
    candidates = fuse(hit_lists.values(), preset, max_sequence)
    pool = candidates[: preset.rerank_pool]
    timings["fuse"] = _ms(t)

    t = time.perf_counter()
    events = await _load_events(conn, q, [c.event_id for c in pool])
    timings["load"] = _ms(t)

    t = time.perf_counter()
    pool = [c for c in pool if c.event_id in events]  # gone since the search (deleted chronicle)
    vectors = {event_id: row["embedding"] for event_id, row in events.items() if row["embedding"] is not None}
    selected, collapsed = collapse_near_duplicates(pool, vectors, preset)
    timings["collapse"] = _ms(t)

    result_events = [_retrieved(s, events[s.candidate.event_id]) for s in selected]
    timings["total"] = _ms(started)
    return RetrievalResult(
        preset=preset.name,
        sources=[s for s in SOURCE_ORDER if s in q.sources],
        max_sequence=max_sequence,
        events=result_events,
        collapsed=collapsed,
        hit_counts={source: len(hits) for source, hits in hit_lists.items()},
        candidates=len(candidates),
        timings_ms=timings,
    )


_LOAD_EVENTS: Final = select(
    chronicle_events.c.id,
    chronicle_events.c.sequence,
    chronicle_events.c.external_id,
    chronicle_events.c.kind,
    chronicle_events.c.summary,
    chronicle_events.c.actors,
    chronicle_events.c.location,
    chronicle_events.c.effects,
    chronicle_events.c.occurred_at,
    chronicle_events.c.importance,
    # pgvector's binary send format (uint16 dim, uint16 unused, big-endian float4s) as a bytea:
    # one buffer per row instead of parsing the text form or 384 Python floats.
    func.vector_send(chronicle_events.c.embedding, type_=LargeBinary).label("embedding"),
).where(
    chronicle_events.c.tenant_id == bindparam("tenant_id"),
    chronicle_events.c.chronicle_id == bindparam("chronicle_id"),
    chronicle_events.c.id.in_(bindparam("event_ids", expanding=True)),
)


async def _load_events(
    conn: AsyncConnection, q: RetrievalQuery, event_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    if not event_ids:
        return {}
    rows = await conn.execute(
        _LOAD_EVENTS, {"tenant_id": q.tenant_id, "chronicle_id": q.chronicle_id, "event_ids": event_ids}
    )
    loaded: dict[uuid.UUID, dict[str, Any]] = {}
    for row in rows:
        data = dict(row._mapping)
        if data["embedding"] is not None:
            data["embedding"] = np.frombuffer(data["embedding"], dtype=">f4", offset=4).astype(np.float32)
        loaded[row.id] = data
    return loaded


def _retrieved(selected: Selected, row: Mapping[str, Any]) -> RetrievedEvent:
    c = selected.candidate
    return RetrievedEvent(
        event_id=c.event_id,
        sequence=c.sequence,
        external_id=row["external_id"],
        kind=row["kind"],
        summary=row["summary"],
        actors=row["actors"],
        location=row["location"],
        effects=row["effects"],
        occurred_at=row["occurred_at"],
        importance=float(row["importance"]),
        score=c.score,
        rrf_score=c.rrf_score,
        recency_bonus=c.recency_bonus,
        mmr_score=selected.mmr_score,
        ranks=c.ranks,
        source_scores=c.source_scores,
        reasons=c.reasons,
        collapsed_ids=selected.collapsed_ids,
    )
