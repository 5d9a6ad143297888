"""The context assembler: what happened (retrieval) plus how things stand now (state), in budget.

It receives current state through the small `StateSource` protocol defined here, so `rag` knows
nothing about where state comes from: the ECS tables, or a replay of the chronicle when ECS is
unavailable (degraded mode). Current state always wins over history: a retrieved event whose fact
was later superseded is marked so, and rendered as "earlier: ... now: ...".

Budget: the rendered text is counted with the chosen token counter, and the bundle is shrunk until
it fits: history is cut first (lowest score first), then the recent events (oldest first); pinned
state is never dropped, and only if it alone exceeds the budget is the text truncated (said in the
manifest). The text shows at most `RENDERED_RELATIONSHIPS` relationships per focus entity (the
JSON state has all of them; the manifest says how many were left out). Ordering is deterministic,
so the same chronicle state and request give byte-identical text and prompt caches keep hitting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Final, Literal, Protocol, TypeVar

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from rag.events import normalize_name
from rag.presets import RetrievalPreset
from rag.query_analysis import KnownEntity, analyse_query, resolve_reference
from rag.retrieval import (
    SOURCE_ORDER,
    RetrievalQuery,
    RetrievalResult,
    RetrievedEvent,
    Searched,
    Source,
    prepare_search,
    retrieve,
    search_source,
    sources_for_mode,
)
from rag.store import StoredEvent, events_named, events_up_to, recent_events
from rag.templates import TemplateRegistry
from rag.tokens import TokenCounter

__all__ = [
    "Bundle",
    "Citation",
    "ContextRequest",
    "EntityState",
    "Fact",
    "HistoryItem",
    "Manifest",
    "Present",
    "RelationFact",
    "StateSource",
    "UnknownPointOfView",
    "assemble_context",
    "lying_at",
    "needs_query_vector",
]

Mode = Literal["full", "chronicle_only"]
A = TypeVar("A")
B = TypeVar("B")
RECENT_EVENTS = 5
RENDERED_RELATIONSHIPS = 12
"""At most this many relationships per focus entity in the text (see `_rendered_relationships`)."""
PRESENT_LISTED = 20
"""A question about who is at a place ("who is at the keep?") lists under the place the names of at
most this many of the characters there (the first to arrive, sorted by name)."""
LYING_LISTED = 20
"""A question about what is at a place ("what is hidden in the chapel?") lists under the place at
most this many of the items left there (sorted by name)."""


class Fact(msgspec.Struct, frozen=True, kw_only=True):
    """One fact of current state, with the event that established it."""

    value: Any
    sequence: int | None = None
    event_id: str | None = None


class Citation(msgspec.Struct, frozen=True):
    """The event that last set one part of a fact."""

    sequence: int
    event_id: str


class RelationFact(msgspec.Struct, frozen=True, kw_only=True):
    other_id: str
    other: str
    direction: Literal["outgoing", "incoming"]
    types: list[str]
    valence: dict[str, float]
    sequence: int | None = None
    event_id: str | None = None
    """The event of ``sequence``: the relationship's latest change (a relation type set or
    removed, or a valence)."""
    type_data: dict[str, dict[str, Any]] = {}
    """What a ``relate`` said of a type, for the types that have data (``{"arrested": {"charge":
    "embezzlement"}}``)."""
    valence_sources: dict[str, Citation] = {}
    """Per valence dimension, the event that last changed it: trust may date from a betrayal
    long after the affection it sits beside."""


class EntityState(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    kind: str
    aliases: list[str] = []
    location: Fact | None = None
    """value: the location's name."""
    location_id: str | None = None
    status: Fact | None = None
    holder: Fact | None = None
    carried_by: list[str] = []
    """Who carries the holder, and so on up (the case's carrier, for a drive in a case)."""
    inventory: list[Fact] = []
    """value: each held item's name."""
    components: dict[str, Fact] = {}
    relationships: list[RelationFact] = []


class Present(msgspec.Struct, frozen=True):
    """A character at a place, with its status (None: none recorded)."""

    name: str
    status: str | None = None


class StateSource(Protocol):
    """Where current state comes from (ECS, or a replay of the chronicle)."""

    label: str
    """"ecs" or "chronicle replay"; rendered so the LLM knows how much to trust it."""

    async def known_entities(self) -> Sequence[KnownEntity]:
        """The entities a query may mention. Sources that keep them between requests return the
        same tuple each time, which lets query analysis reuse its name index without comparing
        every name (see ``rag.query_analysis``)."""
        ...

    async def entity_states(
        self, entity_ids: Sequence[str], as_of_sequence: int | None
    ) -> list[EntityState]: ...

    async def position(self) -> int | None:
        """The last chronicle sequence this state reflects."""
        ...

    async def present_at(self, location_id: str, as_of_sequence: int | None, limit: int) -> list[Present]:
        """The characters at a place (now, or as of a sequence), at most ``limit``."""
        ...

    async def items_at(self, location_id: str, as_of_sequence: int | None, limit: int) -> list[EntityState]:
        """The states of items whose place is this one (now, or as of a sequence), whoever holds
        them (someone there, the place, another item), at most ``limit``; ``lying_at`` picks the
        ones left there."""
        ...


class ContextRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: uuid.UUID
    chronicle_id: uuid.UUID
    query: str
    focus: list[str] = []
    max_tokens: int = 1_500
    preset: RetrievalPreset
    template: str = "default"
    pov: str | None = None
    as_of_sequence: int | None = None
    retrieval_mode: str = "hybrid"
    """hybrid (all sources), vector, lexical: the evaluation harness's baselines."""
    include_state: bool = True


class HistoryItem(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    sequence: int
    external_id: str | None
    occurred_at: dt.datetime | None
    kind: str
    summary: str
    location: str | None
    actors: list[str]
    score: float | None = None
    why: list[str] = []
    superseded: bool = False
    superseded_note: str | None = None


class Omitted(msgspec.Struct, frozen=True, kw_only=True):
    section: str
    id: str | None = None
    sequence: int | None = None
    reason: str


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    included: dict[str, int]
    omitted: list[Omitted]
    truncated: bool
    token_counter: str
    template: str
    preset: str
    facets: list[str]
    unresolved_focus: list[str]
    present: dict[str, list[str]] = {}
    """For a presence question: each place in focus -> the names of the characters there."""
    lying_here: dict[str, list[str]] = {}
    """For a question about what is at a place: each place in focus -> the items left there, not
    carried by anyone ("Drive (in Black Case)" for one inside another)."""


class Bundle(msgspec.Struct, frozen=True, kw_only=True):
    mode: Mode
    degraded_reason: str | None
    state_source: str
    chronicle_sequence: int
    ecs_sequence: int | None
    focus: list[dict[str, Any]]
    """Each ``{id, name, kind}``, plus ``ambiguous: true`` when the words that named it name others too."""
    state: list[EntityState]
    history: list[HistoryItem]
    recent: list[HistoryItem]
    manifest: Manifest
    token_count: int
    max_tokens: int
    text: str
    timings_ms: dict[str, float]


EmbedQuery = Callable[[list[str]], Awaitable[list[list[float]]]]


def needs_query_vector(request: ContextRequest) -> bool:
    """Whether assembling this request embeds its query (callers may start that early)."""
    return "vector" in sources_for_mode(request.retrieval_mode) and bool(request.query.strip())


async def assemble_context(
    engine: AsyncEngine,
    request: ContextRequest,
    *,
    chronicle_sequence: int,
    state_source: StateSource | None,
    mode: Mode,
    degraded_reason: str | None,
    embed: EmbedQuery,
    counter: TokenCounter,
    templates: TemplateRegistry,
    spare_connection: bool = False,
) -> Bundle:
    """The context bundle for ``request``.

    ``spare_connection``: the caller has cores and connections to spare (it is not busy with
    other requests), so the vector search may run on a connection of its own, concurrently with
    the other searches: lower latency for one more connection.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()

    t = time.perf_counter()
    known = await state_source.known_entities() if state_source is not None else ()
    scope = (request.chronicle_id, state_source.label) if state_source is not None else None
    analysis = analyse_query(request.query, known, request.focus, scope=scope)
    pov = _point_of_view(request.pov, known, scope)
    timings["analyse"] = _ms(t)

    focus_ids = list(dict.fromkeys(m.entity_id for m in analysis.mentions))
    if pov is not None and pov.id not in focus_ids and _FIRST_PERSON.search(request.query):
        # "Where am I?" asked as the point of view is a question about the pov's own state.
        focus_ids.insert(0, pov.id)
    by_id = {k.id: k for k in known}
    focus_keys = sorted(
        {normalize_name(n) for i in focus_ids if i in by_id for n in (by_id[i].name, *by_id[i].aliases)}
    )

    sources = sources_for_mode(request.retrieval_mode)
    pov_keys = [] if pov is None else sorted({normalize_name(n) for n in (pov.name, *pov.aliases)})
    upto = request.as_of_sequence if request.as_of_sequence is not None else chronicle_sequence

    async def read_state() -> tuple[
        list[EntityState], EntityState | None, dict[str, list[Present]], dict[str, list[str]], float
    ]:
        """The focus entities' states, the point of view's, who is at each focus place and what
        lies there (by the place's id)."""
        t = time.perf_counter()
        present: dict[str, list[Present]] = {}
        lying: dict[str, list[str]] = {}
        if state_source is None or not request.include_state:
            return [], None, present, lying, _ms(t)
        wanted = list(focus_ids)
        pov_id = pov.id if pov is not None else None
        if pov_id is not None and pov_id not in wanted:
            wanted.append(pov_id)
        fetched = {
            s.id: _relationships_in_order(s)
            for s in await state_source.entity_states(wanted, request.as_of_sequence)
        }
        states = [fetched[i] for i in focus_ids if i in fetched]
        if analysis.has("presence"):
            # "Who is at the keep?": the answer is who is there, which no name in the question
            # brings. Their names go under the place, pinned with it; their whole states would
            # crowd history out of the budget (and a question about a past event there is
            # answered by that event, not by who is there now).
            for place in [s for s in states if s.kind == "location"]:
                found = await state_source.present_at(place.id, request.as_of_sequence, PRESENT_LISTED)
                # By name: the same order whichever source answered (ECS or a replay).
                present[place.id] = sorted(found, key=lambda p: (p.name.casefold(), p.name))
        if analysis.has("possession"):
            # "What is hidden in the chapel?": what a place holds are the things left there. Those
            # carried by someone there are in that someone's inventory, not the place's.
            for place in [s for s in states if s.kind == "location"]:
                items = await state_source.items_at(place.id, request.as_of_sequence, LYING_LISTED)
                lying[place.id] = lying_at(place, items)[:LYING_LISTED]
        return states, fetched.get(pov_id) if pov_id else None, present, lying, _ms(t)

    async def embedding() -> tuple[list[float], float]:
        t = time.perf_counter()
        vector = (await embed([request.query]))[0]
        return vector, _ms(t)

    async def search() -> tuple[
        RetrievalResult | None, list[StoredEvent], list[StoredEvent], set[int] | None, float, float
    ]:
        """Retrieval, the latest events, the events the question names (#15, an id), the sequences
        the point of view can know (None: no pov), and the embedding's and the search's times."""
        t = time.perf_counter()
        query = RetrievalQuery(
            tenant_id=request.tenant_id,
            chronicle_id=request.chronicle_id,
            text=request.query,
            entity_keys=focus_keys,
            as_of_sequence=request.as_of_sequence,
            sources=sources,
        )
        preset = request.preset if not pov_keys else _widened(request.preset)
        # The question is embedded on the embedding thread while the reads that need no vector
        # (words, entities, the latest events) run in PostgreSQL: model and database work at once.
        pending = asyncio.ensure_future(embedding()) if needs_query_vector(request) else None
        embed_ms = 0.0

        async def with_vector() -> RetrievalQuery:
            nonlocal embed_ms
            if pending is None:
                return query
            vector, embed_ms = await pending
            return msgspec.structs.replace(query, query_vector=vector)

        async def vector_apart() -> Searched:
            vector_query = await with_vector()
            async with engine.begin() as own:
                return await search_source(own, vector_query, preset, "vector", head=chronicle_sequence)

        try:
            async with engine.begin() as conn:
                await prepare_search(conn, preset)

                async def without_vector() -> tuple[
                    dict[Source, Searched], list[StoredEvent], list[StoredEvent], set[int] | None
                ]:
                    searched: dict[Source, Searched] = {
                        source: await search_source(conn, query, preset, source, head=chronicle_sequence)
                        for source in SOURCE_ORDER
                        if source in sources and source != "vector"
                    }
                    recent = await recent_events(
                        conn, request.tenant_id, request.chronicle_id, upto, RECENT_EVENTS
                    )
                    refs = analysis.events
                    named = [] if refs is None else await events_named(
                        conn, request.tenant_id, request.chronicle_id, upto,
                        sequences=refs.sequences, ids=[uuid.UUID(i) for i in refs.ids],
                        external_ids=refs.external_ids,
                    )  # fmt: skip
                    known_to_pov = (
                        await _knowable_sequences(conn, request, pov_keys, upto, _places(known))
                        if pov_keys
                        else None
                    )
                    return searched, recent, named, known_to_pov

                if spare_connection and pending is not None:
                    # Idle cores: the vector search gets a connection of its own and runs as soon as
                    # the vector is there, alongside the word and entity searches.
                    (searched, recent_rows, named_rows, witnessed), vector_hits = await _together(
                        without_vector(), vector_apart()
                    )
                    searched["vector"] = vector_hits
                else:
                    searched, recent_rows, named_rows, witnessed = await without_vector()
                result = await retrieve(
                    conn, await with_vector(), preset, searched=searched,
                    chronicle_sequence=chronicle_sequence,
                )  # fmt: skip
        finally:
            if pending is not None and not pending.done():
                pending.cancel()  # the search failed or was cancelled; a memoized embedding goes on
        return result, recent_rows, named_rows, witnessed, embed_ms, _ms(t)

    # Current state and the search of the chronicle do not depend on each other: they run at the
    # same time, each on its own connection (ECS, or a replay; the chronicle), and the question is
    # embedded on the embedding thread meanwhile. One request then waits for the longer of the two,
    # not for their sum.
    (states, pov_state, present, lying, state_ms), searched_all = await _together(read_state(), search())
    result, recent_rows, named_rows, witnessed, embed_ms, retrieve_ms = searched_all
    timings["embed"] = embed_ms
    timings["state"] = state_ms
    timings["retrieve"] = retrieve_ms
    retrieved = [] if result is None else list(result.events)
    if named_rows:
        # Named in the question: the event asked about, whatever the searches ranked.
        named_ids = {e.id for e in named_rows}
        retrieved = [_named(e) for e in named_rows] + [e for e in retrieved if e.event_id not in named_ids]

    t = time.perf_counter()
    omitted: list[Omitted] = []
    if witnessed is not None:
        kept = [e for e in retrieved if e.sequence in witnessed]
        omitted += [
            Omitted(section="history", id=str(e.event_id), sequence=e.sequence, reason="pov cannot know it")
            for e in retrieved if e.sequence not in witnessed
        ]  # fmt: skip
        retrieved = kept[: request.preset.top_k]
        recent_rows = [e for e in recent_rows if e.sequence in witnessed]
    recent_ids = {e.id for e in recent_rows}
    names = _KnownNames(known, by_id)
    history = [_history_item(e, states, names) for e in retrieved if e.event_id not in recent_ids]
    # A recent event that retrieval found too is shown once, among the recent ones, but keeps its
    # score and reasons: the bundle still says how relevant it is, not only that it is recent.
    also_found = {e.event_id: e for e in retrieved if e.event_id in recent_ids}
    recent = [
        _stored_item(e, states, names, also_found.get(e.id))
        for e in sorted(recent_rows, key=lambda e: e.sequence)
    ]
    timings["supersede"] = _ms(t)

    t = time.perf_counter()
    focus_state_ids = {s.id for s in states}
    # An alias is named in the text where the question or an event in reach uses it: that is when
    # a reader needs to know "the Grey Heron" is Wren. Every alias of every entity would spend the
    # budget of history on names nothing in the bundle uses.
    used = " ".join([request.query, *(h.summary for h in history), *(h.summary for h in recent)]).casefold()
    state_views = []
    for s in states:
        shown, hidden = _rendered_relationships(s, focus_state_ids)
        aliases = [a for a in s.aliases if _uses_name(used, a)]
        state_views.append(_state_view(s, shown, present.get(s.id), aliases, lying.get(s.id)))
        if hidden:
            omitted.append(
                Omitted(section="state", id=s.id, reason=(
                    f"{hidden} of {len(s.relationships)} relationships of {s.name} not in the text "
                    "(the weakest, none with another focus entity); all are in the JSON state"
                ))
            )  # fmt: skip
    # "The Heron" may be Wren (the Grey Heron) or Heron Island: both are in focus, each marked.
    ambiguous = {m.entity_id for m in analysis.mentions if m.ambiguous}
    focus_list = [
        {"id": s.id, "name": s.name, "kind": s.kind, **({"ambiguous": True} if s.id in ambiguous else {})}
        for s in states
    ]
    render_base = {
        "query": request.query,
        "as_of": request.as_of_sequence,
        "mode": mode,
        "degraded_reason": degraded_reason,
        "source": state_source.label if state_source is not None else "none",
        "pov": pov_state.name if pov_state is not None else (pov.name if pov is not None else None),
        "focus": focus_list,
        "state": state_views,
    }
    # Keep history by score; render it in chronological order.
    # The events the question names come first and go last: after the other history and the
    # recent events ("what happened at #13?" is answered by #13 whatever else fits).
    named_items = {str(e.id) for e in named_rows}
    by_score = sorted(history, key=lambda h: (h.id not in named_items, -(h.score or 0.0), h.sequence))
    n_named = sum(h.id in named_items for h in history)

    # The budget search renders and counts the same cut more than once (the check, the search's
    # last probe, the final text, the manifest's count); each is done once per distinct cut/text.
    rendered: dict[tuple[int, int], str] = {}
    counted: dict[str, int] = {}

    def render(n_history: int, n_recent: int) -> str:
        text = rendered.get((n_history, n_recent))
        if text is None:
            chosen = sorted(by_score[:n_history], key=lambda h: h.sequence)
            kept_recent = recent[len(recent) - n_recent :] if n_recent else []
            text = templates.render(
                request.template,
                {**render_base, "history": [_event_view(h) for h in chosen],
                 "recent": [_event_view(h) for h in kept_recent]},
            )  # fmt: skip
            rendered[(n_history, n_recent)] = text
        return text

    def count(text: str) -> int:
        tokens = counted.get(text)
        if tokens is None:
            tokens = counted[text] = counter.count(text)
        return tokens

    n_history, n_recent = len(by_score), len(recent)
    text = render(n_history, n_recent)
    budget = request.max_tokens
    if count(text) > budget:
        guess = _items_within(by_score[::-1], count(text) - budget, count(text) / max(len(text), 1))
        n_history = n_named + _largest_fitting(
            lambda n: render(n_named + n, n_recent), n_history - n_named, count, budget, guess - n_named
        )
        text = render(n_history, n_recent)
    if count(text) > budget:
        guess = _items_within(recent, count(text) - budget, count(text) / max(len(text), 1))
        n_recent = _largest_fitting(lambda n: render(n_named, n), n_recent, count, budget, guess)
        text = render(n_history, n_recent)
    if count(text) > budget and n_named:
        named_last_first = by_score[:n_named][::-1]
        guess = _items_within(named_last_first, count(text) - budget, count(text) / max(len(text), 1))
        n_history = _largest_fitting(lambda n: render(n, 0), n_named, count, budget, guess)
        text = render(n_history, n_recent)
    truncated = False
    if count(text) > budget:
        text = counter.truncate(text, budget)
        # Whole lines only: a fact cut mid-way ("trust +0.") reads as a different fact. Nor a
        # header with nothing under it, nor blank lines at the end (one final newline, as always).
        lines = text.split("\n")[:-1]
        while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("#")):
            lines.pop()
        if lines:
            text = "\n".join(lines) + "\n"
        elif (line_end := text.rfind("\n")) > 0:
            text = text[: line_end + 1]
        truncated = True
    omitted += [
        Omitted(section="history", id=h.id, sequence=h.sequence, reason="token budget")
        for h in by_score[n_history:]
    ]
    omitted += [
        Omitted(section="recent", id=h.id, sequence=h.sequence, reason="token budget")
        for h in recent[: len(recent) - n_recent]
    ]
    if truncated:
        omitted.append(
            Omitted(section="state", reason="pinned state alone exceeds the budget; text truncated")
        )
    final_history = sorted(by_score[:n_history], key=lambda h: h.sequence)
    final_recent = recent[len(recent) - n_recent :] if n_recent else []
    timings["render"] = _ms(t)
    timings["total"] = _ms(started)

    return Bundle(
        mode=mode,
        degraded_reason=degraded_reason,
        state_source=state_source.label if state_source is not None else "none",
        chronicle_sequence=chronicle_sequence,
        ecs_sequence=await state_source.position() if state_source is not None else None,
        focus=focus_list,
        state=states,
        history=final_history,
        recent=final_recent,
        manifest=Manifest(
            included={"state": len(states), "history": len(final_history), "recent": len(final_recent)},
            omitted=omitted,
            truncated=truncated,
            token_counter=counter.name,
            template=templates.resolve(request.template),
            preset=request.preset.name,
            facets=list(analysis.facets),
            unresolved_focus=list(analysis.unresolved_focus),
            present={s.name: [p.name for p in present[s.id]] for s in states if s.id in present},
            lying_here={s.name: lying[s.id] for s in states if s.id in lying},
        ),
        token_count=count(text),
        max_tokens=request.max_tokens,
        text=text,
        timings_ms=timings,
    )


async def _together(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both results, computed concurrently. The first failure is raised as it is (not wrapped in a
    group: callers tell ECS failures from others by type), after the other step was cancelled."""
    tasks = asyncio.ensure_future(first), asyncio.ensure_future(second)
    try:
        a, b = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return a, b


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def _largest_fitting(
    render: Callable[[int], str], upper: int, count: Callable[[str], int], budget: int, guess: int
) -> int:
    """The largest n in [0, upper] whose rendering fits the budget (0 if none does).

    A rendering's count grows with n (each item adds lines of its own), so the answer is where
    "fits" turns into "does not fit". Each probe renders and counts a whole bundle (~3 ms), so the
    search starts at ``guess`` (an estimate, see `_items_within`) and gallops from there: with a
    good guess two probes find the edge, where a binary search over [0, upper] took three or four.
    0 itself is never probed: it is the answer when nothing larger fits.
    """

    def fits(n: int) -> bool:
        return count(render(n)) <= budget

    # `low` fits (or is 0); `high` does not fit (or is upper + 1, past the end).
    low, high = 0, upper + 1
    if upper < 1:
        return 0
    probe, step = min(max(guess, 1), upper), 1
    if fits(probe):
        low = probe
        while low + step < high:
            if not fits(low + step):
                high = low + step
                break
            low, step = low + step, step * 2
    else:
        high = probe
        while high - step > low:
            if fits(high - step):
                low = high - step
                break
            high, step = high - step, step * 2
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def _items_within(drop_order: Sequence[HistoryItem], excess_tokens: int, tokens_per_char: float) -> int:
    """An estimate of how many items can stay: drop them in ``drop_order`` until their text (their
    summary and note, plus a line's markup) is worth the excess tokens. Only the search's start."""
    kept = len(drop_order)
    remaining = float(excess_tokens)
    for item in drop_order:
        if remaining <= 0:
            break
        remaining -= tokens_per_char * (len(item.summary) + len(item.superseded_note or "") + 24)
        kept -= 1
    return kept


class UnknownPointOfView(ValueError):
    """The request's ``pov`` names no entity of the chronicle, or several."""


def _point_of_view(
    ref: str | None, known: Sequence[KnownEntity], scope: Hashable | None
) -> KnownEntity | None:
    """The entity whose knowledge bounds the history, resolved like a ``focus`` entry ("Nessa" is
    Nessa Pell). One that names nobody is an error, not an empty history: every event would be
    judged unknowable to a character that is not there."""
    if ref is None:
        return None
    found = resolve_reference(ref, known, scope=scope)
    if not found:
        raise UnknownPointOfView(f"no entity {ref!r} in this chronicle")
    # "Headmaster" may be the Headmaster or the Headmaster's Study; only one of them can know.
    knowers = [e for e in found if e.kind not in ("location", "item")]
    found = knowers if len(knowers) == 1 else found
    if len(found) > 1:
        names = ", ".join(repr(e.name) for e in sorted(found, key=lambda e: (e.name.casefold(), e.name)))
        raise UnknownPointOfView(f"{ref!r} may be {names}: name one")
    return found[0]


def _widened(preset: RetrievalPreset) -> RetrievalPreset:
    """With a point of view, fetch more candidates: some will be filtered out as unknowable."""
    return msgspec.structs.replace(
        preset, top_k=preset.top_k * 3, rerank_pool=max(preset.rerank_pool, preset.top_k * 3)
    )


def _places(known: Sequence[KnownEntity]) -> dict[str, str]:
    """Each name and alias of a known place -> the place's own name (normalized): an event at
    "the Drowned Lantern" is at the Rusty Anchor."""
    return {
        normalize_name(n): normalize_name(k.name)
        for k in known
        if k.kind == "location"
        for n in (k.name, *k.aliases)
    }


async def _knowable_sequences(
    conn: Any, request: ContextRequest, pov_keys: list[str], upto: int, places: Mapping[str, str]
) -> set[int]:
    """Events the point-of-view character took part in, or witnessed by being at the place.

    Where the character was is followed through its own events: each event it takes part in puts
    it at that event's location (and a `move` of it, to the target), until the next such event.
    While it is dead, missing or unconscious it knows nothing, until an event gives it another
    status (which it takes part in: it is found, it wakes). Places are compared by ``places``
    (any name of a place is the place).
    """
    events = await events_up_to(conn, request.tenant_id, request.chronicle_id, upto)
    keys = set(pov_keys)
    knowable: set[int] = set()
    here: str | None = None
    away = False  # dead, missing or unconscious: it takes part in nothing and sees nothing

    def place(name: str | None) -> str | None:
        return None if not name else places.get(normalize_name(name), normalize_name(name))

    for event in events:
        involved = _event_keys(event)
        status = _status_set(event, keys)
        if away and (status is None or status in MARKED_STATUSES):
            # Its body may be moved or looked at; the character knows nothing of it.
            here = place(_moved_to(event, keys)) or here
            continue
        if status is not None:
            away = status in MARKED_STATUSES  # the event that kills it or finds it, it takes part in
        if keys & involved:
            knowable.add(event.sequence)
            here = place(event.location) or here
            here = place(_moved_to(event, keys)) or here
        elif here is not None and place(event.location) == here:
            knowable.add(event.sequence)
    return knowable


def _status_set(event: StoredEvent, keys: set[str]) -> str | None:
    """The status this event gives the entity of ``keys`` (a destroy: destroyed), if any."""
    status = None
    for effect in event.effects:
        op = effect.get("op")
        if op in ("status", "destroy") and normalize_name(str(effect.get("entity", ""))) in keys:
            status = normalize_name(str(effect.get("status"))) if op == "status" else "destroyed"
    return status


def _moved_to(event: StoredEvent, keys: set[str]) -> str | None:
    moved = None
    for effect in event.effects:
        if effect.get("op") == "move" and normalize_name(str(effect.get("entity", ""))) in keys:
            moved = normalize_name(str(effect.get("to", "")))
    return moved


def _event_keys(event: StoredEvent) -> set[str]:
    keys = {normalize_name(a["name"]) for a in event.actors}
    for effect in event.effects:
        for field in ("entity", "item", "from", "to"):
            value = effect.get(field)
            if isinstance(value, str):
                keys.add(normalize_name(value))
    return keys


def _relationships_in_order(state: EntityState) -> EntityState:
    """``state`` with its relationships in one order whatever the source: its own feelings first,
    then others' toward it, each by the other's name. (ECS and a replay ordered them each its own
    way, so under a tight budget the two modes kept different ones.)"""
    ordered = sorted(
        state.relationships,
        key=lambda r: (r.direction != "outgoing", r.other.casefold(), r.other, r.other_id),
    )
    return msgspec.structs.replace(state, relationships=ordered)


def _rendered_relationships(state: EntityState, focus_ids: set[str]) -> tuple[list[RelationFact], int]:
    """The relationships of ``state`` the text shows, in their order, and how many it leaves out.

    A hub (a faction, an innkeeper) can have dozens; listed in full they took most of a
    1,500-token budget, and since state is pinned, the history that answers the question was
    cut instead. The text keeps at most ``RENDERED_RELATIONSHIPS``: those with another focus
    entity first, then the strongest (largest absolute valence), then the most recent.
    """
    relations = state.relationships
    if len(relations) <= RENDERED_RELATIONSHIPS:
        return list(relations), 0

    def priority(item: tuple[int, RelationFact]) -> tuple[bool, float, int, int]:
        index, r = item
        strength = max((abs(v) for v in r.valence.values()), default=0.0)
        return (r.other_id not in focus_ids, -strength, -(r.sequence or 0), index)

    kept = sorted(index for index, _ in sorted(enumerate(relations), key=priority)[:RENDERED_RELATIONSHIPS])
    return [relations[i] for i in kept], len(relations) - len(kept)


def _uses_name(text: str, name: str) -> bool:
    """Whether case-folded ``text`` has ``name`` as whole words."""
    return re.search(rf"(?<!\w){re.escape(' '.join(name.casefold().split()))}(?!\w)", text) is not None


def _state_view(
    state: EntityState,
    relationships: Sequence[RelationFact],
    present: list[Present] | None = None,
    aliases: Sequence[str] = (),
    lying_here: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "name": state.name,
        "kind": state.kind,
        "aliases": list(aliases),
        # "Tobias Reed (dead)": a body in the chapel is there, but not as the living are.
        "present": None if present is None else [p.name + _marked_status(p.status) for p in present],
        "lying_here": lying_here,
        "location": None if state.location is None else {"name": state.location.value,
                                                          "sequence": state.location.sequence},
        "status": None
        if state.status is None
        else {"value": state.status.value, "sequence": state.status.sequence},
        "holder": None
        if state.holder is None
        else {"value": state.holder.value, "sequence": state.holder.sequence},
        "carried_by": list(state.carried_by),
        "inventory": [{"name": i.value, "sequence": i.sequence} for i in state.inventory],
        "components": {name: fact.value for name, fact in sorted(state.components.items())},
        "relationships": [
            {"other": r.other, "direction": r.direction, "types": list(r.types), "valence": dict(r.valence),
             "sequence": r.sequence}
            for r in relationships
        ],
    }  # fmt: skip


def _event_view(item: HistoryItem) -> dict[str, Any]:
    return {
        "sequence": item.sequence,
        "occurred_at": item.occurred_at.isoformat() if item.occurred_at else None,
        "summary": item.summary,
        "superseded": item.superseded,
        "superseded_note": item.superseded_note,
    }


def _history_item(event: RetrievedEvent, states: Sequence[EntityState], known: _KnownNames) -> HistoryItem:
    superseded, note = _supersession(event, states, known)
    return HistoryItem(
        id=str(event.event_id),
        sequence=event.sequence,
        external_id=event.external_id,
        occurred_at=event.occurred_at,
        kind=event.kind,
        summary=event.summary,
        location=event.location,
        actors=[a["name"] for a in event.actors],
        score=round(event.score, 6),
        why=list(event.reasons),
        superseded=superseded,
        superseded_note=note,
    )


NAMED_EVENT_SCORE = 1.0
"""The score of an event the question names: above any fused search score, so it is the last
history a budget cuts."""


def _named(event: StoredEvent) -> RetrievedEvent:
    return RetrievedEvent(
        event_id=event.id, sequence=event.sequence, external_id=event.external_id, kind=event.kind,
        summary=event.summary, actors=event.actors, location=event.location, effects=event.effects,
        occurred_at=event.occurred_at, importance=event.importance, score=NAMED_EVENT_SCORE,
        rrf_score=0.0, recency_bonus=0.0, mmr_score=0.0, ranks={}, source_scores={},
        reasons=["named in the question"], collapsed_ids=[],
    )  # fmt: skip


def _stored_item(
    event: StoredEvent,
    states: Sequence[EntityState],
    known: _KnownNames,
    found: RetrievedEvent | None = None,
) -> HistoryItem:
    superseded, note = _supersession(event, states, known)
    return HistoryItem(
        id=str(event.id),
        sequence=event.sequence,
        external_id=event.external_id,
        occurred_at=event.occurred_at,
        kind=event.kind,
        summary=event.summary,
        location=event.location,
        actors=[a["name"] for a in event.actors],
        score=None if found is None else round(found.score, 6),
        why=["recent"] if found is None else ["recent", *found.reasons],
        superseded=superseded,
        superseded_note=note,
    )


def _supersession(
    event: RetrievedEvent | StoredEvent, states: Sequence[EntityState], known: _KnownNames
) -> tuple[bool, str | None]:
    """Whether this event asserts a place, holder, status or feeling of a focus entity that is no
    longer so. ``known``: the names of the entities a question may name (the other end's aliases)."""
    sequence, location, actors, effects = event.sequence, event.location, event.actors, event.effects
    notes: list[str] = []
    for state in states:
        names = {normalize_name(n) for n in (state.name, *state.aliases)}
        claimed_place: str | None = None
        claimed_holder: str | None = None
        claimed_status: str | None = None
        moved = False
        involved = any(normalize_name(a["name"]) in names for a in actors)
        for effect in effects:
            op = effect.get("op")
            target = normalize_name(str(effect.get("entity") or effect.get("item") or ""))
            if target not in names:
                continue
            involved = True
            if op == "move":
                claimed_place, moved = str(effect.get("to")), True
            elif op == "transfer":
                claimed_holder = str(effect.get("to"))
            elif op == "status":
                claimed_status = str(effect.get("status"))
            elif op in ("set", "spawn"):
                values = effect.get("components") or {}
                if op == "set":
                    values = {str(effect.get("component", "")).lower(): effect.get("value")}
                holder = values.get("holder")
                if isinstance(holder, dict):
                    holder = holder.get("holder")
                if isinstance(holder, str):
                    claimed_holder = holder
        # An event that involves the entity and happens somewhere puts it there (the actors by
        # presence, a transferred item with its new holder), unless an effect moved it elsewhere.
        if not moved and location and involved:
            claimed_place = location
        now_place = state.location
        if (
            claimed_place is not None
            and now_place is not None
            and (now_place.sequence or 0) > sequence
            # "Memorial Hall" is the Old Gymnasium by another name, not another place.
            and normalize_name(claimed_place) not in known.of(state.location_id, str(now_place.value))
        ):
            notes.append(f"earlier: {state.name} at {claimed_place}; now: {state.name} at {now_place.value}"
                         + _status_suffix(state))  # fmt: skip
        now_holder = state.holder
        if claimed_holder is not None and (
            (now_holder is None and state.location is not None and (state.location.sequence or 0) > sequence)
            or (
                now_holder is not None
                and (now_holder.sequence or 0) > sequence
                and normalize_name(claimed_holder) not in known.of(None, str(now_holder.value))
            )
        ):
            now = f"held by {now_holder.value}" if now_holder is not None else "not held by anyone"
            notes.append(f"earlier: {state.name} held by {claimed_holder}; now: {state.name} {now}")
        now_status = state.status
        if (
            claimed_status is not None
            and now_status is not None
            and (now_status.sequence or 0) > sequence
            and str(now_status.value) != claimed_status
        ):
            notes.append(f"earlier: {state.name} {claimed_status}; now: {state.name} {now_status.value}")
        notes += _superseded_feelings(sequence, effects, state, names, known)
    # A relation between two focus entities is seen from both ends: its note is said once.
    return (True, "; ".join(dict.fromkeys(notes))) if notes else (False, None)


def _superseded_feelings(
    sequence: int,
    effects: Sequence[dict[str, Any]],
    state: EntityState,
    names: set[str],
    known: _KnownNames,
) -> list[str]:
    """Notes on what this event says of a focus entity's feelings and relations that later events
    changed: a valence set to a value since changed, a change of valence the feeling has since
    turned against (trust that rose and is now negative), a relation since removed or restored.
    A change the feeling still agrees with (trust rose, and is higher still) is history, not stale."""
    notes: list[str] = []
    for effect in effects:
        op = effect.get("op")
        if op not in ("valence", "relate", "unrelate"):
            continue
        source, target = str(effect.get("from") or ""), str(effect.get("to") or "")
        if normalize_name(source) in names or source == state.id:
            direction, other_ref = "outgoing", target
        elif normalize_name(target) in names or target == state.id:
            direction, other_ref = "incoming", source
        else:
            continue
        relation = next(
            (
                r
                for r in state.relationships
                if r.direction == direction and known.names(other_ref, r.other_id, r.other)
            ),
            None,
        )
        other = relation.other if relation is not None else other_ref
        holder, toward = (state.name, other) if direction == "outgoing" else (other, state.name)
        if op == "valence":
            dimension = str(effect.get("dimension"))
            cited = None if relation is None else relation.valence_sources.get(dimension)
            if relation is None or cited is None or cited.sequence <= sequence:
                continue
            now = relation.valence.get(dimension, 0.0)
            if effect.get("value") is not None:
                earlier = float(effect["value"])
                if round(earlier, 9) != round(now, 9):
                    notes.append(f"earlier: {holder} {dimension} toward {toward} {earlier:+.2f}; "
                                 f"now: {holder} {dimension} toward {toward} {now:+.2f}")  # fmt: skip
            elif (delta := float(effect.get("delta") or 0.0)) and (now <= 0 if delta > 0 else now >= 0):
                # A change, not a value: "-0.20" here once read as the feeling it left behind.
                moved = "rose" if delta > 0 else "fell"
                notes.append(f"earlier: {holder} {dimension} toward {toward} {moved} by {abs(delta):.2f}; "
                             f"now: {holder} {dimension} toward {toward} {now:+.2f}")  # fmt: skip
        else:
            kind = str(effect.get("type"))
            holds_now = relation is not None and kind in relation.types
            changed_since = relation is None or (relation.sequence or 0) > sequence
            if op == "relate" and not holds_now and changed_since:
                notes.append(f"earlier: {holder} {kind} {toward}; now: no longer")
            elif op == "unrelate" and holds_now and changed_since:
                notes.append(f"earlier: {holder} no longer {kind} {toward}; now: {holder} {kind} {toward}")
    return notes


class _KnownNames:
    """Every name of an entity the question could name, by its id or, where the state source keys
    entities otherwise (a replay names them by name), by its name."""

    def __init__(self, known: Sequence[KnownEntity], by_id: Mapping[str, KnownEntity]) -> None:
        self._known, self._by_id = known, by_id
        self._by_name: dict[str, KnownEntity] | None = None

    def of(self, entity_id: str | None, name: str) -> set[str]:
        """The names of the entity, by its id, else (no id, or the state source's own) its name."""
        entity = None if entity_id is None else self._by_id.get(entity_id)
        if entity is None:
            if self._by_name is None:  # built on first need: most events change no feeling
                self._by_name = {normalize_name(k.name): k for k in reversed(self._known)}
            entity = self._by_name.get(normalize_name(name))
        aliases = entity.aliases if entity is not None else ()
        return {normalize_name(n) for n in (name, *aliases)}

    def names(self, reference: str, entity_id: str, name: str) -> bool:
        """Whether an effect's reference (a name, an alias or an id) is this entity."""
        return reference == entity_id or normalize_name(reference) in self.of(entity_id, name)


_FIRST_PERSON: Final = re.compile(r"\bI\b|\b(?i:me|my|mine|myself)\b")
"""Words by which a question asked as the point of view speaks of the pov itself."""

MARKED_STATUSES: Final = frozenset({"dead", "destroyed", "missing", "unconscious"})
"""Statuses the text states beside a name (an entity is taken as able to act otherwise)."""


def lying_at(place: EntityState, items: Sequence[EntityState]) -> list[str]:
    """The items among ``items`` (states from ``StateSource.items_at``) left at ``place``: held by
    no one, by the place, or by an item itself left there ("Drive (in Black Case)"); not those
    that someone there carries, nor destroyed ones. Sorted by name."""
    place_names = {normalize_name(n) for n in (place.name, *place.aliases)}
    present = [i for i in items if i.status is None or str(i.status.value) != "destroyed"]
    by_name = {normalize_name(n): item for item in present for n in (item.name, *item.aliases)}
    container: dict[str, str | None] = {
        item.id: None
        for item in present
        if item.holder is None or normalize_name(str(item.holder.value)) in place_names
    }
    # An item in a box left there is left there too, however deep (each pass adds a level).
    for _ in range(len(present)):
        inside = {
            item.id: holder.name
            for item in present
            if item.id not in container
            and item.holder is not None
            and (holder := by_name.get(normalize_name(str(item.holder.value)))) is not None
            and holder.id in container
        }
        if not inside:
            break
        container |= inside
    named = [(item.name, container[item.id]) for item in present if item.id in container]
    return [
        name if holder is None else f"{name} (in {holder})"
        for name, holder in sorted(named, key=lambda n: (n[0].casefold(), n[0]))
    ]


def _marked_status(status: str | None) -> str:
    return f" ({status})" if status is not None and status in MARKED_STATUSES else ""


def _status_suffix(state: EntityState) -> str:
    return _marked_status(None if state.status is None else str(state.status.value))
