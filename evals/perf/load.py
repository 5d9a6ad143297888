"""Sustained mixed load with faults on the embedded default, over loopback HTTP (`make load`).

    .venv/bin/python -m evals.perf.load [--minutes 10] [--concurrency 8] [--out PATH]

1. A fresh temporary LORE_DATA_DIR; `lore tenant create load` (and an admin tenant); then
   `lore serve` with LORE_RUN_PROJECTOR=false (HTTP only; it starts the embedded PostgreSQL and
   Valkey) and a separate `lore worker` (ECS projector + outbox relay) on the same data directory,
   so that the projector can be restarted on its own. Everything listens on 127.0.0.1 only. The
   per-key rate limit is switched off (LORE_RATE_LIMIT_PER_MINUTE=0): this measures the service,
   not the limiter.
2. One chronicle seeded through the API with the first --seed-events events (default 2,000) of a
   generated world (evals.generator), in batches; then the projection is awaited and the
   chronicle's entity ids are listed once.
3. For --minutes, --concurrency closed-loop clients (httpx, asyncio) each pick per request:
   70 % context (POST /api/chronicles/{id}/context, a question about a seeded character),
   20 % ingest (POST /api/chronicles/{id}/events with the next 1-5 events of the same world, each
   with a unique external_id; a failed ingest is retried with the same body, which is idempotent by
   external_id, until acknowledged or INGEST_RETRY_S pass), 10 % entity reads (70 % GET
   /api/entities/{id} of a listed entity, 30 % a page of GET /api/chronicles/{id}/entities).
   Every failed attempt counts as an error of its route, by status (or transport error).
4. Faults: at 1/3 of the run the worker gets SIGTERM and a new one is started (its shutdown time,
   the gap until projection and relay resume, the time until the lag is back to its level before);
   at 2/3 Valkey is stopped (EmbeddedValkey.stop), left down VALKEY_DOWN_S, and started again on
   the same port (time until the relay publishes again, client errors in the window).
5. Every SAMPLE_S: RSS of the service, the current worker and Valkey, projection lag, pending outbox
   rows, and the CPU share used by other work on the machine. A least-squares line gives each
   process's RSS trend in MB per minute (a leak shows as a steady slope), over the second half of
   the run and over the stretch after the last fault; the no-leak check uses the latter when it
   covers a quarter of the run (a fault leaves a one-off step that a line across it reads as a
   slope), else the former.
6. Then, bounded by --drain-timeout: wait for projection lag 0 and no pending outbox row, and verify
   - every acknowledged external_id is stored exactly once (SQL on chronicle_events), sequences
     are gap-free, and nothing unexpected was stored;
   - POST /api/admin/chronicles/{id}/ecs/verify: the stored ECS state equals a replay (ok);
   - every outbox row of the chronicle is sent, none dead-lettered, and each one's outbox_id is in
     the Valkey stream `lore:ecs:{chronicle}` (read with XRANGE; delivery is at least once, so
     duplicates are counted and reported, not failed).

Writes evals/perf/results/load.json (per-route throughput and p50/p95/p99, errors by route and
status, a 10-second timeline, RSS samples and trends, fault timings, verification results) and
prints a summary. Exits 1 when a verification or the RSS-trend check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import psutil
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import create_engine
from app.embedded import EmbeddedPostgres, EmbeddedValkey
from app.settings import to_asyncpg_url
from evals.generator import generate_world
from evals.perf.bench_ingest import free_port, lore_command, machine_info, service_env
from rag.events import EventIn

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "evals" / "perf" / "results" / "load.json"

WORLD_SEED = 4_242
MIX = (("context", 0.70), ("ingest", 0.20), ("entities", 0.10))
ENTITY_GET_SHARE = 0.7  # of entity reads; the rest list a page of the chronicle's entities
INGEST_MIN, INGEST_MAX = 1, 5
SEED_BATCH = 200
SAMPLE_S = 5.0
BUCKET_S = 10.0
VALKEY_DOWN_S = 10.0
REQUEST_TIMEOUT_S = 30.0
INGEST_RETRY_S = 120.0
READY_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 60.0
FAULT_WATCH_S = 180.0
FAULT_TAIL_S = 10.0  # a fault's client window runs from its start to this long after recovery
STREAM_PREFIX = "lore:ecs:"  # ecs.relay.DEFAULT_STREAM_PREFIX
PROBLEM_WORDS = (
    "WARNING",
    "ERROR",
    "CRITICAL",
    "FATAL",
    "PANIC",
    "Traceback",
    " # ",
)  # " # ": Valkey warnings
QUESTIONS = (
    "Where is {a} now?", "What happened to {a}?", "Who does {a} trust?", "What is {a} carrying?",
    "What did {a} and {b} do together?", "What does {a} think of {b}?",
)  # fmt: skip

_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[load {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def percentiles(samples_ms: Sequence[float]) -> dict[str, float] | None:
    if not samples_ms:
        return None
    ordered = sorted(samples_ms)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99),
            "mean": round(statistics.fmean(ordered), 1), "max": round(ordered[-1], 1)}  # fmt: skip


def linear_trend(points: Sequence[tuple[float, float]]) -> dict[str, Any] | None:
    """Least-squares slope of (seconds, MB) points, in MB per minute, with r²."""
    if len(points) < 3:
        return None
    xs = np.array([p[0] for p in points]) / 60.0
    ys = np.array([p[1] for p in points])
    if float(np.ptp(xs)) == 0.0:
        return None
    slope, intercept = np.polyfit(xs, ys, 1)
    fitted = slope * xs + intercept
    total = float(np.sum((ys - ys.mean()) ** 2))
    r2 = 1.0 - float(np.sum((ys - fitted) ** 2)) / total if total > 0 else 0.0
    return {"slope_mb_per_min": round(float(slope), 3), "r2": round(r2, 3), "samples": len(points),
            "from_s": round(points[0][0], 1), "to_s": round(points[-1][0], 1),
            "first_mb": round(points[0][1], 1), "last_mb": round(points[-1][1], 1),
            "min_mb": round(float(ys.min()), 1), "max_mb": round(float(ys.max()), 1)}  # fmt: skip


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return round(float(psutil.Process(pid).memory_info().rss) / 2**20, 1)
    except psutil.Error:
        return None


def git_commit() -> str | None:
    """HEAD's commit read from the .git files (no git process)."""
    with contextlib.suppress(OSError, ValueError):
        git = REPO / ".git"
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return None


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


class Stack:
    """`lore serve` (HTTP only) plus a restartable `lore worker`, on one temporary data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = service_env(root) | {
            "LORE_HOST": "127.0.0.1",
            "LORE_RATE_LIMIT_PER_MINUTE": "0",
        }
        self.serve: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.workers_started = 0
        self.postgres = EmbeddedPostgres(root)
        self.valkey = EmbeddedValkey(root)

    def create_tenant(self, name: str, admin: bool = False) -> str:
        result = subprocess.run(
            [*lore_command(), "tenant", "create", name, *(["--admin"] if admin else [])],
            env=self.env, cwd=self.root, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        key = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        if result.returncode != 0 or not key:
            raise RuntimeError(f"lore tenant create {name} failed:\n{result.stderr[-3000:]}")
        return key

    def _spawn(self, args: list[str], log_name: str, extra: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.root / log_name).open("ab") as log:
            return subprocess.Popen([*lore_command(), *args], env=self.env | extra, cwd=self.root,
                                    stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def start_serve(self) -> None:
        self.serve = self._spawn(["serve", "--port", str(self.port)], "serve.log",
                                 {"LORE_RUN_PROJECTOR": "false"})  # fmt: skip

    def start_worker(self) -> subprocess.Popen[bytes]:
        self.workers_started += 1
        self.worker = self._spawn(["worker"], f"worker-{self.workers_started}.log", {})
        return self.worker

    def server_pids(self) -> set[int]:
        pids: set[int] = set()
        for pid in (self.postgres.pid(), self.valkey.pid()):
            if pid is None:
                continue
            pids.add(pid)
            with contextlib.suppress(psutil.Error):
                pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        return pids

    def log_summary(self) -> dict[str, Any]:
        """Per log file: lines, and the warnings/errors among them (count and the last few)."""
        summary = {}
        for path in [*sorted(self.root.glob("*.log")), self.root / "valkey" / "valkey.log"]:
            if not path.is_file():
                continue
            lines = path.read_text(errors="replace").splitlines()
            problems = [line for line in lines if any(word in line for word in PROBLEM_WORDS)]
            summary[path.stem] = {"lines": len(lines), "warnings_or_errors": len(problems),
                                  "last_warnings_or_errors": [line[:300] for line in problems[-5:]]}  # fmt: skip
        return summary

    def stop(self) -> None:
        for name, process in (("worker", self.worker), ("serve", self.serve)):
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                progress(f"{name} did not stop within {STOP_TIMEOUT_S:.0f} s; killing it")
                process.kill()
                process.wait(10)
        for server in (self.postgres, self.valkey):
            try:
                server.stop()
            except Exception as error:  # cleanup must not hide the run's own error
                progress(f"stopping embedded {server.name} failed: {error!r}")


class CpuTracker:
    """CPU used by other work on the machine: busy time minus that of our processes, per interval."""

    def __init__(self, own_pids: Any) -> None:
        self._own_pids = own_pids
        self._seen: dict[int, tuple[float, float]] = {}  # pid -> (first, last) cumulative cpu seconds
        self._last_machine = self._machine()
        self._last_own = 0.0
        self._last_wall = time.monotonic()
        self._start_machine, self._start_wall = self._last_machine, self._last_wall

    @staticmethod
    def _machine() -> float:
        t = psutil.cpu_times()
        return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))

    def _own_total(self) -> float:
        for pid in self._own_pids():
            with contextlib.suppress(psutil.Error):
                cpu = psutil.Process(pid).cpu_times()
                now = cpu.user + cpu.system
                first = self._seen.get(pid, (now, now))[0]
                self._seen[pid] = (first, now)
        return sum(last - first for first, last in self._seen.values())

    def sample(self) -> dict[str, float]:
        """Shares of all cores since the previous sample, in percent."""
        machine, own, wall = self._machine(), self._own_total(), time.monotonic()
        capacity = max(1e-9, (wall - self._last_wall) * (psutil.cpu_count() or 1))
        result = {
            "background_cpu_pct": round(max(0.0, (machine - self._last_machine) - (own - self._last_own))
                                        / capacity * 100, 1),
            "own_cpu_pct": round((own - self._last_own) / capacity * 100, 1),
        }  # fmt: skip
        self._last_machine, self._last_own, self._last_wall = machine, own, wall
        return result

    def overall(self) -> dict[str, float]:
        machine, own, wall = self._machine(), self._own_total(), time.monotonic()
        capacity = max(1e-9, (wall - self._start_wall) * (psutil.cpu_count() or 1))
        return {"background_cpu_pct": round(max(0.0, machine - self._start_machine - own) / capacity * 100, 1),
                "own_cpu_pct": round(own / capacity * 100, 1)}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


class Recorder:
    """Latencies, errors and a timeline of every request made during the load phase."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.end: float | None = None
        self.ok_ms: dict[str, list[float]] = defaultdict(list)
        self.failed_ms: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[tuple[str, str]] = Counter()
        self.error_log: list[tuple[float, str, str]] = []
        self.ok_log: list[tuple[float, str, float]] = []
        self.buckets: dict[int, dict[str, Any]] = {}
        self.modes: Counter[str] = Counter()
        self.degraded_reasons: Counter[str] = Counter()

    def now(self) -> float:
        return time.monotonic() - self.start

    def record(self, route: str, ms: float, outcome: str | None) -> None:
        """`outcome` None: success; otherwise the status code or error class."""
        t = self.now()
        bucket = self.buckets.setdefault(int(t // BUCKET_S), {"ok": Counter(), "errors": Counter(), "ms": []})
        if outcome is None:
            self.ok_ms[route].append(ms)
            self.ok_log.append((t, route, ms))
            bucket["ok"][route] += 1
            bucket["ms"].append(ms)
        else:
            self.failed_ms[route].append(ms)
            self.errors[(route, outcome)] += 1
            self.error_log.append((t, route, outcome))
            bucket["errors"][route] += 1

    def window(self, start: float, end: float) -> dict[str, Any]:
        """What clients saw between `start` and `end` (seconds into the load): per route, successful
        requests and their latency, and errors by status."""
        ok: dict[str, list[float]] = defaultdict(list)
        for t, route, ms in self.ok_log:
            if start <= t <= end:
                ok[route].append(ms)
        errors: Counter[str] = Counter()
        for t, route, outcome in self.error_log:
            if start <= t <= end:
                errors[f"{route} {outcome}"] += 1
        return {
            "from_s": round(start, 1), "to_s": round(end, 1), "errors": dict(errors),
            "ok": {route: {"requests": len(v), "latency_ms": percentiles(v)} for route, v in sorted(ok.items())},
        }  # fmt: skip

    def report(self) -> dict[str, Any]:
        duration = (self.end or time.monotonic()) - self.start
        routes: dict[str, Any] = {}
        for route in sorted(set(self.ok_ms) | set(self.failed_ms)):
            ok, failed = self.ok_ms[route], self.failed_ms[route]
            routes[route] = {
                "requests": len(ok) + len(failed),
                "ok": len(ok),
                "errors": len(failed),
                "ok_per_s": round(len(ok) / duration, 2),
                "latency_ms": percentiles(ok),
                "failed_latency_ms": percentiles(failed),
            }
        all_ok = [ms for samples in self.ok_ms.values() for ms in samples]
        total_requests = sum(r["requests"] for r in routes.values())
        by_status: dict[str, dict[str, int]] = defaultdict(dict)
        for (route, outcome), count in sorted(self.errors.items()):
            by_status[route][outcome] = count
        timeline = []
        for index in sorted(self.buckets):
            bucket = self.buckets[index]
            width = min(BUCKET_S, duration - index * BUCKET_S)
            if width <= 0:
                continue
            timeline.append({
                "t_s": round(index * BUCKET_S), "ok_per_s": round(sum(bucket["ok"].values()) / width, 1),
                "errors": sum(bucket["errors"].values()), "p95_ms": (percentiles(bucket["ms"]) or {}).get("p95"),
                "ok_by_route": dict(bucket["ok"]),
            })  # fmt: skip
        return {
            "duration_s": round(duration, 1),
            "requests": total_requests,
            "ok": len(all_ok),
            "errors": sum(self.errors.values()),
            "ok_per_s": round(len(all_ok) / duration, 2),
            "requests_per_s": round(total_requests / duration, 2),
            "latency_ms_all_routes": percentiles(all_ok),
            "routes": routes,
            "mix_observed": {r: round(v["requests"] / max(1, total_requests), 3) for r, v in routes.items()},
            "errors_by_route_and_status": by_status,
            "first_errors": [
                {"t_s": round(t, 1), "route": r, "outcome": o} for t, r, o in self.error_log[:50]
            ],
            "context_modes": dict(self.modes),
            "context_degraded_reasons": dict(self.degraded_reasons.most_common(10)),
            "timeline_10s": timeline,
        }


class Probe:
    """Direct SQL on the embedded PostgreSQL: lag, outbox state, and the final verification."""

    def __init__(self, engine: AsyncEngine, chronicle: uuid.UUID) -> None:
        self.engine = engine
        self.chronicle = chronicle

    async def lag(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT c.last_sequence, coalesce(k.last_sequence, 0) FROM chronicles c "
                "LEFT JOIN ecs_checkpoints k ON k.chronicle_id = c.id WHERE c.id = :c"
            ), {"c": self.chronicle})).one()  # fmt: skip
        return {"chronicle_sequence": int(row[0]), "checkpoint_sequence": int(row[1]),
                "lag_events": max(0, int(row[0]) - int(row[1]))}  # fmt: skip

    async def outbox(self) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT count(*), count(*) FILTER (WHERE sent_at IS NULL AND dead_lettered_at IS NULL), "
                "count(*) FILTER (WHERE dead_lettered_at IS NOT NULL), extract(epoch FROM max(sent_at)) "
                "FROM ecs_outbox WHERE chronicle_id = :c"
            ), {"c": self.chronicle})).one()  # fmt: skip
        return {"rows": int(row[0]), "pending": int(row[1]), "dead_lettered": int(row[2]),
                "last_sent_epoch": float(row[3]) if row[3] is not None else None}  # fmt: skip

    async def outbox_ids(self) -> list[int]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text("SELECT id FROM ecs_outbox WHERE chronicle_id = :c ORDER BY id"), {"c": self.chronicle}
            )
            return [int(r[0]) for r in result]

    async def stored_external_ids(self) -> tuple[Counter[str], dict[str, int]]:
        async with self.engine.connect() as conn:
            counts: Counter[str] = Counter()
            result = await conn.execute(text(
                "SELECT external_id, count(*) FROM chronicle_events WHERE chronicle_id = :c GROUP BY external_id"
            ), {"c": self.chronicle})  # fmt: skip
            for external_id, n in result:
                counts[external_id if external_id is not None else "<null>"] += int(n)
            row = (await conn.execute(text(
                "SELECT count(*), coalesce(min(sequence), 0), coalesce(max(sequence), 0), "
                "count(DISTINCT sequence), (SELECT last_sequence FROM chronicles WHERE id = :c) "
                "FROM chronicle_events WHERE chronicle_id = :c"
            ), {"c": self.chronicle})).one()  # fmt: skip
        return counts, {"events": int(row[0]), "min_sequence": int(row[1]), "max_sequence": int(row[2]),
                        "distinct_sequences": int(row[3]), "chronicle_last_sequence": int(row[4])}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


class LoadRun:
    def __init__(self, args: argparse.Namespace, stack: Stack, key: str, admin_key: str) -> None:
        self.args = args
        self.stack = stack
        self.key = key
        self.admin_key = admin_key
        self.duration = args.minutes * 60.0
        self.recorder = Recorder()
        self.acked: Counter[str] = Counter()  # external_id -> acknowledgements (2+ only through retries)
        self.ack_duplicates = 0  # events acknowledged as `duplicate: true` (a retry after a lost answer)
        self.attempted: set[str] = set()
        self.unacknowledged: set[str] = set()  # gave up after INGEST_RETRY_S
        self.ingest_retries = 0
        self.ingest_wall_ms: list[float] = []  # first attempt to acknowledgement, retries included
        self.samples: list[dict[str, Any]] = []
        self.faults: dict[str, Any] = {}
        self.pool: list[EventIn] = []
        self.pool_next = 0
        self.pool_round = 0
        self.names: list[str] = []
        self.entity_ids: list[str] = []
        self.entity_kinds: list[str] = []
        self.chronicle = ""
        self.probe: Probe | None = None
        self.cpu: CpuTracker | None = None
        self.load_started: float | None = None

    # -- helpers --------------------------------------------------------------------------------

    def client(self, key: str | None = None, timeout: float = REQUEST_TIMEOUT_S) -> httpx.AsyncClient:
        limits = httpx.Limits(
            max_connections=self.args.concurrency + 4, max_keepalive_connections=self.args.concurrency + 4
        )
        return httpx.AsyncClient(base_url=self.stack.base_url, timeout=timeout, limits=limits,
                                 headers={"Authorization": f"Bearer {key or self.key}"})  # fmt: skip

    def t(self) -> float:
        assert self.load_started is not None
        return round(time.monotonic() - self.load_started, 1)

    def next_events(self, count: int) -> list[EventIn]:
        """The next events of the generated world; after the pool, it again with new external ids."""
        batch = []
        for _ in range(count):
            if self.pool_next >= len(self.pool):
                self.pool_next = 0
                self.pool_round += 1
                progress(f"event pool used up; continuing with round {self.pool_round} (new external ids)")
            event = self.pool[self.pool_next]
            self.pool_next += 1
            if self.pool_round:
                event = msgspec.structs.replace(event, external_id=f"{event.external_id}-r{self.pool_round}")
            batch.append(event)
        return batch

    async def ingest(self, client: httpx.AsyncClient, events: list[EventIn], route: str | None) -> bool:
        """POST until acknowledged (same body: idempotent by external_id) or INGEST_RETRY_S pass."""
        ids = [e.external_id for e in events if e.external_id is not None]
        self.attempted.update(ids)
        body = msgspec.json.encode({"events": events})
        first = time.monotonic()
        attempt = 0
        while True:
            started = time.perf_counter()
            outcome: str | None
            try:
                response = await client.post(f"/api/chronicles/{self.chronicle}/events", content=body,
                                             headers={"Content-Type": "application/json"})  # fmt: skip
                outcome = None if response.status_code == 200 else str(response.status_code)
            except httpx.HTTPError as error:
                response, outcome = None, type(error).__name__
            if route is not None:
                self.recorder.record(route, (time.perf_counter() - started) * 1000, outcome)
            if outcome is None and response is not None:
                for result in response.json()["events"]:
                    self.acked[result["external_id"]] += 1
                    self.ack_duplicates += bool(result["duplicate"])
                self.ingest_wall_ms.append((time.monotonic() - first) * 1000)
                return True
            retryable = (
                response is None or response.status_code in (408, 425, 429) or response.status_code >= 500
            )
            if not retryable or time.monotonic() - first > INGEST_RETRY_S:
                self.unacknowledged.update(ids)
                if route is None:
                    detail = response.text[:500] if response is not None else outcome
                    raise RuntimeError(f"seed ingest failed: {outcome}: {detail}")
                return False
            self.ingest_retries += 1
            attempt += 1
            await asyncio.sleep(min(5.0, 0.25 * 2 ** (attempt - 1)))

    async def timed(self, route: str, request: Any) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response: httpx.Response = await request
        except httpx.HTTPError as error:
            self.recorder.record(route, (time.perf_counter() - started) * 1000, type(error).__name__)
            return None
        ms = (time.perf_counter() - started) * 1000
        self.recorder.record(route, ms, None if response.status_code == 200 else str(response.status_code))
        return response

    # -- phases ---------------------------------------------------------------------------------

    async def wait_ready(self) -> float:
        started = time.monotonic()
        assert self.stack.serve is not None
        async with self.client(timeout=5) as client:
            while time.monotonic() - started < READY_TIMEOUT_S:
                if self.stack.serve.poll() is not None:
                    raise RuntimeError(f"lore serve exited ({self.stack.serve.returncode}):\n"
                                       f"{tail(self.stack.root / 'serve.log')}")  # fmt: skip
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/ready")).status_code == 200:
                        return time.monotonic() - started
                await asyncio.sleep(0.5)
        raise RuntimeError(
            f"service not ready within {READY_TIMEOUT_S:.0f} s:\n{tail(self.stack.root / 'serve.log')}"
        )

    async def seed(self) -> dict[str, Any]:
        n = self.args.seed_events
        # Enough events for the whole run at a generous rate; more are replayed with new ids.
        pool_size = max(1_000, int(self.duration * 40))
        world = generate_world(n + pool_size, seed=WORLD_SEED, queries_per_kind=0)
        self.pool = world.events[n:]
        self.names = [c for c in world.characters if world.introduced.get(c, n) < n] or list(world.characters)
        async with self.client(timeout=300) as client:
            response = await client.post(
                "/api/chronicles", json={"title": "load test", "description": "evals.perf.load"}
            )
            response.raise_for_status()
            self.chronicle = response.json()["id"]
            started = time.monotonic()
            for start in range(0, n, SEED_BATCH):
                await self.ingest(client, world.events[start : start + SEED_BATCH], route=None)
            seeded_s = time.monotonic() - started
            progress(f"seeded {n} events in {seeded_s:.1f} s; waiting for the projection")
            started = time.monotonic()
            while True:
                status = (await client.get(f"/api/chronicles/{self.chronicle}/ecs")).json()
                if status["checkpoint_sequence"] >= n and status["lag_events"] == 0:
                    break
                if time.monotonic() - started > self.args.drain_timeout:
                    raise RuntimeError(f"seed projection did not catch up within {self.args.drain_timeout} s")
                await asyncio.sleep(1.0)
            projected_s = time.monotonic() - started
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
                page = (await client.get(f"/api/chronicles/{self.chronicle}/entities", params=params)).json()
                self.entity_ids += [item["id"] for item in page["items"]]
                self.entity_kinds += [item["kind"] for item in page["items"]]
                cursor = page["next_cursor"]
                if not cursor:
                    break
            # Warm-up, not recorded: the first requests load lazily built state.
            for i in range(10):
                await client.post(f"/api/chronicles/{self.chronicle}/context",
                                  json={"query": QUESTIONS[i % len(QUESTIONS)].format(a=self.names[i % len(self.names)],
                                                                                       b=self.names[0])})  # fmt: skip
        return {"events": n, "batch": SEED_BATCH, "ingest_s": round(seeded_s, 1),
                "events_per_s": round(n / seeded_s, 1), "projection_wait_s": round(projected_s, 1),
                "entities": len(self.entity_ids), "entity_kinds": dict(Counter(self.entity_kinds)),
                "characters_for_queries": len(self.names), "pool_events": len(self.pool)}  # fmt: skip

    async def load_worker(self, index: int, stop_at: float) -> None:
        rng = random.Random(index * 7_919 + 1)
        async with self.client() as client:
            while time.monotonic() < stop_at:
                r = rng.random()
                if r < MIX[0][1]:
                    a, b = rng.choice(self.names), rng.choice(self.names)
                    response = await self.timed("context", client.post(
                        f"/api/chronicles/{self.chronicle}/context",
                        json={"query": rng.choice(QUESTIONS).format(a=a, b=b), "format": "json"},
                    ))  # fmt: skip
                    if response is not None and response.status_code == 200:
                        bundle = response.json()
                        self.recorder.modes[bundle.get("mode", "?")] += 1
                        if bundle.get("degraded_reason"):
                            reason = str(bundle["degraded_reason"]).split(":")[0][:80]
                            self.recorder.degraded_reasons[reason] += 1
                elif r < MIX[0][1] + MIX[1][1]:
                    await self.ingest(
                        client, self.next_events(rng.randint(INGEST_MIN, INGEST_MAX)), route="ingest"
                    )
                elif rng.random() < ENTITY_GET_SHARE:
                    await self.timed("entity_get", client.get(f"/api/entities/{rng.choice(self.entity_ids)}"))
                else:
                    params: dict[str, Any] = {"limit": 50}
                    if rng.random() < 0.5:
                        params["kind"] = rng.choice(self.entity_kinds)
                    await self.timed("entity_list", client.get(f"/api/chronicles/{self.chronicle}/entities",
                                                               params=params))  # fmt: skip

    async def sample_once(self) -> dict[str, Any]:
        assert self.probe is not None and self.cpu is not None
        sample: dict[str, Any] = {
            "t_s": self.t(),
            "serve_rss_mb": rss_mb(self.stack.serve.pid if self.stack.serve else None),
            "worker_rss_mb": rss_mb(self.stack.worker.pid if self.stack.worker else None),
            "worker": self.stack.workers_started,
            "valkey_rss_mb": rss_mb(self.stack.valkey.pid()),
        }
        try:
            sample |= await self.probe.lag()
            outbox = await self.probe.outbox()
            sample["outbox_pending"] = outbox["pending"]
        except Exception as error:  # a sample must never end the run
            sample["probe_error"] = repr(error)[:200]
        sample |= self.cpu.sample()
        return sample

    async def sampler(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.samples.append(await self.sample_once())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_S)

    async def watch_recovery(self, since_wall: float, checkpoint_from: int, lag_target: int,
                             pending_target: int) -> dict[str, Any]:  # fmt: skip
        """Poll until projection has advanced past `checkpoint_from`, the relay has published after
        `since_wall` and lag/pending are back to their targets (bounded by FAULT_WATCH_S)."""
        assert self.probe is not None
        started = time.monotonic()
        result: dict[str, Any] = {"projection_resumed_s": None, "relay_resumed_s": None, "recovered_s": None,
                                  "max_lag_events": 0, "max_outbox_pending": 0}  # fmt: skip
        while time.monotonic() - started < FAULT_WATCH_S:
            with contextlib.suppress(Exception):
                lag, outbox = await self.probe.lag(), await self.probe.outbox()
                elapsed = round(time.monotonic() - started, 2)
                result["max_lag_events"] = max(result["max_lag_events"], lag["lag_events"])
                result["max_outbox_pending"] = max(result["max_outbox_pending"], outbox["pending"])
                if result["projection_resumed_s"] is None and lag["checkpoint_sequence"] > checkpoint_from:
                    result["projection_resumed_s"] = elapsed
                if result["relay_resumed_s"] is None and (outbox["last_sent_epoch"] or 0) > since_wall:
                    result["relay_resumed_s"] = elapsed
                if (result["projection_resumed_s"] is not None and result["relay_resumed_s"] is not None
                        and lag["lag_events"] <= lag_target and outbox["pending"] <= pending_target):  # fmt: skip
                    result["recovered_s"] = elapsed
                    return result
            await asyncio.sleep(0.25)
        return result

    def baseline(self) -> tuple[int, int]:
        """Lag and pending outbox rows the run normally sees (the largest over the last minute), so
        recovery means: back to normal, not to zero under load."""
        recent = [s for s in self.samples[-12:] if "lag_events" in s]
        lag = max([s["lag_events"] for s in recent], default=0)
        pending = max([s["outbox_pending"] for s in recent], default=0)
        return max(lag, 25), max(pending, 200)

    async def restart_worker(self) -> dict[str, Any]:
        assert self.probe is not None and self.stack.worker is not None
        lag_target, pending_target = self.baseline()
        old = self.stack.worker
        at = self.t()
        progress(f"fault 1: SIGTERM to the worker (pid {old.pid}) at {at:.0f} s")
        killed = time.monotonic()
        old.send_signal(signal.SIGTERM)
        forced = False
        while old.poll() is None:
            if time.monotonic() - killed > STOP_TIMEOUT_S:
                old.kill()
                forced = True
                break
            await asyncio.sleep(0.05)
        old.wait()
        shutdown_s = time.monotonic() - killed
        checkpoint = (await self.probe.lag())["checkpoint_sequence"]
        restarted_wall = time.time()
        new = self.stack.start_worker()
        restarted = time.monotonic()
        watch = await self.watch_recovery(restarted_wall, checkpoint, lag_target, pending_target)
        gap = None
        if watch["projection_resumed_s"] is not None:
            gap = round(restarted - killed + watch["projection_resumed_s"], 2)
        result = {
            "at_s": at, "old_pid": old.pid, "old_exit_code": old.returncode, "forced_kill": forced,
            "new_pid": new.pid, "shutdown_s": round(shutdown_s, 2),
            "projection_gap_s": gap,
            "new_worker_to_projection_s": watch["projection_resumed_s"],
            "new_worker_to_relay_s": watch["relay_resumed_s"],
            "recovered_after_restart_s": watch["recovered_s"],
            "recovery_target": {"lag_events": lag_target, "outbox_pending": pending_target},
            "max_lag_events": watch["max_lag_events"], "max_outbox_pending": watch["max_outbox_pending"],
        }  # fmt: skip
        result["window_s"] = [at, self.t() + FAULT_TAIL_S]  # what clients saw: filled in after the load
        progress(f"fault 1: worker down {result['projection_gap_s']} s until projection resumed; "
                 f"recovered {watch['recovered_s']} s after the restart")  # fmt: skip
        return result

    async def restart_valkey(self) -> dict[str, Any]:
        assert self.probe is not None
        lag_target, pending_target = self.baseline()
        valkey = self.stack.valkey
        pid_before, url_before = valkey.pid(), valkey.url()
        at = self.t()
        progress(f"fault 2: stopping Valkey (pid {pid_before}) at {at:.0f} s for {VALKEY_DOWN_S:.0f} s")
        stopping = time.monotonic()
        await asyncio.to_thread(valkey.stop)
        stop_s = time.monotonic() - stopping
        await asyncio.sleep(VALKEY_DOWN_S)
        checkpoint = (await self.probe.lag())["checkpoint_sequence"]
        started_wall = time.time()
        starting = time.monotonic()
        await asyncio.to_thread(valkey.start)
        start_s = time.monotonic() - starting
        down_s = time.monotonic() - stopping
        watch = await self.watch_recovery(started_wall, checkpoint - 1, lag_target, pending_target)
        result = {
            "at_s": at, "pid_before": pid_before, "pid_after": valkey.pid(),
            "same_url": valkey.url() == url_before, "stop_s": round(stop_s, 2), "start_s": round(start_s, 2),
            "down_s": round(down_s, 2),
            "relay_resumed_after_start_s": watch["relay_resumed_s"],
            "recovered_after_start_s": watch["recovered_s"],
            "recovery_target": {"lag_events": lag_target, "outbox_pending": pending_target},
            "max_lag_events": watch["max_lag_events"], "max_outbox_pending": watch["max_outbox_pending"],
        }  # fmt: skip
        result["window_s"] = [at, self.t() + FAULT_TAIL_S]  # what clients saw: filled in after the load
        progress(f"fault 2: Valkey down {down_s:.1f} s; relay published again "
                 f"{watch['relay_resumed_s']} s after the start")  # fmt: skip
        return result

    async def fault_script(self) -> None:
        assert self.load_started is not None
        try:
            await asyncio.sleep(max(0.0, self.load_started + self.duration / 3 - time.monotonic()))
            self.faults["worker_restart"] = await self.restart_worker()
            await asyncio.sleep(max(0.0, self.load_started + 2 * self.duration / 3 - time.monotonic()))
            self.faults["valkey_restart"] = await self.restart_valkey()
        except Exception as error:
            self.faults["error"] = repr(error)
            progress(f"fault script failed: {error!r}")
            raise

    async def drain(self) -> dict[str, Any]:
        assert self.probe is not None
        started = time.monotonic()
        lag: dict[str, int] = {}
        outbox: dict[str, Any] = {}
        while time.monotonic() - started < self.args.drain_timeout:
            lag, outbox = await self.probe.lag(), await self.probe.outbox()
            if lag["lag_events"] == 0 and outbox["pending"] == 0:
                return {"ok": True, "seconds": round(time.monotonic() - started, 1), **lag,
                        "outbox_rows": outbox["rows"]}  # fmt: skip
            await asyncio.sleep(0.5)
        return {"ok": False, "seconds": round(time.monotonic() - started, 1), **lag,
                "outbox_pending": outbox.get("pending")}  # fmt: skip

    async def verify(self) -> dict[str, Any]:
        assert self.probe is not None
        results: dict[str, Any] = {}

        # 1. Every acknowledged event stored exactly once.
        stored, shape = await self.probe.stored_external_ids()
        acked = set(self.acked)
        missing = sorted(acked - set(stored))
        duplicated = sorted(k for k, n in stored.items() if n > 1)
        unexpected = sorted(set(stored) - self.attempted)
        unacked_stored = sorted((self.unacknowledged - acked) & set(stored))
        gap_free = (shape["events"] == shape["max_sequence"] == shape["distinct_sequences"]
                    == shape["chronicle_last_sequence"] and shape["min_sequence"] in (0, 1))  # fmt: skip
        results["events"] = {
            "ok": not missing and not duplicated and not unexpected and gap_free,
            "acknowledged": len(acked), "stored": shape["events"], "missing": len(missing),
            "stored_more_than_once": len(duplicated), "unexpected": len(unexpected),
            "acknowledged_as_duplicate_on_retry": self.ack_duplicates,
            "acknowledged_more_than_once": sum(1 for n in self.acked.values() if n > 1),
            "never_acknowledged": len(self.unacknowledged - acked),
            "never_acknowledged_but_stored": len(unacked_stored),
            "sequences_gap_free": gap_free, **shape,
            "examples": {"missing": missing[:10], "stored_more_than_once": duplicated[:10],
                         "unexpected": unexpected[:10]},
        }  # fmt: skip

        # 2. ECS equals a replay.
        started = time.monotonic()
        async with self.client(self.admin_key, timeout=900) as admin:
            response = await admin.post(f"/api/admin/chronicles/{self.chronicle}/ecs/verify")
            if response.status_code == 200:
                body = response.json()
                results["ecs_verify"] = {
                    "ok": bool(body["ok"]), "seconds": round(time.monotonic() - started, 1),
                    "replayed_sequence": body["replayed_sequence"],
                    "checkpoint_sequence": body["checkpoint_sequence"],
                    "checkpoint_hash_matches": body["checkpoint_hash_matches"],
                    "differences": len(body["differences"]), "first_differences": body["differences"][:5],
                }  # fmt: skip
            else:
                results["ecs_verify"] = {
                    "ok": False,
                    "status": response.status_code,
                    "body": response.text[:500],
                }
            ops = await admin.get("/api/ops/status")
            if ops.status_code == 200:
                status = ops.json()
                results["ops_status"] = {
                    k: status.get(k) for k in ("breaker", "flags", "fallbacks_served", "parked")
                }

        # 3. The relay published every outbox row (at least once).
        outbox = await self.probe.outbox()
        ids = await self.probe.outbox_ids()
        redis = Redis.from_url(self.stack.valkey.url(), socket_timeout=30)
        stream = f"{STREAM_PREFIX}{self.chronicle}"
        seen: Counter[int] = Counter()
        try:
            xlen = int(await redis.xlen(stream))
            start = "-"
            while True:
                entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(
                    stream, min=start, max="+", count=5_000
                )  # type: ignore[assignment]
                for _entry_id, fields in entries:
                    seen[int(fields[b"outbox_id"])] += 1
                if len(entries) < 5_000:
                    break
                start = "(" + entries[-1][0].decode()
        finally:
            await redis.aclose()
        missing_rows = [i for i in ids if i not in seen]
        results["relay"] = {
            "ok": outbox["pending"] == 0 and outbox["dead_lettered"] == 0 and not missing_rows,
            "outbox_rows": outbox["rows"], "pending": outbox["pending"],
            "dead_lettered": outbox["dead_lettered"], "stream": stream, "xlen": xlen,
            "xlen_at_least_rows": xlen >= outbox["rows"],
            "distinct_outbox_ids_in_stream": len(seen), "rows_missing_from_stream": len(missing_rows),
            "duplicate_entries": sum(n - 1 for n in seen.values()),
            "entries_not_in_outbox": len(set(seen) - set(ids)),
            "examples_missing": missing_rows[:10],
        }  # fmt: skip
        return results

    # -- the whole run --------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        ready_s = await self.wait_ready()
        progress(
            f"service ready after {ready_s:.1f} s (pid {self.stack.serve.pid if self.stack.serve else '?'})"
        )
        self.stack.start_worker()
        progress(f"worker started (pid {self.stack.worker.pid if self.stack.worker else '?'}); seeding")
        engine = create_engine(to_asyncpg_url(self.stack.postgres.url()), timeout_ms=60_000, pool_size=3)
        try:
            report["seed"] = await self.seed()
            self.probe = Probe(engine, uuid.UUID(self.chronicle))
            progress(f"seed: {json.dumps(report['seed'])}")

            def own_pids() -> set[int]:
                found = {psutil.Process().pid} | self.stack.server_pids()
                with contextlib.suppress(psutil.Error):
                    found.update(c.pid for c in psutil.Process().children(recursive=True))
                return found

            self.cpu = CpuTracker(own_pids)
            self.recorder = Recorder()
            self.load_started = self.recorder.start
            stop_at = self.load_started + self.duration
            progress(f"load: {self.args.minutes:g} min, {self.args.concurrency} clients, mix "
                     f"{'/'.join(f'{int(s * 100)}% {r}' for r, s in MIX)}")  # fmt: skip
            stop_sampling = asyncio.Event()
            sampler = asyncio.create_task(self.sampler(stop_sampling))
            faults = asyncio.create_task(self.fault_script())
            reporter = asyncio.create_task(self.report_progress(stop_at))
            await asyncio.gather(*(self.load_worker(i, stop_at) for i in range(self.args.concurrency)))
            self.recorder.end = time.monotonic()
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            if not faults.done():
                progress("load over; waiting for the fault script to finish")
            with contextlib.suppress(Exception):
                await faults
            stop_sampling.set()
            await sampler
            for fault in self.faults.values():
                if isinstance(fault, dict) and "window_s" in fault:
                    fault["clients_in_window"] = self.recorder.window(*fault["window_s"])
            report["cpu_during_load"] = self.cpu.overall()
            progress("draining: waiting for projection lag 0 and no pending outbox row")
            report["drain"] = await self.drain()
            self.samples.append(await self.sample_once())
            progress(f"drain: {json.dumps(report['drain'])}; verifying")
            report["verification"] = await self.verify()
        finally:
            await engine.dispose()
        report["load"] = self.recorder.report()
        report["ingest"] = {
            "acknowledged_events": len(self.acked), "retries": self.ingest_retries,
            "given_up_requests_events": len(self.unacknowledged),
            "pool_rounds": self.pool_round,
            "request_to_acknowledgement_ms": percentiles(self.ingest_wall_ms),
        }  # fmt: skip
        report["faults"] = self.faults
        report["memory"] = self.memory_report()
        report["logs"] = self.stack.log_summary()
        return report

    async def report_progress(self, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(30)
            done = sum(len(v) for v in self.recorder.ok_ms.values())
            last = self.samples[-1] if self.samples else {}
            progress(f"t={self.t():.0f}s ok={done} ({done / max(1e-9, self.recorder.now()):.1f}/s) "
                     f"errors={sum(self.recorder.errors.values())} serve={last.get('serve_rss_mb')} MB "
                     f"worker={last.get('worker_rss_mb')} MB lag={last.get('lag_events')} "
                     f"pending={last.get('outbox_pending')} bg_cpu={last.get('background_cpu_pct')}%")  # fmt: skip

    def memory_report(self) -> dict[str, Any]:
        half = self.duration / 2
        trends: dict[str, Any] = {}
        for key, name in (
            ("serve_rss_mb", "serve"),
            ("worker_rss_mb", "worker"),
            ("valkey_rss_mb", "valkey"),
        ):
            points = [(s["t_s"], s[key]) for s in self.samples
                      if s.get(key) is not None and half <= s["t_s"] <= self.duration]  # fmt: skip
            if name == "worker":  # only the worker running at the end, once it has started up
                restart = self.faults.get("worker_restart") or {}
                warm = restart.get("at_s", 0.0) + (restart.get("projection_gap_s") or 0.0) + SAMPLE_S
                points = [(s["t_s"], s[key]) for s in self.samples
                          if s.get(key) is not None and max(half, warm) <= s["t_s"] <= self.duration
                          and s["worker"] == self.stack.workers_started]  # fmt: skip
            if name == "valkey" and "valkey_restart" in self.faults:  # only after its restart
                after = self.faults["valkey_restart"]["at_s"] + self.faults["valkey_restart"]["down_s"]
                points = [p for p in points if p[0] >= after]
            trends[name] = linear_trend(points)
        # The stretch after the last fault's client window, free of fault
        # steps (error paths and reconnections may add a one-off step that a fit reads as a slope).
        quiet_from = ((self.faults.get("valkey_restart") or {}).get("window_s") or [0.0, self.duration])[1]
        after_faults = {
            name: linear_trend([(s["t_s"], s[key]) for s in self.samples if s.get(key) is not None
                                and quiet_from <= s["t_s"] <= self.duration
                                and (name != "worker" or s["worker"] == self.stack.workers_started)])
            for key, name in (("serve_rss_mb", "serve"), ("worker_rss_mb", "worker"))
        }  # fmt: skip
        served = sum(len(v) for v in self.recorder.ok_ms.values())
        minutes = ((self.recorder.end or time.monotonic()) - self.recorder.start) / 60
        if trends["serve"] is not None and served:
            # The slope as memory per request served: comparable across machines of different speed.
            trends["serve"]["kb_per_ok_request"] = round(
                trends["serve"]["slope_mb_per_min"] * 1024 / (served / minutes), 2
            )
        limit = self.args.max_rss_slope
        # A fault leaves a one-off step (reconnections, error paths, buffers); fitted across it, a
        # flat line afterwards reads as a slope. So the gate takes the stretch after the last
        # fault when it is long enough to show a trend (a quarter of the run), else the second half.
        quiet_long_enough = self.duration - quiet_from >= self.duration / 4
        gated, window = (
            (after_faults, "after the last fault")
            if quiet_long_enough
            else (trends, "second half of the load phase")
        )
        checked = {name: gated[name] for name in ("serve", "worker") if gated.get(name) is not None}
        return {
            "samples": self.samples,
            "trend_window": "second half of the load phase",
            "trends": trends,
            "trends_after_last_fault": after_faults,
            "gated_window": window,
            "max_slope_mb_per_min": limit,
            "no_growth_trend": bool(checked) and all(t["slope_mb_per_min"] <= limit for t in checked.values()),
            "peak_mb": {k: max((s[k] for s in self.samples if s.get(k) is not None), default=None)
                        for k in ("serve_rss_mb", "worker_rss_mb", "valkey_rss_mb")},
        }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def window_text(fault: dict[str, Any]) -> str:
    window = fault.get("clients_in_window") or {}
    context = (window.get("ok") or {}).get("context") or {}
    p95 = (context.get("latency_ms") or {}).get("p95", "-")
    return (f"in {window.get('from_s')}-{window.get('to_s')} s: client errors {window.get('errors') or 0}, "
            f"{context.get('requests', 0)} context requests, p95 {p95} ms")  # fmt: skip


def summary(report: dict[str, Any]) -> str:
    load, verification, memory = report["load"], report.get("verification", {}), report["memory"]
    lines = [
        f"Load: {load['duration_s']:.0f} s, {report['parameters']['concurrency']} clients; "
        f"{load['requests']} requests, {load['ok_per_s']} ok/s, {load['errors']} errors "
        f"(other work on the machine used {report['cpu_during_load']['background_cpu_pct']}% of the CPU)",
        f"{'route':<12} {'requests':>8} {'ok/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}",
    ]
    for route, r in load["routes"].items():
        lat = r["latency_ms"] or {}
        lines.append(f"{route:<12} {r['requests']:>8} {r['ok_per_s']:>7} {lat.get('p50', '-'):>8} "
                     f"{lat.get('p95', '-'):>8} {lat.get('p99', '-'):>8} {r['errors']:>7}")  # fmt: skip
    modes = load["context_modes"]
    lines.append(f"context bundles: {json.dumps(modes)}; chronicle-only because of: "
                 f"{json.dumps(load['context_degraded_reasons'])}")  # fmt: skip
    if load["errors_by_route_and_status"]:
        lines.append(f"errors: {json.dumps(load['errors_by_route_and_status'])}")
    worker, valkey = report["faults"].get("worker_restart"), report["faults"].get("valkey_restart")
    if worker:
        lines.append(f"worker restart at {worker['at_s']:.0f} s: shutdown {worker['shutdown_s']} s, projection gap "
                     f"{worker['projection_gap_s']} s, relay {worker['new_worker_to_relay_s']} s after the new "
                     f"worker, back to normal {worker['recovered_after_restart_s']} s after it; max lag "
                     f"{worker['max_lag_events']}; {window_text(worker)}")  # fmt: skip
    if valkey:
        lines.append(f"Valkey restart at {valkey['at_s']:.0f} s: down {valkey['down_s']} s, relay published "
                     f"{valkey['relay_resumed_after_start_s']} s after the start, back to normal "
                     f"{valkey['recovered_after_start_s']} s after it; {window_text(valkey)}")  # fmt: skip
    if report["faults"].get("error"):
        lines.append(f"fault script error: {report['faults']['error']}")
    for name, trend in memory["trends"].items():
        if trend:
            lines.append(f"RSS {name}: {trend['first_mb']} -> {trend['last_mb']} MB over {trend['from_s']:.0f}-"
                         f"{trend['to_s']:.0f} s, trend {trend['slope_mb_per_min']:+} MB/min (r² {trend['r2']})"
                         + (f", {trend['kb_per_ok_request']:+} KB per request" if "kb_per_ok_request" in trend else ""))  # fmt: skip
    gated_after_faults = memory.get("gated_window") == "after the last fault"
    for name, trend in memory.get("trends_after_last_fault", {}).items():
        if trend:
            lines.append(f"RSS {name} after the last fault ({trend['from_s']:.0f}-{trend['to_s']:.0f} s, "
                         f"{'gated' if gated_after_faults else 'not gated'}): "
                         f"{trend['slope_mb_per_min']:+} MB/min")  # fmt: skip
    if verification:
        ev, ecs, relay = verification["events"], verification["ecs_verify"], verification["relay"]
        lines.append(f"events: {ev['acknowledged']} acknowledged, {ev['stored']} stored, missing {ev['missing']}, "
                     f"stored twice {ev['stored_more_than_once']}, gap-free {ev['sequences_gap_free']}")  # fmt: skip
        lines.append(f"ECS verify: ok={ecs['ok']} ({ecs.get('differences', '?')} differences, "
                     f"{ecs.get('seconds', '?')} s)")  # fmt: skip
        lines.append(f"relay: {relay['outbox_rows']} outbox rows, pending {relay['pending']}, dead "
                     f"{relay['dead_lettered']}, XLEN {relay['xlen']}, missing from stream "
                     f"{relay['rows_missing_from_stream']}, duplicates {relay['duplicate_entries']}")  # fmt: skip
    lines.append(
        "checks: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in report["checks"].items())
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load phase (default 10)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument(
        "--seed-events", type=int, default=2_000, help="events in the chronicle before the load"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the projection and the relay to catch up (seed and end)",
    )
    parser.add_argument(
        "--max-rss-slope",
        type=float,
        default=1.0,
        help="largest RSS trend (MB/min, second half) that passes the no-leak check",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.concurrency < 1 or args.seed_events < 100:
        parser.error("--minutes must be positive, --concurrency at least 1, --seed-events at least 100")

    root = Path(tempfile.mkdtemp(prefix="lore-load-"))
    stack = Stack(root)
    started = dt.datetime.now(dt.UTC)
    try:
        progress(f"LORE_DATA_DIR={root}; creating tenants (initdb + migrations)")
        key = stack.create_tenant("load")
        admin_key = stack.create_tenant("load-admin", admin=True)
        progress(f"starting lore serve on {stack.base_url} (LORE_RUN_PROJECTOR=false)")
        stack.start_serve()
        run = LoadRun(args, stack, key, admin_key)
        report = asyncio.run(run.run())
    except BaseException:
        for log in sorted(root.glob("*.log")):
            progress(f"--- {log.name} (tail) ---\n{tail(log)}")
        raise
    finally:
        progress("stopping the service, the worker and the embedded servers")
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)

    verification = report.get("verification", {})
    report["checks"] = {
        "acknowledged_events_stored_exactly_once": bool(verification.get("events", {}).get("ok")),
        "ecs_equals_replay": bool(verification.get("ecs_verify", {}).get("ok")),
        "relay_published_every_outbox_row": bool(verification.get("relay", {}).get("ok")),
        "drained": bool(report.get("drain", {}).get("ok")),
        "faults_injected_and_recovered": all(
            report["faults"].get(name, {}).get(field) is not None
            for name, field in (("worker_restart", "recovered_after_restart_s"),
                                ("valkey_restart", "recovered_after_start_s"))
        ) and "error" not in report["faults"],
        "no_rss_growth_trend": bool(report["memory"]["no_growth_trend"]),
    }  # fmt: skip
    final = {
        "benchmark": "load",
        "date": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine_info(),
        "parameters": {
            "minutes": args.minutes, "concurrency": args.concurrency, "seed_events": args.seed_events,
            "mix": dict(MIX), "entity_get_share_of_entity_reads": ENTITY_GET_SHARE,
            "events_per_ingest": [INGEST_MIN, INGEST_MAX], "sample_interval_s": SAMPLE_S,
            "valkey_down_s": VALKEY_DOWN_S, "request_timeout_s": REQUEST_TIMEOUT_S,
            "ingest_retry_s": INGEST_RETRY_S, "max_rss_slope_mb_per_min": args.max_rss_slope,
            "service": "lore serve, LORE_RUN_PROJECTOR=false, LORE_RATE_LIMIT_PER_MINUTE=0, embedded "
                       "PostgreSQL + Valkey, local embedder; projector + relay in a separate `lore worker`",
            "network": "loopback (127.0.0.1) only",
        },
        **report,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(final, indent=2) + "\n")
    print(summary(final))
    print(f"written to {args.out}")
    return 0 if all(final["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
