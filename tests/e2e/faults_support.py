"""Support for `test_faults.py`: real servers to break, `lore serve` as a subprocess, a steady load.

Everything here is loopback only (Unix sockets for PostgreSQL, 127.0.0.1 for Valkey and HTTP) and
bounded: every loop has a deadline and a maximum count, every request a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from app.embedded import EmbeddedPostgres, EmbeddedValkey

LORE = [sys.executable, "-m", "app.cli"]
ROOT = Path(__file__).resolve().parents[2]

ECS_TIMEOUT_MS = 250
REQUEST_TIMEOUT = 10.0
"""Client timeout of every request: a hang shows up as a recorded error, never as a stuck test."""

# The sample story's truth at its end (app/demo/salt_road.jsonl), for "where is X now" questions.
EXPECTED_LOCATION = {
    "Bram": "Lantern Cellar",
    "Elara": "Saltcrag Keep",
    "Oswin": "Brinewell Market",
    "Tamsin": "Lantern Inn",
}
QUESTIONS = [(name, f"Where is {name} now?") for name in EXPECTED_LOCATION]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """The caller's environment without anything that would point `lore` at other servers."""
    prefixes = ("DATABASE_URL", "ECS_DATABASE_URL", "REDIS_URL", "LORE_", "TEST_DATABASE_URL",
                "TEST_REDIS_URL")  # fmt: skip
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


class FaultStack:
    """Chronicle PostgreSQL (root a), ECS PostgreSQL (root b), Valkey (root c) and `lore serve`."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="lore-fault-"))
        self.chronicle_pg = EmbeddedPostgres(self.base / "a")
        self.ecs_pg = EmbeddedPostgres(self.base / "b")
        self.valkey = EmbeddedValkey(self.base / "c")
        self.data_dir = self.base / "data"
        self.data_dir.mkdir()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: Any = None
        self._frozen: list[psutil.Process] = []
        self._valkey_url: str | None = None

    # -- servers -------------------------------------------------------------------------------

    def start_servers(self) -> None:
        self.chronicle_pg.start()
        self.ecs_pg.start()
        self.valkey.start()
        self._valkey_url = self.valkey.url()

    def env(self) -> dict[str, str]:
        assert self._valkey_url is not None
        return _clean_env() | {
            "DATABASE_URL": self.chronicle_pg.url(),
            "ECS_DATABASE_URL": self.ecs_pg.url(),
            "REDIS_URL": self._valkey_url,
            "LORE_PORT": str(self.port),
            "LORE_DATA_DIR": str(self.data_dir),
            "LORE_LOG_FORMAT": "json",
            "LORE_ECS_TIMEOUT_MS": str(ECS_TIMEOUT_MS),
        }

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LORE, *args], env=self.env(), cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
        )

    def create_tenant(self, name: str, *, admin: bool = False) -> str:
        result = self.run_cli("tenant", "create", name, *(["--admin"] if admin else []))
        assert result.returncode == 0, result.stderr
        key = result.stdout.strip().splitlines()[-1]
        assert key.startswith("lk_"), result.stdout
        return key

    def start_service(self) -> None:
        self._log_handle = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*LORE, "serve"], env=self.env(), cwd=ROOT, stdout=self._log_handle, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.2) + 1):
            if time.monotonic() >= deadline:
                break
            assert self.process is not None
            assert self.process.poll() is None, self.log_tail()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"service not ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # -- faults --------------------------------------------------------------------------------

    def freeze_ecs(self) -> int:
        """SIGSTOP the ECS PostgreSQL: postmaster and every child, so every call on it hangs."""
        pid = self.ecs_pg.pid()
        assert pid is not None, "ECS PostgreSQL is not running"
        postmaster = psutil.Process(pid)
        self._frozen = [postmaster, *postmaster.children(recursive=True)]
        for process in self._frozen:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGSTOP)
        return len(self._frozen)

    def thaw_ecs(self) -> None:
        for process in self._frozen:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)
        self._frozen = []

    def ensure_servers_up(self) -> None:
        """After a fault, whatever happened: everything continued and running again."""
        self.thaw_ecs()
        for server in (self.chronicle_pg, self.ecs_pg, self.valkey):
            server.start()

    def own_processes(self) -> list[psutil.Process]:
        """This test's processes: itself, the service, both PostgreSQL servers (with their
        backends) and Valkey."""
        # This process's own children (pg_ctl, psql) are counted once reaped, with its own times.
        processes = [psutil.Process()]
        pids = [self.chronicle_pg.pid(), self.ecs_pg.pid(), self.valkey.pid()]
        if self.process is not None:
            pids.append(self.process.pid)
        for pid in pids:
            if pid is None:  # a stopped server (psutil.Process(None) would be this process)
                continue
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                processes += [process, *process.children(recursive=True)]
        return processes

    def close(self) -> None:
        try:
            self.thaw_ecs()
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
        finally:
            if self._log_handle is not None:
                self._log_handle.close()
            for server in (self.chronicle_pg, self.ecs_pg, self.valkey):
                with contextlib.suppress(Exception):
                    server.stop()
            shutil.rmtree(self.base, ignore_errors=True)


# -- load ------------------------------------------------------------------------------------------


@dataclass
class ContextSample:
    phase: str
    subject: str
    sent: float
    """time.monotonic() when the request was sent."""
    latency: float = 0.0
    status: int | None = None
    error: str | None = None
    mode: str | None = None
    degraded_reason: str | None = None
    location: str | None = None
    server_total_ms: float | None = None
    """The bundle's own `timings_ms.total`: assembling the bundle that was served (for a fallback,
    the chronicle-only one; the failed ECS attempt before it is not included)."""

    @property
    def done(self) -> float:
        return self.sent + self.latency

    @property
    def outside_assembly(self) -> float:
        """Seconds of the client-observed latency not spent assembling the served bundle: HTTP and
        auth overhead, the ECS staleness check, and any ECS wait before a fallback."""
        return self.latency - (self.server_total_ms or 0.0) / 1000


@dataclass
class EventSample:
    phase: str
    external_id: str
    sent: float
    latency: float = 0.0
    status: int | None = None
    error: str | None = None


@dataclass
class BreakerReading:
    at: float
    state: str | None
    status: int | None
    service_cpu: float | None = None
    """CPU use of the service process since the previous reading, percent of one core."""


@dataclass
class Recorder:
    """Everything the load generator and the monitor saw, across phases."""

    contexts: list[ContextSample] = field(default_factory=list)
    events: list[EventSample] = field(default_factory=list)
    breaker: list[BreakerReading] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    next_event: int = 0

    def contexts_in(self, *phases: str) -> list[ContextSample]:
        return [s for s in self.contexts if s.phase in phases]

    def first_breaker(self, state: str, after: float) -> float | None:
        return next((r.at for r in self.breaker if r.at >= after and r.state == state), None)


class Load:
    """Context requests every `context_interval` and single-event ingests every `event_interval`,
    sent open-loop (a slow answer does not slow the rate down), plus a /ready poll every
    `monitor_interval` for the breaker state (not more often: /ready parses the migration scripts,
    ~10 ms of the service's event loop). `phase` labels what is sent from now on."""

    def __init__(
        self,
        stack: FaultStack,
        key: str,
        chronicle: str,
        recorder: Recorder,
        *,
        context_interval: float = 0.1,
        event_interval: float = 0.2,
        monitor_interval: float = 0.2,
        max_in_flight: int = 6,
        max_seconds: float = 90.0,
    ) -> None:
        self.stack = stack
        self.headers = {"Authorization": f"Bearer {key}"}
        self.chronicle = chronicle
        self.recorder = recorder
        self.context_interval = context_interval
        self.event_interval = event_interval
        self.monitor_interval = monitor_interval
        self.max_in_flight = max_in_flight
        self.max_seconds = max_seconds
        self.phase = "start"
        self.skipped = {"context": 0, "event": 0}
        """Sends skipped because `max_in_flight` requests were still waiting (a sign of hangs)."""
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: dict[str, set[asyncio.Task[None]]] = {"context": set(), "event": set()}
        self._client: httpx.AsyncClient | None = None
        self._monitor_client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Load:
        limits = httpx.Limits(max_connections=2 * self.max_in_flight + 4)
        self._client = httpx.AsyncClient(base_url=self.stack.base_url, timeout=REQUEST_TIMEOUT, limits=limits)
        self._monitor_client = httpx.AsyncClient(base_url=self.stack.base_url, timeout=2.0)
        self._deadline = time.monotonic() + self.max_seconds
        self.meter = CpuMeter(self.stack)
        self._tasks = [
            asyncio.create_task(self._every(self.context_interval, self._context, "context")),
            asyncio.create_task(self._every(self.event_interval, self._event, "event")),
            asyncio.create_task(self._monitor()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        pending = self._in_flight["context"] | self._in_flight["event"]
        if pending:
            await asyncio.wait(pending, timeout=REQUEST_TIMEOUT + 5)
        for task in pending:
            task.cancel()
        assert self._client is not None
        assert self._monitor_client is not None
        await self._client.aclose()
        await self._monitor_client.aclose()

    def running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    async def _every(self, interval: float, send: Any, kind: str) -> None:
        """Open loop at a fixed rate; bounded by the deadline and by `max_seconds / interval` sends.
        At most `max_in_flight` requests of a kind wait at once (more are skipped and counted), so
        an overloaded machine cannot build an ever longer queue in front of the service."""
        in_flight = self._in_flight[kind]
        next_at = time.monotonic()
        for _ in range(int(self.max_seconds / interval) + 1):
            if not self.running():
                return
            if len(in_flight) >= self.max_in_flight:
                self.skipped[kind] += 1
            else:
                task = asyncio.create_task(send())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _context(self) -> None:
        assert self._client is not None
        subject, question = QUESTIONS[len(self.recorder.contexts) % len(QUESTIONS)]
        sample = ContextSample(phase=self.phase, subject=subject, sent=time.monotonic())
        self.recorder.contexts.append(sample)
        try:
            response = await self._client.post(
                f"/api/chronicles/{self.chronicle}/context",
                # Lexical retrieval: embedding the query costs ~45 ms of CPU (on two threads) per
                # request, which at this rate would make the load measure the machine, not the
                # faults. `state`, which the faults are about, does not depend on the retrieval mode.
                json={"query": question, "format": "json", "retrieval": "lexical"},
                headers=self.headers,
            )
        except httpx.HTTPError as error:
            sample.latency = time.monotonic() - sample.sent
            sample.error = f"{type(error).__name__}: {error}"
            return
        sample.latency = time.monotonic() - sample.sent
        sample.status = response.status_code
        if response.status_code != 200:
            sample.error = response.text[:300]
            return
        bundle = response.json()
        sample.mode = bundle["mode"]
        sample.degraded_reason = bundle["degraded_reason"]
        sample.server_total_ms = bundle["timings_ms"].get("total")
        state = next((s for s in bundle["state"] if s["name"] == subject), None)
        if state is not None and state["location"] is not None:
            sample.location = state["location"]["value"]

    async def _event(self) -> None:
        assert self._client is not None
        self.recorder.next_event += 1
        external_id = f"fault-{self.recorder.next_event}"
        sample = EventSample(phase=self.phase, external_id=external_id, sent=time.monotonic())
        self.recorder.events.append(sample)
        event = {
            "external_id": external_id,
            "kind": "chore",
            "summary": f"Nell sweeps salt from the stalls of the market (round {self.recorder.next_event}).",
            "actors": ["Nell"],
            "location": "Brinewell Market",
        }
        try:
            response = await self._client.post(
                f"/api/chronicles/{self.chronicle}/events", json={"events": [event]}, headers=self.headers
            )
        except httpx.HTTPError as error:
            sample.latency = time.monotonic() - sample.sent
            sample.error = f"{type(error).__name__}: {error}"
            return
        sample.latency = time.monotonic() - sample.sent
        sample.status = response.status_code
        if response.status_code == 200:
            self.recorder.acknowledged.append(external_id)
        else:
            sample.error = response.text[:300]

    async def _monitor(self) -> None:
        assert self._monitor_client is not None
        assert self.stack.process is not None
        service = psutil.Process(self.stack.process.pid)
        service.cpu_percent()
        for _ in range(int(self.max_seconds / self.monitor_interval) + 1):
            if not self.running():
                return
            at = time.monotonic()
            try:
                response = await self._monitor_client.get("/ready")
                state = response.json()["checks"]["ecs"]["breaker"]
                reading = BreakerReading(at, state, response.status_code)
            except (httpx.HTTPError, ValueError, KeyError):
                reading = BreakerReading(at, None, None)
            with contextlib.suppress(psutil.Error):
                reading.service_cpu = service.cpu_percent()
            self.recorder.breaker.append(reading)
            self.meter.sample()
            await asyncio.sleep(max(0.0, at + self.monitor_interval - time.monotonic()))

    async def wait_breaker(self, state: str, after: float, within: float) -> float | None:
        """The first time after `after` the monitor saw `state`, waiting at most `within` s for it."""
        deadline = time.monotonic() + within
        for _ in range(int(within / 0.05) + 1):
            if time.monotonic() >= deadline:
                break
            seen = self.recorder.first_breaker(state, after)
            if seen is not None:
                return seen
            await asyncio.sleep(0.05)
        return self.recorder.first_breaker(state, after)


class CpuMeter:
    """How much CPU processes other than this test's used meanwhile, in cores.

    The machine has two cores and is shared; when other work takes a good part of them, the
    service's timing says more about that work than about the faults. Busy CPU of the whole
    machine minus this test's own processes, over the wall time. Call `sample` now and then
    (the monitor does, every 200 ms) so that processes which end (a stopped server, backends)
    are counted with their last reading.
    """

    def __init__(self, stack: FaultStack) -> None:
        self.stack = stack
        self._seen: dict[tuple[int, float], float] = {}
        self._t0, self._busy0, self._own0 = time.monotonic(), self._busy(), self.sample()

    @staticmethod
    def _busy() -> float:
        total = psutil.cpu_times()
        return float(sum(total) - total.idle - getattr(total, "iowait", 0.0))

    def sample(self) -> float:
        """CPU seconds used by this test's processes so far (of those seen since the start)."""
        for process in self.stack.own_processes():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                # This process reaps its short-lived children (pg_ctl, psql): their times are in
                # its children_*. PostgreSQL backends are counted on their own, so their
                # postmaster's children_* is left out.
                own = times.user + times.system
                if process.pid == os.getpid():
                    own += times.children_user + times.children_system
                self._seen[(process.pid, process.create_time())] = own
        return sum(self._seen.values())

    def foreign_cores(self) -> float:
        own, busy, now = self.sample(), self._busy(), time.monotonic()
        return max(0.0, ((busy - self._busy0) - (own - self._own0)) / max(now - self._t0, 1e-3))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
