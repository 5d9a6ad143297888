"""The circuit breaker's state machine, with an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from ecs.breaker import BreakerConfig, BreakerOpen, CircuitBreaker, SlowCall


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CONFIG = BreakerConfig(timeout_seconds=0.05, window_size=10, minimum_calls=4, failure_rate_threshold=0.5,
                       open_wait_seconds=1.0, max_open_wait_seconds=4.0, half_open_probes=2)  # fmt: skip


async def ok() -> str:
    return "ok"


async def boom() -> str:
    raise ConnectionError("ECS down")


async def hang() -> str:
    await asyncio.sleep(10)
    return "late"


async def fail_times(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises((ConnectionError, BreakerOpen)):
            await breaker.call(boom)


async def test_stays_closed_below_minimum_calls_and_below_threshold() -> None:
    breaker = CircuitBreaker("ecs", CONFIG, clock=Clock())
    await fail_times(breaker, 3)
    assert breaker.state == "closed"  # 3 failures, but fewer than minimum_calls
    for _ in range(4):
        assert await breaker.call(ok) == "ok"
    await fail_times(breaker, 1)  # 4 failures of 8 calls = 0.5 -> opens
    assert breaker.state == "open"


async def test_successes_keep_it_closed() -> None:
    breaker = CircuitBreaker("ecs", CONFIG, clock=Clock())
    for _ in range(6):
        await breaker.call(ok)
    await fail_times(breaker, 2)
    assert breaker.state == "closed"
    assert breaker.failure_rate == pytest.approx(2 / 8)


async def test_open_rejects_fast_then_half_open_probes_close_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker("ecs", CONFIG, clock=clock)
    await fail_times(breaker, 4)
    assert breaker.state == "open"
    calls = 0

    async def counted() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    with pytest.raises(BreakerOpen):
        await breaker.call(counted)
    assert calls == 0 and breaker.rejected == 1
    clock.now += 1.0
    assert breaker.state == "half_open"
    await breaker.call(counted)
    assert breaker.state == "half_open"
    await breaker.call(counted)
    assert breaker.state == "closed"
    assert calls == 2
    assert breaker.transitions == {"closed->open": 1, "open->half_open": 1, "half_open->closed": 1}


async def test_half_open_allows_only_a_few_probes() -> None:
    clock = Clock()
    breaker = CircuitBreaker("ecs", CONFIG, clock=clock)
    await fail_times(breaker, 4)
    clock.now += 1.0
    assert breaker.allow() and breaker.allow()
    assert not breaker.allow()  # the third concurrent probe is refused


async def test_open_wait_grows_on_repeated_failures_and_resets_on_close() -> None:
    clock = Clock()
    breaker = CircuitBreaker("ecs", CONFIG, clock=clock)
    await fail_times(breaker, 4)
    waits = []
    for _ in range(4):
        waits.append(breaker.snapshot().open_until - clock.now)
        clock.now += waits[-1]
        assert breaker.state == "half_open"
        await fail_times(breaker, 1)  # the probe fails: open again, longer
        assert breaker.state == "open"
    waits.append(breaker.snapshot().open_until - clock.now)
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]  # doubles, capped at max_open_wait
    clock.now += 4.0
    await breaker.call(ok)
    await breaker.call(ok)
    assert breaker.state == "closed"
    await fail_times(breaker, 4)
    assert breaker.snapshot().open_until - clock.now == 1.0


async def test_slow_calls_are_abandoned_at_the_timeout_and_count_as_failures() -> None:
    breaker = CircuitBreaker("ecs", CONFIG, clock=Clock())
    loop = asyncio.get_running_loop()
    for _ in range(4):
        started = loop.time()
        with pytest.raises(SlowCall):
            await breaker.call(hang)
        assert loop.time() - started < 0.05 + 0.05
    assert breaker.state == "open"
    assert "slow call" in (breaker.last_error or "")


async def test_a_shorter_deadline_than_the_timeout_is_honoured() -> None:
    breaker = CircuitBreaker("ecs", CONFIG, clock=Clock())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(SlowCall):
        await breaker.call(hang, timeout=0.01)
    assert loop.time() - started < 0.04
