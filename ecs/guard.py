"""Choosing where a request's state comes from: ECS when it is healthy, else a chronicle replay.

ECS is unhealthy when its circuit breaker is open, when a read fails or is slow (which also feeds
the breaker), when the operator turned ECS enrichment off, or when it is too stale for the
chronicle asked about (projection lag over a bound, or a parked chronicle). Every ECS read of one
request draws on one time budget, so a request never waits on ECS for longer than the breaker
timeout in total before it falls back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, TypeVar

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from ecs.breaker import BreakerOpen, CircuitBreaker, SlowCall
from ecs.repository import Checkpoint
from ecs.state_source import EcsStateSource
from rag.context import EntityState, Present
from rag.outages import is_unavailable_error
from rag.query_analysis import KnownEntity
from rag.store import recorded_at_of

__all__ = [
    "EcsUnhealthy",
    "GuardedEcsSource",
    "Staleness",
    "StalenessPolicy",
    "check_staleness",
    "is_ecs_failure",
]

T = TypeVar("T")


class EcsUnhealthy(Exception):
    """ECS cannot serve this request; `reason` says why (it becomes the bundle's degraded_reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StalenessPolicy(msgspec.Struct, frozen=True, kw_only=True):
    max_lag_events: int = 1_000
    max_lag_seconds: float = 30.0
    on_stale: Literal["degrade", "warn"] = "degrade"


class Staleness(msgspec.Struct, frozen=True, kw_only=True):
    checkpoint_sequence: int
    lag_events: int
    lag_seconds: float
    parked: bool
    reason: str | None
    """Why ECS is too stale for this chronicle, or None."""


def is_ecs_failure(error: BaseException) -> bool:
    return isinstance(error, BreakerOpen | SlowCall | EcsUnhealthy) or is_unavailable_error(error)


class GuardedEcsSource:
    """An `EcsStateSource` whose every read goes through the breaker within one shared budget."""

    label = "ecs"

    def __init__(self, inner: EcsStateSource, breaker: CircuitBreaker, budget_seconds: float) -> None:
        self.inner = inner
        self.breaker = breaker
        # Only the time spent waiting on ECS reads is charged to the request's budget. (It used to be
        # a wall-clock deadline from here, which also charged the work between the reads - embedding
        # the query, retrieval, rendering - to ECS: under CPU load a healthy ECS was then blamed,
        # fed the breaker "slow" failures, and finished bundles were thrown away for a fallback.)
        self._remaining = budget_seconds

    async def guard(self, operation: Callable[[], Awaitable[T]]) -> T:
        if self._remaining <= 0:
            self.breaker.record_failure("slow: request's ECS time budget used up")
            raise SlowCall("the request's ECS time budget is used up")
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await self.breaker.call(operation, timeout=self._remaining)
        finally:
            self._remaining -= loop.time() - started

    async def known_entities(self) -> Sequence[KnownEntity]:
        return await self.guard(self.inner.known_entities)

    async def entity_states(self, entity_ids: Sequence[str], as_of_sequence: int | None) -> list[EntityState]:
        if as_of_sequence is not None and as_of_sequence < (await self.position() or 0):
            # The past is replayed from the chronicle, not read from ECS: not an ECS call, so it
            # neither spends the ECS budget nor feeds the breaker.
            return await self.inner.replayed(entity_ids, as_of_sequence)
        return await self.guard(lambda: self.inner.entity_states(entity_ids, as_of_sequence))

    async def position(self) -> int | None:
        return await self.guard(self.inner.position)

    async def present_at(self, location_id: str, as_of_sequence: int | None, limit: int) -> list[Present]:
        if as_of_sequence is not None and as_of_sequence < (await self.position() or 0):
            return await self.inner.present_at(location_id, as_of_sequence, limit)  # replayed, as above
        return await self.guard(lambda: self.inner.present_at(location_id, as_of_sequence, limit))

    async def items_at(self, location_id: str, as_of_sequence: int | None, limit: int) -> list[EntityState]:
        if as_of_sequence is not None and as_of_sequence < (await self.position() or 0):
            return await self.inner.items_at(location_id, as_of_sequence, limit)  # replayed, as above
        return await self.guard(lambda: self.inner.items_at(location_id, as_of_sequence, limit))


async def check_staleness(
    source: GuardedEcsSource,
    chronicle_engine: AsyncEngine,
    chronicle_id: uuid.UUID,
    chronicle_sequence: int,
    policy: StalenessPolicy,
    *,
    catch_up: Callable[[], Awaitable[None]] | None = None,
) -> Staleness:
    """How far ECS is behind this chronicle; reading the checkpoint is itself a guarded ECS read.

    With `catch_up`, a lag within the policy's bounds is first worked off (read-your-writes): a
    client that just appended events and asks at once must not get the state from before them.
    `catch_up` returns when the projection is done or its time is up; a lag left after it is
    reported as the reason to fall back, since the chronicle replay is always current.
    """

    def facts(checkpoint: Checkpoint | None) -> tuple[int, bool, bool]:
        if checkpoint is None:
            return 0, False, False
        return checkpoint.last_sequence, checkpoint.parked_at is not None, checkpoint.attempts > 0

    # The source's own (once per request) read: its position and known names use the same one.
    position, parked, failing = facts(await source.guard(source.inner.checkpoint))
    caught_up = False
    # A chronicle whose projection is failing is in backoff: catching it up here would retry the
    # failing event on every request and park it within a few requests instead of after backoff.
    lagging = 0 < chronicle_sequence - position <= policy.max_lag_events
    if catch_up is not None and lagging and not parked and not failing:
        await catch_up()
        source.inner.forget_checkpoint()
        position, parked, failing = facts(await source.guard(source.inner.checkpoint))
        caught_up = True
    lag_events = max(0, chronicle_sequence - position)
    lag_seconds = 0.0
    if lag_events:
        async with chronicle_engine.connect() as conn:
            oldest = await recorded_at_of(conn, chronicle_id, position + 1)
        if oldest is not None:
            lag_seconds = max(0.0, (dt.datetime.now(dt.UTC) - oldest).total_seconds())
    reason = None
    if parked:
        reason = "ECS projection of this chronicle is parked"
    elif lag_events > policy.max_lag_events:
        reason = f"ECS is {lag_events} events behind (bound {policy.max_lag_events})"
    elif lag_seconds > policy.max_lag_seconds:
        reason = f"ECS is {lag_seconds:.0f} s behind (bound {policy.max_lag_seconds:.0f} s)"
    elif lag_events and failing:
        reason = f"ECS is {lag_events} events behind: projecting this chronicle is failing (retrying)"
    elif lag_events and caught_up:
        reason = f"ECS is {lag_events} events behind and did not catch up in time"
    return Staleness(
        checkpoint_sequence=position, lag_events=lag_events, lag_seconds=round(lag_seconds, 3), parked=parked,
        reason=reason,
    )  # fmt: skip
