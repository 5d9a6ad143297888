"""How a context request runs its independent steps together, and fails or falls back cleanly."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.routes.context import _QueryEmbeddings
from ecs.breaker import SlowCall
from rag.context import (
    EntityState,
    Fact,
    UnknownPointOfView,
    _largest_fitting,
    _point_of_view,
    _together,
    _uses_name,
    lying_at,
)
from rag.query_analysis import KnownEntity


async def test_both_results_come_back_in_order() -> None:
    async def late(value: str) -> str:
        await asyncio.sleep(0.01)
        return value

    assert await _together(late("state"), asyncio.sleep(0, result="search")) == ("state", "search")


async def test_the_first_failure_is_raised_as_it_is_and_the_other_step_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def failing_state() -> None:
        await asyncio.sleep(0.01)
        raise SlowCall("ECS too slow")  # the route tells ECS failures by their type

    async def long_search() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(SlowCall):
        await asyncio.wait_for(_together(failing_state(), long_search()), 5)
    assert cancelled.is_set()


async def test_a_fallback_reuses_an_embedding_its_cancelled_first_attempt_started() -> None:
    calls: list[list[str]] = []
    release = asyncio.Event()

    async def embed(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        await release.wait()
        return [[1.0, 0.0]]

    memo = _QueryEmbeddings(embed)
    first = asyncio.ensure_future(memo(["Where is Bram?"]))
    await asyncio.sleep(0)
    first.cancel()  # the full attempt gave up (its ECS read failed) while the question was embedded
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    assert await memo(["Where is Bram?"]) == [[1.0, 0.0]]  # the fallback
    assert calls == [["Where is Bram?"]]


async def test_an_embedding_started_ahead_is_the_one_the_search_gets() -> None:
    calls: list[list[str]] = []

    async def embed(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        await asyncio.sleep(0.01)
        return [[0.0, 1.0]]

    memo = _QueryEmbeddings(embed)
    memo.start(["Who holds the key?"])
    memo.start(["Who holds the key?"])
    assert await memo(["Who holds the key?"]) == [[0.0, 1.0]]
    assert calls == [["Who holds the key?"]]


def _binary_search(counts: list[int], budget: int) -> int:
    """The search the budget fit used before: the reference answer."""
    low, high = 0, len(counts) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if counts[middle] <= budget:
            low = middle
        else:
            high = middle - 1
    return low


@settings(max_examples=500, deadline=None)
@given(
    steps=st.lists(st.integers(1, 80), min_size=0, max_size=40),
    base=st.integers(0, 500),
    budget=st.integers(0, 2_000),
    guess=st.integers(-3, 45),
)
def test_the_budget_search_finds_what_a_binary_search_finds_from_any_guess(
    steps: list[int], base: int, budget: int, guess: int
) -> None:
    # A rendering with n items counts base + the first n steps (each item adds tokens).
    counts = [base + sum(steps[:n]) for n in range(len(steps) + 1)]
    probed: list[int] = []

    def render(n: int) -> str:
        probed.append(n)
        return str(n)

    found = _largest_fitting(render, len(steps), lambda text: counts[int(text)], budget, guess)
    assert found == _binary_search(counts, budget)
    assert 0 not in probed  # 0 is the answer when nothing larger fits; it is never rendered
    if 1 <= guess == found < len(steps):
        assert len(probed) == 2  # a right guess: itself, and one more that does not fit


def test_a_hubs_relationships_in_the_text_keep_the_focus_pair_and_the_strongest() -> None:
    from rag.context import RENDERED_RELATIONSHIPS, EntityState, RelationFact, _rendered_relationships

    def relation(n: int, trust: float, other_id: str | None = None) -> RelationFact:
        return RelationFact(
            other_id=other_id or f"c-{n}", other=f"Other {n}", direction="outgoing",
            types=["knows"], valence={"trust": trust}, sequence=n,
        )  # fmt: skip

    few = EntityState(id="f-wolf", name="the Quiet Wolf", kind="faction",
                      relationships=[relation(n, 0.1) for n in range(RENDERED_RELATIONSHIPS)])  # fmt: skip
    assert _rendered_relationships(few, set()) == (list(few.relationships), 0)

    # Thirty relationships: the one with the other focus entity is weak but kept; then the
    # strongest by absolute valence (a strong distrust counts); ties by the most recent.
    relations = [relation(n, 0.05) for n in range(30)]
    relations[3] = relation(3, 0.01, other_id="c-belanion")
    for n in (7, 11, 20):
        relations[n] = relation(n, 0.9)
    relations[25] = relation(25, -0.95)
    hub = EntityState(id="f-wolf", name="the Quiet Wolf", kind="faction", relationships=relations)
    shown, hidden = _rendered_relationships(hub, {"f-wolf", "c-belanion"})
    assert hidden == 30 - RENDERED_RELATIONSHIPS and len(shown) == RENDERED_RELATIONSHIPS
    kept = [r.sequence for r in shown]
    assert kept == sorted(kept)  # in their own order
    assert {3, 7, 11, 20, 25} <= set(kept)
    # The rest of the places go to the most recent of the equally weak ones.
    assert set(kept) - {3, 7, 11, 20, 25} == {29, 28, 27, 26, 24, 23, 22}


def test_an_alias_counts_as_used_as_whole_words_in_any_case() -> None:
    used = "what did the grey heron do? the greyheron of old"
    assert _uses_name(used, "Grey  Heron")
    assert not _uses_name(used, "Heron of")
    assert not _uses_name("the greyheron", "Grey Heron")
    assert _uses_name("ask r2-d2.", "R2-D2")


def test_a_point_of_view_is_one_who_can_know() -> None:
    head = KnownEntity(id="1", name="the Headmaster", kind="character")
    study = KnownEntity(id="2", name="Headmaster's Study", kind="location")
    annas = [KnownEntity(id="3", name="Anna Weiss"), KnownEntity(id="4", name="Anna Brook")]
    # A word shared with a place: the one who can know is meant.
    assert _point_of_view("Headmaster", [head, study, *annas], None) == head
    # Two who can know: the client has to name one.
    with pytest.raises(UnknownPointOfView, match="'Anna' may be 'Anna Brook', 'Anna Weiss'"):
        _point_of_view("Anna", [head, study, *annas], None)
    with pytest.raises(UnknownPointOfView, match="no entity 'Zed'"):
        _point_of_view("Zed", [head, study, *annas], None)


# --------------------------------------------------------------------------------------------------
# What lies at a place
# --------------------------------------------------------------------------------------------------


def _thing(
    name: str, holder: str | None = None, status: str | None = None, kind: str = "item"
) -> EntityState:
    return EntityState(
        id=f"id-{name}",
        name=name,
        kind=kind,
        holder=None if holder is None else Fact(value=holder, sequence=1),
        status=None if status is None else Fact(value=status, sequence=1),
    )


def test_lying_at_keeps_what_no_one_there_carries_however_deep_it_is_packed() -> None:
    hall = EntityState(id="id-hall", name="Old Gymnasium", kind="location", aliases=["Memorial Hall"])
    items = [
        _thing("Trunk"),  # moved there: no holder
        _thing("Box", holder="trunk"),  # names are matched as names, whatever their case
        _thing("Ring", holder="Box"),
        _thing("Map", holder="Memorial Hall"),  # handed to the place, by its alias
        _thing("Torch", holder="Nell"),  # Nell is there and carries it
        _thing("Pouch", holder="Nell"),
        _thing("Coin", holder="Pouch"),  # in something Nell carries
        _thing("Note", status="destroyed"),
        _thing("Shard", holder="Note"),  # was in the note: a destroyed thing holds nothing here
    ]
    assert lying_at(hall, items) == ["Box (in Trunk)", "Map", "Ring (in Box)", "Trunk"]
    assert lying_at(hall, []) == []
