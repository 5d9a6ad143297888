"""Ingest benchmark on the embedded default (local MiniLM, embedded PostgreSQL + Valkey), over HTTP.

    .venv/bin/python -m evals.perf.bench_ingest [--events N] [--out PATH]

1. Bare embedder: ``LocalMiniLMEmbedder().embed`` over the very texts ingested later, in batches of
   100, in this process (the model is freed before the service starts); measured again after the
   service has stopped, and the ratio below is taken against the mean of the two runs.
2. A real ``lore serve`` subprocess on a free port with a fresh LORE_DATA_DIR and no DATABASE_URL /
   REDIS_URL, so it starts embedded PostgreSQL and Valkey; a tenant is created first with
   ``lore tenant create bench`` on the same data directory.
3. Batched ingest: N events in POSTs of 100, one httpx client, sequential; events/s and the ratio
   to the bare embedder's sentences/s (goal >= 0.85).
4. Single-event latency: 300 sequential one-event POSTs after 20 warm-up requests (goal p95 < 30 ms).
5. RSS of the service process (uvicorn, without PostgreSQL/Valkey) after start-up and after the
   ingest runs (goal < 500 MB).

Results go to evals/perf/results/ingest.json (see --out). Request bodies are serialised before the
clock starts, so the client's own CPU use (it shares the machine with the service) stays small.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

from evals.perf.storygen import StoryGenerator

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "evals" / "perf" / "results" / "ingest.json"

BATCH_SIZE = 100
SINGLE_REQUESTS = 300
SINGLE_WARMUP = 20
SEED = 20_240_601
READY_TIMEOUT_S = 120.0
TENANT_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0

GOAL_INGEST_RATIO = 0.85
GOAL_SINGLE_P95_MS = 30.0
GOAL_RSS_MB = 500.0

# Variables that would point the service away from the embedded default.
_SCRUBBED_ENV = (
    "DATABASE_URL", "ECS_DATABASE_URL", "REDIS_URL", "EMBEDDING_PROVIDER", "EMBEDDING_URL",
    "EMBEDDING_MODEL", "EMBEDDING_API_KEY", "EMBEDDING_DIMENSION", "LORE_HOST", "LORE_PORT",
)  # fmt: skip

_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", flush=True)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "p50": round(cuts[49], 2),
        "p95": round(cuts[94], 2),
        "p99": round(cuts[98], 2),
        "mean": round(statistics.fmean(ms), 2),
        "min": round(ms[0], 2),
        "max": round(ms[-1], 2),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def lore_command() -> list[str]:
    script = Path(sys.executable).with_name("lore")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "app.cli"]


def service_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["LORE_DATA_DIR"] = str(data_dir)
    env["LORE_LOG_LEVEL"] = "WARNING"
    # The subprocesses run in the data dir (so no stray .env is picked up); keep the repo importable.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor() or None,
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
    }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


class CpuMeter:
    """How busy the machine was with *other* work during a timed phase.

    The benchmark shares the machine with whatever else runs; on 2 cores one busy neighbour halves
    the figures. Busy CPU time of the whole machine minus that of our own processes (this one, its
    children, and the service's PostgreSQL and Valkey servers), as a share of all cores.
    """

    def __init__(self, own_pids: Callable[[], set[int]]) -> None:
        self._own_pids = own_pids
        self._started = 0.0
        self._busy = 0.0
        self._steal = 0.0
        self._own: dict[int, float] = {}

    @staticmethod
    def _machine() -> tuple[float, float]:
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        return busy, getattr(t, "steal", 0.0)

    def _own_times(self) -> dict[int, float]:
        times = {}
        for pid in self._own_pids():
            with contextlib.suppress(psutil.Error):
                cpu = psutil.Process(pid).cpu_times()
                times[pid] = cpu.user + cpu.system
        return times

    def start(self) -> None:
        self._own = self._own_times()
        self._busy, self._steal = self._machine()
        self._started = time.perf_counter()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._started
        busy, steal = self._machine()
        own = sum(t - self._own.get(pid, 0.0) for pid, t in self._own_times().items())
        capacity = wall * (os.cpu_count() or 1)
        return {
            "background_cpu_pct": round(max(0.0, busy - self._busy - own) / capacity * 100, 1),
            "own_cpu_pct": round(own / capacity * 100, 1),
            "steal_pct": round((steal - self._steal) / capacity * 100, 1),
        }


def own_process_tree(extra: Callable[[], set[int]] | None = None) -> Callable[[], set[int]]:
    def pids() -> set[int]:
        found = {os.getpid()}
        with contextlib.suppress(psutil.Error):
            found.update(c.pid for c in psutil.Process().children(recursive=True))
        if extra is not None:
            found |= extra()
        return found

    return pids


def warn_if_busy(phase: str, cpu: dict[str, float]) -> None:
    if cpu["background_cpu_pct"] > 10 or cpu["steal_pct"] > 10:
        progress(
            f"WARNING: other work used {cpu['background_cpu_pct']}% of the CPU (steal {cpu['steal_pct']}%) "
            f"during {phase}; figures are pessimistic, rerun on a quiet machine"
        )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------------
# 1. Bare embedder
# --------------------------------------------------------------------------------------------------


def bench_embedder(texts: list[str], warmup: list[str]) -> dict[str, Any]:
    from rag.embedding import LocalMiniLMEmbedder

    progress("loading LocalMiniLMEmbedder in the benchmark process")
    embedder = LocalMiniLMEmbedder()
    model_id = embedder.model_id
    try:
        embedder.embed(warmup)  # first runs allocate the onnxruntime arena; the service gets a warm-up too
        progress(f"embedding {len(texts)} texts in batches of {BATCH_SIZE}")
        meter = CpuMeter(own_process_tree())
        meter.start()
        started = time.perf_counter()
        for batch in chunks(texts, BATCH_SIZE):
            embedder.embed(list(batch))
        seconds = time.perf_counter() - started
        cpu = meter.stop()
    finally:
        embedder.close()
        del embedder
        gc.collect()
    rate = len(texts) / seconds
    progress(f"bare embedder: {rate:.1f} sentences/s ({seconds:.2f} s)")
    warn_if_busy("the bare embedder run", cpu)
    return {"model_id": model_id, "sentences": len(texts), "seconds": round(seconds, 3),
            "sentences_per_s": round(rate, 1), "cpu": cpu}  # fmt: skip


def combined_embedder_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs side by side, with their mean rate as the figure the service is compared with."""
    rates = [run["sentences_per_s"] for run in runs]
    return {
        "model_id": runs[0]["model_id"],
        "sentences": runs[0]["sentences"],
        "sentences_per_s": round(statistics.fmean(rates), 1),
        "runs": runs,
    }


# --------------------------------------------------------------------------------------------------
# 2. The service
# --------------------------------------------------------------------------------------------------


class Service:
    """`lore serve` on a fresh embedded data directory; always cleaned up by `close`."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="lore-bench-"))
        self.env = service_env(self.data_dir) | (extra_env or {})
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    def create_tenant(self, name: str) -> str:
        progress(f"lore tenant create {name} (LORE_DATA_DIR={self.data_dir}; initdb + migrations)")
        result = subprocess.run(
            [*lore_command(), "tenant", "create", name],
            env=self.env, cwd=self.data_dir, capture_output=True, text=True, timeout=TENANT_TIMEOUT_S,
            check=False,
        )  # fmt: skip
        key = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        if result.returncode != 0 or not key:
            raise RuntimeError(f"lore tenant create failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return key

    def start(self) -> None:
        progress(f"starting lore serve --port {self.port}")
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*lore_command(), "serve", "--port", str(self.port)],
                env=self.env, cwd=self.data_dir, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = started + READY_TIMEOUT_S
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"lore serve exited with {self.process.returncode}:\n{_tail(self.log_path)}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/ready").status_code == 200:
                        self.startup_s = time.monotonic() - started
                        progress(f"service ready after {self.startup_s:.1f} s (pid {self.process.pid})")
                        return
                time.sleep(0.25)
        raise RuntimeError(f"service not ready within {READY_TIMEOUT_S:.0f} s:\n{_tail(self.log_path)}")

    def server_pids(self) -> set[int]:
        """The embedded PostgreSQL (postmaster and backends) and Valkey of this data directory."""
        pids: set[int] = set()
        for pid_file in (
            self.data_dir / "postgres" / "postmaster.pid",
            self.data_dir / "valkey" / "valkey.pid",
        ):
            with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
                pid = int(pid_file.read_text().split()[0])
                pids.add(pid)
                pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        return pids

    def rss(self) -> dict[str, Any]:
        """RSS of the service process plus any children that are not PostgreSQL or Valkey."""
        assert self.process is not None
        proc = psutil.Process(self.process.pid)
        rss = proc.memory_info().rss
        counted = [proc.name()]
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                name = child.name()
                if any(part in name for part in ("postgres", "valkey", "pg_ctl")):
                    continue
                rss += child.memory_info().rss
                counted.append(name)
        peak_kb = None
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = int(line.split()[1])
        return {
            "rss_mb": round(rss / 2**20, 1),
            "peak_rss_mb": None if peak_kb is None else round(peak_kb / 1024, 1),
            "processes": counted,
        }

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            progress("stopping the service (SIGTERM)")
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                progress(f"service did not stop within {STOP_TIMEOUT_S:.0f} s; killing it")
                self.process.kill()
                self.process.wait(10)
        # Stops embedded servers that a killed service (or a failed start) left running, then deletes.
        try:
            from app.embedded import remove_data_dir

            remove_data_dir(self.data_dir)
        except Exception as error:  # cleanup must not hide the benchmark's own error
            progress(f"cleanup of embedded servers failed: {error!r}")
        shutil.rmtree(self.data_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# 3 + 4. HTTP ingest
# --------------------------------------------------------------------------------------------------


def _post(client: httpx.Client, path: str, body: bytes, expected: int) -> float:
    started = time.perf_counter()
    response = client.post(path, content=body)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"POST {path} -> {response.status_code}: {response.text[:500]}")
    results = response.json()["events"]
    if len(results) != expected or any(r["duplicate"] for r in results):
        raise RuntimeError(f"POST {path}: unexpected results {results[:3]}...")
    return elapsed


def create_chronicle(client: httpx.Client, title: str) -> str:
    response = client.post("/api/chronicles", json={"title": title})
    response.raise_for_status()
    return str(response.json()["id"])


def bench_batched(
    client: httpx.Client, meter: CpuMeter, events: list[dict[str, Any]], warmup: list[dict[str, Any]]
) -> dict[str, Any]:
    warm_id = create_chronicle(client, "bench warm-up")
    _post(client, f"/api/chronicles/{warm_id}/events", json.dumps({"events": warmup}).encode(), len(warmup))
    chronicle_id = create_chronicle(client, "bench batched ingest")
    path = f"/api/chronicles/{chronicle_id}/events"
    bodies = [json.dumps({"events": list(batch)}).encode() for batch in chunks(events, BATCH_SIZE)]
    progress(f"batched ingest: {len(events)} events in {len(bodies)} POSTs of {BATCH_SIZE}")
    latencies = []
    meter.start()
    started = time.perf_counter()
    for number, body in enumerate(bodies, start=1):
        latencies.append(_post(client, path, body, min(BATCH_SIZE, len(events) - (number - 1) * BATCH_SIZE)))
        if number % 10 == 0 or number == len(bodies):
            done = min(number * BATCH_SIZE, len(events))
            progress(f"  {done}/{len(events)} events, {done / (time.perf_counter() - started):.1f} events/s")
    seconds = time.perf_counter() - started
    cpu = meter.stop()
    warn_if_busy("the batched ingest run", cpu)
    stored = client.get(f"/api/chronicles/{chronicle_id}").json()["event_count"]
    if stored != len(events):
        raise RuntimeError(f"chronicle holds {stored} events, expected {len(events)}")
    return {
        "events": len(events),
        "requests": len(bodies),
        "seconds": round(seconds, 3),
        "events_per_s": round(len(events) / seconds, 1),
        "request_latency_ms": percentiles_ms(latencies),
        "cpu": cpu,
    }


def bench_single(client: httpx.Client, meter: CpuMeter, events: list[dict[str, Any]]) -> dict[str, Any]:
    chronicle_id = create_chronicle(client, "bench single-event latency")
    path = f"/api/chronicles/{chronicle_id}/events"
    bodies = [json.dumps({"events": [event]}).encode() for event in events]
    progress(f"single-event latency: {SINGLE_WARMUP} warm-up + {len(bodies) - SINGLE_WARMUP} timed POSTs")
    for body in bodies[:SINGLE_WARMUP]:
        _post(client, path, body, 1)
    meter.start()
    samples = [_post(client, path, body, 1) for body in bodies[SINGLE_WARMUP:]]
    cpu = meter.stop()
    warn_if_busy("the single-event run", cpu)
    result: dict[str, Any] = {"requests": len(samples), "warmup_requests": SINGLE_WARMUP}
    result.update(percentiles_ms(samples))
    result["cpu"] = cpu
    progress(f"  p50 {result['p50']} ms, p95 {result['p95']} ms, p99 {result['p99']} ms")
    return result


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def goal(value: float, target: float, higher_is_better: bool, unit: str) -> dict[str, Any]:
    passed = value >= target if higher_is_better else value < target
    return {
        "value": value,
        "target": f"{'>=' if higher_is_better else '<'} {target:g}{unit}",
        "passed": passed,
    }


def run(n_events: int, projector: str = "in-process") -> dict[str, Any]:
    generator = StoryGenerator(SEED)
    events = generator.events(n_events)
    warmup = generator.events(BATCH_SIZE, start=n_events)
    singles = generator.events(SINGLE_WARMUP + SINGLE_REQUESTS, start=n_events + BATCH_SIZE)
    words = [len(e["summary"].split()) for e in events]
    mean_words = statistics.fmean(words)
    progress(
        f"generated {n_events} events (words per summary: {min(words)}-{max(words)}, mean {mean_words:.1f})"
    )

    texts, warmup_texts = [e["summary"] for e in events], [e["summary"] for e in warmup]
    # The bare embedder is measured before and after the service, and the ratio taken against the
    # mean: on this machine one run of it varies by up to 10 % from the next.
    embedder_before = bench_embedder(texts, warmup_texts)

    # "off": the ingest path alone (the service runs no projector), what the ingest goals are
    # about; "in-process": the default deployment, whose projector shares the two cores.
    service = Service({"LORE_RUN_PROJECTOR": "0"} if projector == "off" else None)
    try:
        key = service.create_tenant("bench")
        service.start()
        rss_loaded = service.rss()
        progress(f"service RSS after model load: {rss_loaded['rss_mb']} MB")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        meter = CpuMeter(own_process_tree(service.server_pids))
        with httpx.Client(base_url=service.base_url, headers=headers, timeout=120.0) as client:
            batched = bench_batched(client, meter, events, warmup)
            rss_after_batched = service.rss()
            single = bench_single(client, meter, singles)
        rss_after = service.rss()
        progress(f"service RSS after ingest: {rss_after['rss_mb']} MB (peak {rss_after['peak_rss_mb']} MB)")
        startup_s = service.startup_s
    finally:
        service.close()
    embedder = combined_embedder_runs([embedder_before, bench_embedder(texts, warmup_texts)])
    batched["ratio_to_embedder"] = round(batched["events_per_s"] / embedder["sentences_per_s"], 3)
    progress(f"batched ingest: {batched['events_per_s']} events/s, "
             f"{batched['ratio_to_embedder']:.2f} x bare embedder")  # fmt: skip

    rss_max = max(rss_loaded["rss_mb"], rss_after_batched["rss_mb"], rss_after["rss_mb"])
    goals = {
        "batched_ingest_ratio": goal(batched["ratio_to_embedder"], GOAL_INGEST_RATIO, True, ""),
        "single_event_p95_ms": goal(single["p95"], GOAL_SINGLE_P95_MS, False, " ms"),
        "service_rss_mb": goal(rss_max, GOAL_RSS_MB, False, " MB"),
    }
    return {
        "benchmark": "ingest",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine_info(),
        "parameters": {
            "events": n_events,
            "batch_size": BATCH_SIZE,
            "single_requests": SINGLE_REQUESTS,
            "single_warmup_requests": SINGLE_WARMUP,
            "seed": SEED,
            "summary_words": {
                "min": min(words),
                "mean": round(statistics.fmean(words), 1),
                "max": max(words),
            },
            "effects_per_event": 2,
            "external_ids": True,
            "deployment": "embedded default: lore serve, embedded PostgreSQL + Valkey, local MiniLM int8",
            "projector": projector,
        },
        "results": {
            "bare_embedder": embedder,
            "service_startup_s": None if startup_s is None else round(startup_s, 2),
            "batched_ingest": batched,
            "single_event_latency_ms": single,
            "service_rss": {
                "after_model_load_mb": rss_loaded["rss_mb"],
                "after_batched_ingest_mb": rss_after_batched["rss_mb"],
                "after_ingest_mb": rss_after["rss_mb"],
                "peak_mb": rss_after["peak_rss_mb"],
                "processes_counted": rss_after["processes"],
            },
        },
        "goals": goals,
        "all_goals_passed": all(g["passed"] for g in goals.values()),
    }


def summary_table(report: dict[str, Any]) -> str:
    r = report["results"]
    g = report["goals"]

    def mark(name: str) -> str:
        return "PASS" if g[name]["passed"] else "FAIL"

    rows = [
        ("bare embedder (mean of 2 runs)", f"{r['bare_embedder']['sentences_per_s']:.1f} sentences/s", "", ""),
        ("batched ingest (100/POST)", f"{r['batched_ingest']['events_per_s']:.1f} events/s", "", ""),
        ("  ratio to bare embedder", f"{r['batched_ingest']['ratio_to_embedder']:.2f}",
         g["batched_ingest_ratio"]["target"], mark("batched_ingest_ratio")),
        ("single-event p50", f"{r['single_event_latency_ms']['p50']:.1f} ms", "", ""),
        ("single-event p95", f"{r['single_event_latency_ms']['p95']:.1f} ms",
         g["single_event_p95_ms"]["target"], mark("single_event_p95_ms")),
        ("single-event p99", f"{r['single_event_latency_ms']['p99']:.1f} ms", "", ""),
        ("RSS after model load", f"{r['service_rss']['after_model_load_mb']:.0f} MB", "", ""),
        ("RSS after ingest", f"{r['service_rss']['after_ingest_mb']:.0f} MB",
         g["service_rss_mb"]["target"], mark("service_rss_mb")),
        ("RSS peak (VmHWM)", f"{r['service_rss']['peak_mb']} MB", "", ""),
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{'metric':<{widths[0]}}  {'value':>{widths[1]}}  {'goal':<{widths[2]}}  result"]
    lines += [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows]
    m = report["machine"]
    lines.append(f"({report['parameters']['events']} events; projector {report['parameters']['projector']}; "
                 f"{m['cpu_count']} CPUs, {m['processor']}; "
                 f"Python {m['python']}; commit {(report['git_commit'] or 'unknown')[:12]})")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.perf.bench_ingest", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=3_000, help="events for the batched run (default 3000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument(
        "--projector", choices=("in-process", "off"), default="in-process",
        help="run the ECS projector inside the service (the default deployment) or not at all "
        "(the ingest path alone)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be >= 1")
    report = run(args.events, args.projector)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(summary_table(report))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
