"""How a context request runs its independent steps together, and fails or falls back cleanly."""

from __future__ import annotations

import asyncio

import pytest

from app.routes.context import _memoized
from ecs.breaker import SlowCall
from rag.context import _together


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

    memo = _memoized(embed)
    first = asyncio.ensure_future(memo(["Where is Bram?"]))
    await asyncio.sleep(0)
    first.cancel()  # the full attempt gave up (its ECS read failed) while the question was embedded
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    assert await memo(["Where is Bram?"]) == [[1.0, 0.0]]  # the fallback
    assert calls == [["Where is Bram?"]]
