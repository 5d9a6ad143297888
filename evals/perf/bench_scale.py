"""Scale benchmark: a chronicle of 1,000,000 events on the embedded default.

    .venv/bin/python -m evals.perf.bench_scale [--events N] [--queries Q] [--requests R] [--out PATH]

Everything runs in a fresh embedded PostgreSQL (and, for the context phase, a `lore serve`
subprocess with its own Valkey) under a temporary directory, which is deleted at the end.

1. Generate N events (``storygen.StoryGenerator``) plus a second chronicle of N/10 events, so that
   the chronicle filter of a search matters, with fast deterministic embeddings: a hashed
   bag-of-words projection (every word maps to a fixed pseudo-random Gaussian vector seeded by a
   hash of the word; an event's vector is the normalised sum over its summary's words plus
   Gaussian noise of about a third of the signal). Texts that share words are near, as with a real
   model, and no two events coincide. Written as JSON Lines with an ``embedding`` per line.
2. Vector encoding for COPY: pgvector's binary format (what the bulk path sends) vs its text form.
3. Bulk load with `lore ingest --bulk` (COPY, 10,000 events per transaction). On a small probe
   (``--probe-events``) the load is timed with the HNSW index present and without it; the big
   load runs without it (the documented fast path) and the index is built afterwards.
4. HNSW build time and size, ``vector(384)`` (the project's index) and ``halfvec(384)`` (an
   expression index on ``embedding::halfvec(384)`` in this database only).
5. Filtered vector search recall@10 against exact search (the same query with index scans off:
   a sequential or bitmap scan with the same filter), for queries at the head of the big
   chronicle and as of 50%, 10% and 1% of it, at several ef_search / iterative-scan settings;
   also how often k rows came back, and the latency.
6. Projector catch-up over the big chronicle (``Projector.project_batch`` until done or timed out).
7. `lore ecs rebuild` of the big chronicle (wall time and peak memory of the process).
8. Context requests over HTTP to `lore serve` (query embedded by the real local model): p50/p95.

Every phase is bounded (``--phase-timeout``); a phase that runs out of time records what it got.
The 1-minute load average is sampled through the run and recorded per phase, since the machine
may be shared. Results go to evals/perf/results/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import numpy.typing as npt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import create_engine
from app.embedded import EmbeddedPostgres, EmbeddedValkey
from app.settings import to_asyncpg_url
from ecs.projector import Projector
from ecs.repository import ensure_checkpoints
from evals.perf.storygen import NAMES, StoryGenerator
from rag.retrieval import EXACT_SCAN_EVENTS, RetrievalQuery, vector_search
from rag.store import vector_binary

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "evals" / "perf" / "results" / "scale.json"
DIMENSION = 384
HNSW_INDEX = "chronicle_events_embedding_hnsw"
HALFVEC_INDEX = "bench_embedding_halfvec_hnsw"
SLOWEST_KEPT = 8
QUESTIONS = ("Where is {a} now?", "What happened to {a}?", "Who does {a} trust?", "What is {a} carrying?",
             "What did {a} and {b} do together?")  # fmt: skip


def progress(message: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(pick(0.5), 2), "p95": round(pick(0.95), 2), "p99": round(pick(0.99), 2),
            "mean": round(statistics.fmean(ordered), 2), "n": len(ordered)}  # fmt: skip


class LoadSampler:
    """The machine's 1-minute load average every few seconds, summarised per phase."""

    def __init__(self, every: float = 5.0) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), os.getloadavg()[0]))
            self._stop.wait(every)

    def between(self, start: float, end: float) -> dict[str, float]:
        values = [v for t, v in self.samples if start <= t <= end] or [os.getloadavg()[0]]
        return {"min": round(min(values), 2), "mean": round(statistics.fmean(values), 2),
                "max": round(max(values), 2)}  # fmt: skip

    def close(self) -> None:
        self._stop.set()


SAMPLER: LoadSampler | None = None
PHASES: dict[str, dict[str, Any]] = {}
ON_PHASE: Callable[[], object] | None = None


@contextlib.contextmanager
def phase(name: str) -> Iterator[dict[str, Any]]:
    """Time a phase and record the load average during it."""
    progress(f"phase {name}")
    record: dict[str, Any] = {}
    started = time.monotonic()
    try:
        yield record
    finally:
        ended = time.monotonic()
        record["seconds"] = round(ended - started, 2)
        if SAMPLER is not None:
            record["load_average_1m"] = SAMPLER.between(started, ended)
        PHASES[name] = record
        progress(f"phase {name} done in {record['seconds']} s")
        if ON_PHASE is not None:
            ON_PHASE()


# --------------------------------------------------------------------------------------------------
# Data: events and their fast embeddings
# --------------------------------------------------------------------------------------------------


class HashedBagOfWords:
    """Deterministic text vectors: the sum of fixed per-word Gaussian vectors, plus per-event noise."""

    def __init__(self, dimension: int = DIMENSION, noise: float = 0.35) -> None:
        self.dimension = dimension
        self.noise = noise
        self._words: dict[str, npt.NDArray[np.float32]] = {}

    def _word(self, word: str) -> npt.NDArray[np.float32]:
        vector = self._words.get(word)
        if vector is None:
            rng = np.random.default_rng(zlib.crc32(word.encode()))
            vector = rng.standard_normal(self.dimension).astype(np.float32)
            vector /= np.linalg.norm(vector)
            self._words[word] = vector
        return vector

    def embed(self, texts: Sequence[str], seed: int) -> npt.NDArray[np.float32]:
        """One unit vector per text; the noise is drawn from ``seed`` (one seed per chunk)."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, text_ in enumerate(texts):
            words = [w.strip(".,;:!?'\"").lower() for w in text_.split()]
            out[i] = np.sum([self._word(w) for w in words if w], axis=0)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        rng = np.random.default_rng(seed)
        out += rng.standard_normal(out.shape).astype(np.float32) * (self.noise / np.sqrt(self.dimension))
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


def write_events(path: Path, n: int, seed: int, prefix: str, embedder: HashedBagOfWords) -> None:
    """N generated events with embeddings as JSON Lines, written 10,000 at a time."""
    generator = StoryGenerator(seed, prefix=prefix)
    encoder = msgspec.json.Encoder()
    with path.open("wb") as out:
        for start in range(0, n, 10_000):
            events = generator.events(min(10_000, n - start), start)
            # Six decimals keep the file small; a rounding error of 5e-7 changes no neighbour.
            vectors = embedder.embed([e["summary"] for e in events], seed * 1_000_003 + start)
            vectors = np.round(vectors.astype(np.float64), 6)  # in float64, so that the text is short
            for event, vector in zip(events, vectors.tolist(), strict=True):
                event["embedding"] = vector
                out.write(encoder.encode(event) + b"\n")
            if start % 100_000 == 0:
                progress(f"  {path.name}: {start + len(events):,}/{n:,} events")


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def service_env(root: Path, database_url: str, port: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "LORE_"))}
    env |= {"DATABASE_URL": database_url, "LORE_DATA_DIR": str(root / "service"), "LORE_LOG_LEVEL": "WARNING",
            "LORE_RUN_PROJECTOR": "false"}  # fmt: skip
    if port is not None:
        env["LORE_PORT"] = str(port)
    return env


def lore(args: list[str], env: dict[str, str], timeout: float) -> tuple[str, float]:
    """Run a `lore` command; its standard output and wall time. Its progress goes to our stderr."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, stdout=subprocess.PIPE,
                            text=True, timeout=timeout, check=True, cwd=REPO)  # fmt: skip
    return result.stdout.strip(), time.monotonic() - started


def lore_peak_rss(args: list[str], env: dict[str, str], timeout: float) -> tuple[str, float, float]:
    """Like `lore`, plus the command's own peak RSS in MB (``wait4``'s usage of that one child;
    ``RUSAGE_CHILDREN`` would be the largest of every command run so far, the bulk loads included)."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=env, stdout=subprocess.PIPE,
                               text=True, cwd=REPO)  # fmt: skip
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        assert process.stdout is not None
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, args, output)
    return output.strip(), time.monotonic() - started, round(usage.ru_maxrss / 1024, 1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------


async def vector_encoding(engine: AsyncEngine, vectors: npt.NDArray[np.float32]) -> dict[str, Any]:
    """COPY the same vectors into a scratch table in pgvector's binary format and in its text form."""
    result: dict[str, Any] = {"vectors": len(vectors)}
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TEMP TABLE copy_probe (embedding vector({DIMENSION}))"))
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.set_type_codec("vector", schema="public", encoder=bytes, decoder=bytes, format="binary")
        # Each way: encoding on the client, then the COPY itself (sending and parsing on the server).
        started = time.perf_counter()
        records = [(v,) for v in vector_binary(vectors)]
        encoded = time.perf_counter()
        await driver.copy_records_to_table("copy_probe", records=records)
        result["binary_encode_seconds"] = round(encoded - started, 3)
        result["binary_seconds"] = round(time.perf_counter() - started, 3)
        await driver.reset_type_codec("vector", schema="public")
        started = time.perf_counter()
        body = "".join("[" + ",".join(map(str, row)) + "]\n" for row in vectors.tolist()).encode()
        encoded = time.perf_counter()
        await driver.copy_to_table("copy_probe", source=io.BytesIO(body), format="text")
        result["text_encode_seconds"] = round(encoded - started, 3)
        result["text_seconds"] = round(time.perf_counter() - started, 3)
        result["rows"] = await conn.scalar(text("SELECT count(*) FROM copy_probe"))
        await conn.execute(text("DROP TABLE copy_probe"))
    result["binary_vectors_per_s"] = round(len(vectors) / result["binary_seconds"])
    result["text_vectors_per_s"] = round(len(vectors) / result["text_seconds"])
    return result


async def build_index(
    engine: AsyncEngine, statement: str, name: str, memory: str, timeout: float
) -> dict[str, Any]:
    async with engine.connect() as conn:
        await conn.execute(text(f"SET maintenance_work_mem = '{memory}'"))
        await conn.execute(text(f"SET statement_timeout = {int(timeout * 1000)}"))
        workers = await conn.scalar(text("SHOW max_parallel_maintenance_workers"))
        started = time.perf_counter()
        await conn.execute(text(statement))
        await conn.commit()
        seconds = time.perf_counter() - started
        size = await conn.scalar(text(f"SELECT pg_relation_size('{name}')"))
    return {"seconds": round(seconds, 1), "size_mb": round(size / 2**20, 1), "maintenance_work_mem": memory,
            "max_parallel_maintenance_workers": int(workers)}  # fmt: skip


def recall_at(ann: list[uuid.UUID], exact: list[uuid.UUID], k: int = 10) -> float:
    return len(set(ann[:k]) & set(exact[:k])) / max(1, min(k, len(exact)))


async def exact_top(engine: AsyncEngine, q: RetrievalQuery, k: int) -> list[uuid.UUID]:
    as_of = "" if q.as_of_sequence is None else "AND sequence <= :as_of"
    async with engine.connect() as conn:
        # With index scans off the planner cannot use HNSW (an ordered index scan): it reads the
        # rows passing the filter (sequential or bitmap scan) and sorts them by exact distance.
        await conn.execute(text("SET LOCAL enable_indexscan = off"))
        rows = await conn.execute(
            text(f"SELECT id FROM chronicle_events WHERE tenant_id = :t AND chronicle_id = :c {as_of} "  # noqa: S608
                 "ORDER BY embedding <=> CAST(:v AS vector) LIMIT :k"),
            {"t": q.tenant_id, "c": q.chronicle_id, "as_of": q.as_of_sequence, "v": str(q.query_vector), "k": k},
        )  # fmt: skip
        return [r.id for r in rows]


async def halfvec_top(
    engine: AsyncEngine, q: RetrievalQuery, k: int, ef_search: int, scan: str, max_scan: int
) -> list[uuid.UUID]:
    as_of = "" if q.as_of_sequence is None else "AND sequence <= :as_of"
    async with engine.connect() as conn:
        await conn.execute(text("SELECT set_config('hnsw.ef_search', :e, true), "
                                "set_config('hnsw.iterative_scan', :s, true), "
                                "set_config('hnsw.max_scan_tuples', :m, true)"),
                           {"e": str(ef_search), "s": scan, "m": str(max_scan)})  # fmt: skip
        rows = await conn.execute(
            text(f"SELECT id FROM chronicle_events WHERE tenant_id = :t AND chronicle_id = :c {as_of} "  # noqa: S608
                 f"ORDER BY embedding::halfvec({DIMENSION}) <=> CAST(:v AS halfvec({DIMENSION})) LIMIT :k"),
            {"t": q.tenant_id, "c": q.chronicle_id, "as_of": q.as_of_sequence, "v": str(q.query_vector), "k": k},
        )  # fmt: skip
        return [r.id for r in rows]


async def plan_of(engine: AsyncEngine, q: RetrievalQuery, index_hint: str) -> str:
    as_of = "" if q.as_of_sequence is None else f"AND sequence <= {int(q.as_of_sequence)}"
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(f"EXPLAIN SELECT id FROM chronicle_events WHERE tenant_id = :t AND chronicle_id = :c {as_of} "  # noqa: S608
                 "ORDER BY embedding <=> CAST(:v AS vector) LIMIT 10"),
            {"t": q.tenant_id, "c": q.chronicle_id, "v": str(q.query_vector)},
        )  # fmt: skip
        plan = "\n".join(r[0] for r in rows)
    return "hnsw" if index_hint in plan else ("seq scan" if "Seq Scan" in plan else "btree/bitmap + sort")


async def recall_phase(
    engine: AsyncEngine,
    queries: list[tuple[str, RetrievalQuery]],
    settings: list[dict[str, Any]],
    deadline: float,
) -> dict[str, Any]:
    exact: list[list[uuid.UUID]] = []
    exact_ms: list[float] = []
    for _, q in queries:
        started = time.perf_counter()
        exact.append(await exact_top(engine, q, 10))
        exact_ms.append((time.perf_counter() - started) * 1000)
    progress(f"  exact search: median {statistics.median(exact_ms):.0f} ms per query")
    buckets = sorted({b for b, _ in queries}, key=[b for b, _ in queries].index)
    plans = {b: await plan_of(engine, next(q for bb, q in queries if bb == b), HNSW_INDEX) for b in buckets}
    results: list[dict[str, Any]] = []
    for setting in settings:
        if time.monotonic() > deadline:
            results.append({**setting, "skipped": "out of time"})
            continue
        per_bucket: dict[str, list[float]] = {b: [] for b in buckets}
        bucket_ms: dict[str, list[float]] = {b: [] for b in buckets}
        full = 0
        latencies: list[float] = []
        for (bucket, q), truth in zip(queries, exact, strict=True):
            started = time.perf_counter()
            if setting["type"] == "vector":
                async with engine.connect() as conn:
                    # The index's own figures, except for the setting "as served", which also
                    # takes the exact path for few events in range (an early as-of).
                    hits = await vector_search(conn, q, setting["k"], setting["ef_search"],
                                               iterative_scan=setting["iterative_scan"],
                                               max_scan_tuples=setting["max_scan_tuples"],
                                               exact_up_to=EXACT_SCAN_EVENTS if setting.get("as_served") else 0)  # fmt: skip
                ids = [h.event_id for h in hits]
            else:
                ids = await halfvec_top(engine, q, setting["k"], setting["ef_search"], setting["iterative_scan"],
                                        setting["max_scan_tuples"])  # fmt: skip
            latencies.append((time.perf_counter() - started) * 1000)
            bucket_ms[bucket].append(latencies[-1])
            full += len(ids) >= min(setting["k"], len(truth))
            per_bucket[bucket].append(recall_at(ids, truth))
        everything = [r for values in per_bucket.values() for r in values]
        entry = {**setting, "recall_at_10": round(statistics.fmean(everything), 4),
                 "recall_by_as_of": {b: round(statistics.fmean(v), 4) for b, v in per_bucket.items()},
                 "min_recall": round(min(everything), 2), "always_k_rows": full == len(queries),
                 "queries_with_k_rows": full, "latency_ms": percentiles(latencies),
                 "p95_ms_by_as_of": {b: percentiles(v).get("p95") for b, v in bucket_ms.items()}}  # fmt: skip
        results.append(entry)
        progress(f"  {setting['label']}: recall@10 {entry['recall_at_10']:.3f} "
                 f"{entry['recall_by_as_of']} k rows {full}/{len(queries)} p95 {entry['latency_ms']['p95']} ms")  # fmt: skip
    return {"queries": len(queries), "exact_ms": percentiles(exact_ms), "plans_without_hints": plans,
            "settings": results}  # fmt: skip


async def projector_phase(
    database_url: str, chronicle_id: uuid.UUID, total: int, timeout: float
) -> dict[str, Any]:
    chronicle_engine = create_engine(database_url, timeout_ms=600_000, pool_size=2)
    ecs_engine = create_engine(database_url, timeout_ms=600_000, pool_size=2)
    projector = Projector(chronicle_engine, ecs_engine)
    try:
        async with chronicle_engine.connect() as conn:
            tenant_id = await conn.scalar(
                text("SELECT tenant_id FROM chronicles WHERE id = :c"), {"c": chronicle_id}
            )
        async with ecs_engine.begin() as conn:
            await ensure_checkpoints(conn, [(chronicle_id, tenant_id)])
        started = time.monotonic()
        deadline = started + timeout
        applied, reported = 0, 0
        # Projector.catch_up() unrolled, so that the phase can stop at its deadline.
        while time.monotonic() < deadline:
            step = await projector.project_batch(chronicle_id, wait_for_lock=True)
            applied += step.applied
            if applied - reported >= 50_000:
                reported = applied
                progress(
                    f"  projected {applied:,}/{total:,} ({applied / (time.monotonic() - started):,.0f}/s)"
                )
            if (step.applied == 0 and not step.isolating) or step.failed:
                break
        seconds = time.monotonic() - started
        async with ecs_engine.connect() as conn:
            position = await conn.scalar(
                text("SELECT last_sequence FROM ecs_checkpoints WHERE chronicle_id = :c"), {"c": chronicle_id}
            )
    finally:
        await chronicle_engine.dispose()
        await ecs_engine.dispose()
    return {"events": applied, "seconds": round(seconds, 1), "events_per_s": round(applied / seconds),
            "checkpoint": position, "complete": position == total}  # fmt: skip


async def context_phase(
    env: dict[str, str], key: str, chronicle: str, requests: int, timeout: float
) -> dict[str, Any]:
    port = int(env["LORE_PORT"])
    log_path = Path(env["LORE_DATA_DIR"]) / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        service = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=REPO)  # fmt: skip
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    modes: dict[str, int] = {}
    errors = 0
    # The slowest requests, with what they asked and what the service said of them: a tail is
    # only understood request by request.
    slowest: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:  # fmt: skip
            for _ in range(480):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/ready")).status_code == 200:
                        break
                await asyncio.sleep(0.5)
            deadline = time.monotonic() + timeout
            for i in range(requests + 10):  # the first 10 warm up
                if time.monotonic() > deadline:
                    break
                a, b = NAMES[i % len(NAMES)], NAMES[(i * 7 + 3) % len(NAMES)]
                query = QUESTIONS[i % len(QUESTIONS)].format(a=a, b=b)
                started = time.perf_counter()
                response = await client.post(f"/api/chronicles/{chronicle}/context", json={"query": query})
                elapsed = (time.perf_counter() - started) * 1000
                if i < 10:
                    continue
                latencies.append(elapsed)
                detail: dict[str, Any] = {
                    "ms": round(elapsed, 1),
                    "query": query,
                    "status": response.status_code,
                }
                slowest = sorted([*slowest, detail], key=lambda d: -d["ms"])[:SLOWEST_KEPT]
                if response.status_code != 200:
                    errors += 1
                    detail["problem"] = response.text[:300]
                    continue
                bundle = response.json()
                detail |= {"mode": bundle["mode"], "degraded_reason": bundle.get("degraded_reason"),
                           "timings_ms": bundle["timings_ms"]}  # fmt: skip
                modes[bundle["mode"]] = modes.get(bundle["mode"], 0) + 1
                for stage, value in bundle["timings_ms"].items():
                    stages.setdefault(stage, []).append(value)
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(60)
        except subprocess.TimeoutExpired:
            service.kill()
        EmbeddedValkey(Path(env["LORE_DATA_DIR"])).stop()
    return {"requests": len(latencies), "errors": errors, "latency_ms": percentiles(latencies), "modes": modes,
            "server_stage_median_ms": {k: round(statistics.median(v), 2) for k, v in sorted(stages.items())},
            "slowest": slowest}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def recall_settings() -> list[dict[str, Any]]:
    settings: list[dict[str, Any]] = []
    for ef in (40, 100, 200, 400):
        for scan in ("off", "relaxed_order"):
            settings.append({"type": "vector", "k": 10, "ef_search": ef, "iterative_scan": scan,
                             "max_scan_tuples": 20_000})  # fmt: skip
    settings.append({"type": "vector", "k": 10, "ef_search": 100, "iterative_scan": "strict_order",
                     "max_scan_tuples": 20_000})  # fmt: skip
    settings.append({"type": "vector", "k": 10, "ef_search": 100, "iterative_scan": "relaxed_order",
                     "max_scan_tuples": 100_000})  # fmt: skip
    # What the default preset sends: 40 candidates (recall of its first 10).
    settings.append({"type": "vector", "k": 40, "ef_search": 100, "iterative_scan": "relaxed_order",
                     "max_scan_tuples": 20_000})  # fmt: skip
    settings.append({"type": "vector", "k": 40, "ef_search": 100, "iterative_scan": "relaxed_order",
                     "max_scan_tuples": 20_000, "as_served": True})  # fmt: skip
    for ef in (40, 100, 200):
        settings.append({"type": "halfvec", "k": 10, "ef_search": ef, "iterative_scan": "relaxed_order",
                         "max_scan_tuples": 20_000})  # fmt: skip
    for s in settings:
        s["label"] = (
            f"{s['type']} k={s['k']} ef={s['ef_search']} {s['iterative_scan']} max_scan={s['max_scan_tuples']}"
            + (" as served (exact for few events in range)" if s.get("as_served") else "")
        )
    return settings


async def run(args: argparse.Namespace, root: Path) -> None:
    n, other = args.events, max(1, args.events // 10)
    bow = HashedBagOfWords()
    main_file, other_file, probe_file = root / "main.jsonl", root / "other.jsonl", root / "probe.jsonl"
    with phase("generate") as record:
        write_events(main_file, n, 1, "scale", bow)
        write_events(other_file, other, 2, "other", bow)
        if args.probe_events:
            write_events(probe_file, args.probe_events, 3, "probe", bow)
        record |= {
            "events": n,
            "other_chronicle_events": other,
            "main_file_mb": round(main_file.stat().st_size / 2**20),
        }

    postgres = EmbeddedPostgres(root / "db")
    database_url = to_asyncpg_url(postgres.acquire())
    engine = create_engine(database_url, timeout_ms=3_600_000, pool_size=2)
    env = service_env(root, database_url)
    try:
        key, _ = lore(["tenant", "create", "scale"], env, 600)  # also migrates the fresh database
        with phase("vector_encoding") as record:
            vectors = bow.embed([f"probe sentence {i}" for i in range(20_000)], 7)
            record |= await vector_encoding(engine, vectors)

        if args.probe_events:
            with phase("load_probe") as record:
                # The same probe file twice into two chronicles: with the HNSW index, then without.
                chronicle, with_index = lore(
                    ["ingest", str(probe_file), "--tenant", "scale", "--bulk"], env, args.phase_timeout
                )
                async with engine.begin() as conn:
                    await conn.execute(text(f"DROP INDEX {HNSW_INDEX}"))
                _, without_index = lore(
                    ["ingest", str(probe_file), "--tenant", "scale", "--bulk"], env, args.phase_timeout
                )
                record |= {"events": args.probe_events,
                           "with_hnsw_events_per_s": round(args.probe_events / with_index),
                           "without_hnsw_events_per_s": round(args.probe_events / without_index),
                           "note": "each includes the command's start-up (about 2-4 s: Python, the model, connecting)",
                           "chronicle": chronicle}  # fmt: skip
        async with engine.begin() as conn:  # the fast path: no index during the load, built after it
            await conn.execute(text(f"DROP INDEX IF EXISTS {HNSW_INDEX}"))

        with phase("load") as record:
            main_chronicle, main_seconds = lore(["ingest", str(main_file), "--tenant", "scale", "--bulk"], env,
                                                args.phase_timeout)  # fmt: skip
            other_chronicle, _ = lore(
                ["ingest", str(other_file), "--tenant", "scale", "--bulk"], env, args.phase_timeout
            )
            async with engine.connect() as conn:
                heap = await conn.scalar(text("SELECT pg_table_size('chronicle_events')"))
                rows = await conn.scalar(text("SELECT count(*) FROM chronicle_events"))
            record |= {"events": n, "seconds_main": round(main_seconds, 1), "events_per_s": round(n / main_seconds),
                       "table_rows": rows, "table_size_mb": round(heap / 2**20),
                       "chronicles": {"main": main_chronicle, "other": other_chronicle}}  # fmt: skip
        main_file.unlink()
        other_file.unlink()

        memory = args.maintenance_work_mem
        with phase("hnsw_vector") as record:
            record |= await build_index(
                engine, f"CREATE INDEX {HNSW_INDEX} ON chronicle_events USING hnsw (embedding vector_cosine_ops)",
                HNSW_INDEX, memory, args.phase_timeout,
            )  # fmt: skip
        if args.halfvec:
            with phase("hnsw_halfvec") as record:
                record |= await build_index(
                    engine, f"CREATE INDEX {HALFVEC_INDEX} ON chronicle_events USING hnsw "
                    f"((embedding::halfvec({DIMENSION})) halfvec_cosine_ops)", HALFVEC_INDEX, memory, args.phase_timeout,
                )  # fmt: skip
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE chronicle_events"))
            tenant_id = await conn.scalar(text("SELECT tenant_id FROM chronicles WHERE id = :c"),
                                          {"c": uuid.UUID(main_chronicle)})  # fmt: skip

        with phase("recall") as record:
            query_texts = [e["summary"] for e in StoryGenerator(99, prefix="q").events(args.queries)]
            query_vectors = bow.embed(query_texts, 99)
            buckets = [("head", None), ("50%", n // 2), ("10%", n // 10), ("1%", max(1, n // 100))]
            queries = [
                (
                    label,
                    RetrievalQuery(
                        tenant_id=tenant_id,
                        chronicle_id=uuid.UUID(main_chronicle),
                        query_vector=query_vectors[i].tolist(),
                        as_of_sequence=as_of,
                    ),
                )  # fmt: skip
                for i in range(args.queries)
                for label, as_of in [buckets[i % len(buckets)]]
            ]
            settings = [s for s in recall_settings() if args.halfvec or s["type"] == "vector"]
            record |= await recall_phase(engine, queries, settings, time.monotonic() + args.phase_timeout)
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP INDEX IF EXISTS {HALFVEC_INDEX}"))  # the project's schema has none

        with phase("projector") as record:
            record |= await projector_phase(database_url, uuid.UUID(main_chronicle), n, args.phase_timeout)

        with phase("ecs_rebuild") as record:
            try:
                output, seconds, peak_rss_mb = lore_peak_rss(["ecs", "rebuild", main_chronicle], env,
                                                             args.phase_timeout)  # fmt: skip
                replay = re.search(r" in ([0-9.]+)s ", output)  # the command's own time, without start-up
                record |= {"seconds": round(seconds, 1), "events_per_s": round(n / seconds), "output": output,
                           "rebuild_seconds": float(replay.group(1)) if replay else None,
                           "peak_rss_mb": peak_rss_mb}  # fmt: skip
            except subprocess.CalledProcessError as error:
                record["failed"] = f"exit status {error.returncode} (killed after {args.phase_timeout} s?)"

        with phase("context") as record:
            serve_env = service_env(root, database_url, free_port())
            record |= await context_phase(serve_env, key, main_chronicle, args.requests, args.phase_timeout)
    finally:
        await engine.dispose()
        postgres.release()
        EmbeddedPostgres(root / "db").stop()


def report(
    args: argparse.Namespace, started: float, load_start: tuple[float, ...], *, complete: bool
) -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                            check=False).stdout.strip()  # fmt: skip
    recall = PHASES.get("recall", {}).get("settings", [])
    production = next((s for s in recall if s.get("k") == 40), {})
    return {
        "benchmark": "scale",
        "complete": complete,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "conditions": {"nice": os.nice(0), "load_average_at_start": [round(x, 2) for x in load_start],
                       "load_average_now": [round(x, 2) for x in os.getloadavg()],
                       "wall_seconds": round(time.monotonic() - started)},
        # Paths relative to the repository: a machine's directories do not belong in the results.
        "parameters": {k: (v.name if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "embeddings": "hashed bag-of-words projection (per-word Gaussian vectors seeded by crc32 of the word, "
                      "summed, plus noise of 0.35 relative norm, normalised); queries embedded alike; the "
                      "context phase embeds its queries with the real local model",
        "phases": PHASES,
        "goals": {
            "recall_at_10 >= 0.95 with k rows, preset default (k=40, ef_search=100, relaxed_order)":
                bool(production) and production.get("recall_at_10", 0) >= 0.95 and production.get("always_k_rows", False),
        },
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    global SAMPLER, ON_PHASE
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the big chronicle")
    parser.add_argument("--probe-events", type=int, default=20_000, help="load with vs without the index")
    parser.add_argument("--queries", type=int, default=80, help="recall queries (a quarter per as-of bucket)")
    parser.add_argument("--requests", type=int, default=100, help="context requests (after 10 warm-up)")
    parser.add_argument("--halfvec", action=argparse.BooleanOptionalAction, default=True,
                        help="also build and measure the halfvec(384) index")  # fmt: skip
    parser.add_argument("--maintenance-work-mem", default="3GB", help="for the HNSW builds")
    parser.add_argument("--phase-timeout", type=float, default=3_600, help="seconds per phase")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--workdir", type=Path, help="temp directory parent (needs ~5 KB per event)")
    args = parser.parse_args(argv)
    SAMPLER = LoadSampler()
    root = Path(tempfile.mkdtemp(prefix="lore-bench-scale-", dir=args.workdir))
    started = time.monotonic()
    load_start = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(complete: bool) -> dict[str, Any]:
        document = report(args, started, load_start, complete=complete)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
        return document

    # Written after every phase too, so that an interrupted run keeps what it measured.
    ON_PHASE = lambda: write(False)  # noqa: E731
    try:
        asyncio.run(run(args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        SAMPLER.close()
    print(json.dumps(write(True), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
