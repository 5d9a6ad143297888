"""Fault injection on real processes while a client keeps asking for context and sending events.

The service (`lore serve`, a subprocess) keeps its chronicle in one embedded PostgreSQL, its ECS
state in a SECOND embedded PostgreSQL, and uses an embedded Valkey; this module starts all three in
their own temporary directories (loopback only). While `Load` sends a context request every 100 ms
(cycling "Where is Bram/Elara/Oswin/Tamsin now?"), a one-event ingest every 200 ms and polls /ready
every 200 ms for the breaker state, each test breaks one dependency for 5 s and restores it:

(a) the ECS PostgreSQL stopped (`pg_ctl stop -m fast`), then started again;
(b) the ECS PostgreSQL frozen with SIGSTOP (postmaster and every backend), so calls hang; SIGCONT;
(c) Valkey stopped, then started again (not an ECS failure: the entity cache is bypassed).

Checked throughout: no 5xx (nor client error or timeout) on any context request, and every answer
has the right place for its question. For (a) and (b): the breaker opens within 2 s of the fault and
closes within 15 s of recovery; while it is open every answer is `chronicle_only` with a reason; no
request waits on the broken ECS longer than the ECS timeout plus 100 ms (see `wait_bound`). For (c):
every answer stays `full`. At the end: every ingest was acknowledged and is stored exactly once, ECS
caught up, and its state equals a full replay of the chronicle (admin verify).

The rate is 10 context requests a second (lexical retrieval, see `Load`), at most 6 in flight: on
the 2-core machine this runs on, more would measure queueing in front of the service instead of the
faults. The breaker keeps its default configuration (window 20, >= 50 % failures, so at this rate
about 10 failed requests, ~1 s, open it). The machine is shared: the timing bounds (open within 2 s,
close within 15 s, the wait bound, full answers while ECS is fine) are asserted only for phases in
which other processes used at most 0.75 of a core (`CpuMeter`); otherwise, after the functional
checks passed, the test is reported as skipped with the measured contention. Every phase's numbers
are printed at the end of the module ("fault test report").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import pytest

from app.cli import load_sample_story
from tests.e2e.faults_support import (
    ECS_TIMEOUT_MS,
    EXPECTED_LOCATION,
    ContextSample,
    FaultStack,
    Load,
    Recorder,
    percentile,
)

pytestmark = pytest.mark.timeout(600)

FAULT_SECONDS = 5.0
OPEN_WITHIN = 2.0
CLOSE_WITHIN = 15.0
ECS_TIMEOUT = ECS_TIMEOUT_MS / 1000
MARGIN = 0.1
"""The issue's "ECS timeout plus 100 ms"."""
CONTENDED_CORES = 0.75
"""Timing bounds are asserted only for phases in which other processes used at most this many of
the machine's 2 cores (see `CpuMeter`); the functional checks are asserted always."""


@dataclass
class World:
    stack: FaultStack
    key: str
    admin_key: str
    chronicle: str
    recorder: Recorder = field(default_factory=Recorder)
    report: dict[str, Any] = field(default_factory=dict)
    overhead: float | None = None
    """p95 of `outside_assembly` in the healthy phase: HTTP, auth, chronicle lookup, ECS checkpoint."""

    def headers(self, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key if admin else self.key}"}

    def wait_bound(self) -> float:
        """The longest a request may spend outside assembling its answer: the ECS timeout plus
        100 ms plus the overhead every request has anyway, measured in the healthy phase.

        The ECS wait cannot be measured directly from outside (the bundle's `timings_ms` cover only
        the assembly of the bundle served, not the ECS attempt before a fallback), so it is taken
        as client latency minus assembly time; that difference also holds the per-request HTTP,
        auth and lookup overhead (tens of ms here), which is why the healthy baseline is added
        (its p95, at most 100 ms).
        """
        overhead = 0.1 if self.overhead is None else min(self.overhead, 0.1)  # None: run alone
        return ECS_TIMEOUT + MARGIN + overhead


def wait_until_projected(world: World, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    for _ in range(int(timeout / 0.25) + 1):
        if time.monotonic() >= deadline:
            break
        response = httpx.get(
            f"{world.stack.base_url}/api/chronicles/{world.chronicle}/ecs",
            headers=world.headers(),
            timeout=10,
        )
        if response.status_code == 200:
            status = response.json()
            if status["lag_events"] == 0 and not status["parked"]:
                return status
        time.sleep(0.25)
    raise AssertionError(f"ECS still behind after {timeout}s: {status}\n{world.stack.log_tail()}")


def warm_up(world: World, needed: int = 8, attempts: int = 60) -> None:
    """The first requests load models and fill caches and may be slow enough to trip the breaker:
    send some, one at a time, until `needed` full answers came back in a row."""
    streak = 0
    for n in range(attempts):
        response = httpx.post(
            f"{world.stack.base_url}/api/chronicles/{world.chronicle}/context",
            json={"query": f"Where is {list(EXPECTED_LOCATION)[n % 4]} now?", "format": "json"},
            headers=world.headers(), timeout=30,
        )  # fmt: skip
        assert response.status_code == 200, response.text
        streak = streak + 1 if response.json()["mode"] == "full" else 0
        if streak >= needed:
            break
        time.sleep(0.1 if streak else 1.0)
    ready = httpx.get(f"{world.stack.base_url}/ready", timeout=10).json()
    assert streak >= needed, (streak, ready)
    assert ready["checks"]["ecs"]["breaker"] == "closed", ready


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    stack = FaultStack()
    try:
        stack.start_servers()
        key = stack.create_tenant("fault-writer")
        admin_key = stack.create_tenant("fault-ops", admin=True)
        stack.start_service()
        stack.wait_ready()
        headers = {"Authorization": f"Bearer {key}"}
        created = httpx.post(
            f"{stack.base_url}/api/chronicles", json={"title": "The Salt Road under faults"}, headers=headers,
            timeout=30,
        )  # fmt: skip
        assert created.status_code == 201, created.text
        chronicle = created.json()["id"]
        events = [msgspec.to_builtins(e) for e in load_sample_story()]
        ingested = httpx.post(
            f"{stack.base_url}/api/chronicles/{chronicle}/events", json={"events": events}, headers=headers,
            timeout=120,
        )  # fmt: skip
        assert ingested.status_code == 200, ingested.text
        world = World(stack, key, admin_key, chronicle)
        wait_until_projected(world, 60)
        warm_up(world)
        yield world
        print("\nfault test report:\n" + json.dumps(world.report, indent=1))
    finally:
        stack.close()


# -- checks ----------------------------------------------------------------------------------------


def assert_answers(samples: list[ContextSample], what: str) -> None:
    """No 5xx, no client error or timeout, and the right place for every "where is X" question."""
    assert samples, f"{what}: no context requests were sent"
    failed = [s for s in samples if s.status != 200]
    assert not failed, f"{what}: {len(failed)} of {len(samples)} context requests failed, e.g. {failed[:3]}"
    wrong = [s for s in samples if s.location != EXPECTED_LOCATION[s.subject]]
    assert not wrong, f"{what}: wrong location in {len(wrong)} of {len(samples)} answers, e.g. {wrong[:3]}"


def assert_waits_bounded(world: World, samples: list[ContextSample], what: str) -> None:
    bound = world.wait_bound()
    slow = [s for s in samples if s.outside_assembly > bound]
    assert not slow, (
        f"{what}: {len(slow)} requests waited more than {bound * 1000:.0f} ms outside assembling their "
        f"answer, e.g. {[(round(s.latency * 1000), s.server_total_ms, s.degraded_reason) for s in slow[:5]]}"
    )


def summary(samples: list[ContextSample]) -> dict[str, Any]:
    latencies = [s.latency * 1000 for s in samples]
    outside = [s.outside_assembly * 1000 for s in samples]
    return {
        "requests": len(samples),
        "chronicle_only": sum(s.mode == "chronicle_only" for s in samples),
        "latency_p50_ms": round(percentile(latencies, 0.5), 1),
        "latency_max_ms": round(max(latencies, default=0.0), 1),
        "outside_assembly_max_ms": round(max(outside, default=0.0), 1),
        "reasons": sorted({(s.degraded_reason or "").split(" (")[0][:40] for s in samples} - {""}),
    }


async def run_fault(
    world: World, name: str, inject: Callable[[], object], restore: Callable[[], object]
) -> dict[str, Any]:
    """1 s before, the fault for 5 s, restore, wait for the breaker to close (<= 15 s), 2 s after."""
    recorder = world.recorder
    result: dict[str, Any] = {}
    async with Load(world.stack, world.key, world.chronicle, recorder) as load:
        try:
            load.phase = f"{name}:before"
            await asyncio.sleep(1.0)
            load.phase = f"{name}:fault"
            fault_at = time.monotonic()
            await asyncio.to_thread(inject)
            result["inject_s"] = round(time.monotonic() - fault_at, 3)
            await asyncio.sleep(FAULT_SECONDS)
            load.phase = f"{name}:recovering"
            restore_at = time.monotonic()
            await asyncio.to_thread(restore)
            recovered_at = time.monotonic()
            result["restore_s"] = round(recovered_at - restore_at, 3)
            closed_at = await load.wait_breaker("closed", recovered_at, CLOSE_WITHIN)
            load.phase = f"{name}:after"
            await asyncio.sleep(2.0)
            result["foreign_cores"] = round(load.meter.foreign_cores(), 2)
        finally:
            await asyncio.to_thread(world.stack.ensure_servers_up)
    opened_at = recorder.first_breaker("open", fault_at)
    result["breaker_open_after_fault_s"] = None if opened_at is None else round(opened_at - fault_at, 3)
    result["breaker_closed_after_recovery_s"] = (
        None if closed_at is None else round(closed_at - recovered_at, 3)
    )
    result["skipped_sends"] = dict(load.skipped)
    cpu = [r.service_cpu for r in recorder.breaker if r.at >= fault_at - 1 and r.service_cpu is not None]
    result["service_cpu_max_percent"] = round(max(cpu, default=0.0))
    for phase in ("before", "fault", "recovering", "after"):
        result[phase] = summary(recorder.contexts_in(f"{name}:{phase}"))
    result["_times"] = {
        "fault": fault_at,
        "opened": opened_at,
        "restore": restore_at,
        "recovered": recovered_at,
    }
    world.report[name] = {k: v for k, v in result.items() if not k.startswith("_")}
    return result


def timing_applies(world: World, name: str, foreign: float) -> bool:
    """Whether this phase's timing bounds are asserted: not when other processes took more than
    `CONTENDED_CORES` of the machine meanwhile (recorded in the report, and the test is then marked
    skipped after its functional checks passed, so that this is visible)."""
    applies = foreign <= CONTENDED_CORES
    world.report[name]["timing_asserted"] = applies
    return applies


def skip_timing(name: str, foreign: float) -> None:
    pytest.skip(
        f"{name}: functional checks passed; timing bounds not asserted: other processes used "
        f"{foreign:.2f} of the 2 cores meanwhile (limit {CONTENDED_CORES})"
    )


def check_ecs_fault(world: World, name: str, result: dict[str, Any]) -> None:
    times = result["_times"]
    phases = [f"{name}:{p}" for p in ("before", "fault", "recovering", "after")]
    samples = world.recorder.contexts_in(*phases)
    # Functional, whatever the machine's load.
    assert_answers(samples, name)
    assert times["opened"] is not None, f"{name}: the breaker never opened: {result}"
    # While open (from the first reading that saw it open until the dependency came back), every
    # answer is chronicle-only and says why; its `state` was checked above.
    while_open = [s for s in samples if times["opened"] <= s.sent and s.done <= times["restore"]]
    assert while_open, result
    full = [s for s in while_open if s.mode != "chronicle_only" or not s.degraded_reason]
    assert not full, f"{name}: {len(full)} answers while open were not flagged chronicle-only: {full[:3]}"

    if not timing_applies(world, name, result["foreign_cores"]):
        skip_timing(name, result["foreign_cores"])
    opened = result["breaker_open_after_fault_s"]
    assert opened <= OPEN_WITHIN, f"{name}: the breaker opened {opened}s after the fault: {result}"
    closed = result["breaker_closed_after_recovery_s"]
    assert closed is not None, f"{name}: the breaker did not close within {CLOSE_WITHIN}s: {result}"
    after = world.recorder.contexts_in(f"{name}:after")
    assert sum(s.mode == "full" for s in after) * 2 >= len(after), f"{name}: ECS not back in use: {result}"
    assert_waits_bounded(world, samples, name)


# -- tests (in order: they share the servers and the recorder) -------------------------------------


async def test_healthy_baseline(world: World) -> None:
    recorder = world.recorder
    async with Load(world.stack, world.key, world.chronicle, recorder) as load:
        load.phase = "healthy"
        await asyncio.sleep(3.0)
        foreign = round(load.meter.foreign_cores(), 2)
    samples = recorder.contexts_in("healthy")
    world.overhead = percentile([s.outside_assembly for s in samples], 0.95)
    world.report["healthy"] = summary(samples) | {
        "overhead_p95_ms": round(world.overhead * 1000, 1),
        "wait_bound_ms": round(world.wait_bound() * 1000, 1),
        "foreign_cores": foreign,
    }
    assert_answers(samples, "healthy")
    if not timing_applies(world, "healthy", foreign):
        skip_timing("healthy", foreign)
    degraded = [s.degraded_reason for s in samples if s.mode != "full"]
    assert not degraded, f"healthy: {len(degraded)} of {len(samples)} answers degraded: {degraded[:5]}"


async def test_ecs_postgres_stopped(world: World) -> None:
    ecs = world.stack.ecs_pg
    result = await run_fault(world, "a_ecs_stopped", ecs.stop, ecs.start)
    check_ecs_fault(world, "a_ecs_stopped", result)


async def test_ecs_postgres_frozen(world: World) -> None:
    stack = world.stack
    result = await run_fault(world, "b_ecs_frozen", stack.freeze_ecs, stack.thaw_ecs)
    check_ecs_fault(world, "b_ecs_frozen", result)


async def test_valkey_stopped(world: World) -> None:
    valkey = world.stack.valkey
    result = await run_fault(world, "c_valkey_stopped", valkey.stop, valkey.start)
    phases = [f"c_valkey_stopped:{p}" for p in ("before", "fault", "recovering", "after")]
    samples = world.recorder.contexts_in(*phases)
    assert_answers(samples, "Valkey stopped")
    if not timing_applies(world, "c_valkey_stopped", result["foreign_cores"]):
        skip_timing("c_valkey_stopped", result["foreign_cores"])
    # Redis down is not an ECS failure: the cache is bypassed, ECS still answers in full (and in
    # time: a slow answer would fall back for being slow, which is why this is a timing check).
    degraded = [s.degraded_reason for s in samples if s.mode != "full"]
    assert not degraded, f"Valkey stopped: {len(degraded)} answers degraded: {degraded[:5]}; {result}"
    assert result["breaker_open_after_fault_s"] is None, result
    assert_waits_bounded(world, samples, "Valkey stopped")


def test_no_event_lost_and_ecs_equals_a_replay(world: World) -> None:
    base, recorder = world.stack.base_url, world.recorder
    sent = [e.external_id for e in recorder.events]
    unacknowledged = [e for e in recorder.events if e.status != 200]
    # The chronicle database never failed: ECS and Valkey outages must not cost a single ingest.
    assert not unacknowledged, unacknowledged[:5]
    assert sent or not world.report, "the load sent no events"

    status = wait_until_projected(world, 90)
    verify = httpx.post(
        f"{base}/api/admin/chronicles/{world.chronicle}/ecs/verify",
        headers=world.headers(admin=True),
        timeout=60,
    )
    assert verify.status_code == 200, verify.text
    verdict = verify.json()
    assert verdict["ok"], verdict
    assert verdict["checkpoint_hash_matches"], verdict
    assert verdict["checkpoint_sequence"] == status["chronicle_sequence"] == 40 + len(sent), (verdict, status)

    counts: dict[str, int] = {}
    cursor = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": 500} | ({"cursor": cursor} if cursor else {})
        page = httpx.get(
            f"{base}/api/chronicles/{world.chronicle}/events",
            params=params,
            headers=world.headers(),
            timeout=30,
        )
        assert page.status_code == 200, page.text
        for event in page.json()["items"]:
            counts[event["external_id"]] = counts.get(event["external_id"], 0) + 1
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    not_once = {x: counts.get(x, 0) for x in recorder.acknowledged if counts.get(x) != 1}
    assert not not_once, f"acknowledged events not stored exactly once: {list(not_once.items())[:10]}"
    assert sum(counts.values()) == 40 + len(sent), len(counts)
    world.report["events"] = {
        "sent": len(sent),
        "acknowledged": len(recorder.acknowledged),
        "stored": len(counts),
    }
    world.report["verify"] = {k: verdict[k] for k in ("ok", "checkpoint_sequence", "checkpoint_hash_matches")}

    # And ECS is in use again: full answers, right places (a few tries: one answer may still fall
    # back if the machine is busy, which is not what this checks).
    for name, where in EXPECTED_LOCATION.items():
        bundle: dict[str, Any] = {}
        for _ in range(20):
            bundle = httpx.post(
                f"{base}/api/chronicles/{world.chronicle}/context",
                json={"query": f"Where is {name} now?"},
                headers=world.headers(),
                timeout=30,
            ).json()
            assert next(s for s in bundle["state"] if s["name"] == name)["location"]["value"] == where
            if bundle["mode"] == "full":
                break
            time.sleep(0.5)
        assert bundle["mode"] == "full", bundle["degraded_reason"]
