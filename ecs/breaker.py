"""A small asyncio circuit breaker for the ECS reads of context and query requests.

No maintained library fits asyncio with these semantics (slow calls abandoned at a timeout and
counted as failures, a count-based sliding window with a minimum number of calls, an open wait
that grows on repeated failures, a limited number of half-open probes), so this is ~150 lines of
our own, tested on its own with an injected clock.

closed     every call goes through; outcomes (success, failure, slow) enter a sliding window of
           the last `window_size` calls; once it holds `minimum_calls`, a failure rate (slow calls
           count as failures) at or above `failure_rate_threshold` opens the breaker.
open       calls fail fast with `BreakerOpen` for `open_wait`; that wait doubles each time the
           breaker re-opens without having closed in between, up to `max_open_wait`.
half_open  up to `half_open_probes` calls go through; if they all succeed the breaker closes (and
           the wait resets), the first failure re-opens it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import msgspec

__all__ = ["BreakerConfig", "BreakerOpen", "BreakerSnapshot", "CircuitBreaker", "SlowCall"]

T = TypeVar("T")
State = Literal["closed", "open", "half_open"]


class BreakerOpen(Exception):
    """The breaker is open: the guarded dependency is not called at all."""


class SlowCall(TimeoutError):
    """A call exceeded the breaker's timeout and was abandoned."""


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True):
    timeout_seconds: float = 0.25
    window_size: int = 20
    minimum_calls: int = 5
    failure_rate_threshold: float = 0.5
    open_wait_seconds: float = 1.0
    max_open_wait_seconds: float = 30.0
    half_open_probes: int = 3


class BreakerSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    state: State
    failure_rate: float
    calls_in_window: int
    open_until: float | None
    open_wait_seconds: float
    transitions: dict[str, int]
    last_error: str | None
    last_error_at: float | None
    rejected: int


class CircuitBreaker:
    def __init__(
        self, name: str, config: BreakerConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self._clock = clock
        self._state: State = "closed"
        self._window: deque[bool] = deque(maxlen=self.config.window_size)  # True = failure
        self._open_until = 0.0
        self._open_wait = self.config.open_wait_seconds
        self._probes_started = 0
        self._probes_succeeded = 0
        self.transitions: dict[str, int] = {}
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.rejected = 0
        self.on_transition: Callable[[State, State], None] | None = None
        self._abandoned: set[asyncio.Future[Any]] = set()

    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() >= self._open_until:
            self._move("half_open")
        return self._state

    def allow(self) -> bool:
        """Whether a call may go through now (reserves a probe slot when half-open)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and self._probes_started < self.config.half_open_probes:
            self._probes_started += 1
            return True
        self.rejected += 1
        return False

    async def call(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - enforcing a timeout is the breaker's job
    ) -> T:
        """Run `operation` through the breaker; a call past the timeout is abandoned as slow."""
        if not self.allow():
            raise BreakerOpen(f"{self.name} circuit is open")
        limit = self.config.timeout_seconds if timeout is None else min(timeout, self.config.timeout_seconds)
        # Abandoned, not awaited: `asyncio.wait_for` cancels a slow call and then waits until it has
        # finished cancelling, and SQLAlchemy's cleanup of a cancelled asyncpg connection waits up
        # to 2 s for a graceful close; on a hung (SIGSTOPped) ECS PostgreSQL every request thus
        # waited ~2.25 s instead of the timeout. The call runs as its own task; at the timeout it
        # is cancelled and left to clean up in the background while the caller goes on at once.
        task = asyncio.ensure_future(operation())
        try:
            done, _ = await asyncio.wait({task}, timeout=max(limit, 0.0))
        except BaseException:  # the caller itself was cancelled: the call goes down with it
            task.cancel()
            self._abandon(task)
            raise
        if not done:
            task.cancel()
            self._abandon(task)
            self.record_failure(f"slow call: over {limit * 1000:.0f} ms")
            raise SlowCall(f"{self.name} call exceeded {limit * 1000:.0f} ms")
        try:
            result = task.result()
        except Exception as error:
            self.record_failure(f"{type(error).__name__}: {error}")
            raise
        self.record_success()
        return result

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        """Keep a cancelled call referenced until its cleanup ends, and consume its outcome."""
        self._abandoned.add(task)

        def forget(done: asyncio.Future[Any]) -> None:
            self._abandoned.discard(done)
            if not done.cancelled():
                done.exception()

        task.add_done_callback(forget)

    def record_success(self) -> None:
        if self._state == "half_open":
            self._probes_succeeded += 1
            if self._probes_succeeded >= self.config.half_open_probes:
                self._open_wait = self.config.open_wait_seconds
                self._move("closed")
            return
        self._window.append(False)

    def record_failure(self, reason: str) -> None:
        self.last_error, self.last_error_at = reason[:500], time.time()
        if self._state == "half_open":
            self._open_wait = min(self._open_wait * 2, self.config.max_open_wait_seconds)
            self._open()
            return
        if self._state == "open":
            return
        self._window.append(True)
        if (
            len(self._window) >= self.config.minimum_calls
            and self.failure_rate >= self.config.failure_rate_threshold
        ):
            self._open()

    @property
    def failure_rate(self) -> float:
        return sum(self._window) / len(self._window) if self._window else 0.0

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        return BreakerSnapshot(
            name=self.name,
            state=state,
            failure_rate=round(self.failure_rate, 3),
            calls_in_window=len(self._window),
            open_until=self._open_until if state == "open" else None,
            open_wait_seconds=self._open_wait,
            transitions=dict(self.transitions),
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            rejected=self.rejected,
        )

    def _open(self) -> None:
        self._open_until = self._clock() + self._open_wait
        self._move("open")

    def _move(self, new: State) -> None:
        old, self._state = self._state, new
        if new != "open":
            self._window.clear()
        self._probes_started = self._probes_succeeded = 0
        key = f"{old}->{new}"
        self.transitions[key] = self.transitions.get(key, 0) + 1
        if self.on_transition is not None:
            self.on_transition(old, new)
