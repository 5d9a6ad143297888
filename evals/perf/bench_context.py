"""Context-bundle latency on the embedded default, over real HTTP.

    .venv/bin/python -m evals.perf.bench_context [--sizes 10000 100000] [--requests 200] [--out PATH]

For each size, one chronicle of generated events (evals.generator) is written straight into the
service's embedded database, each with its summary's embedding by the local model (computed in this
process, about 300 summaries/s on 2 cores: 5 to 6 minutes for 100,000); the query is embedded by the
same model inside the request, as in production. Random unit vectors, used here before, are a worst
case for HNSW that real text never is: measured on 20,000 generated events, the search took 3.2
against 2.4 ms at ef_search 100 and found 0.44 against 0.995 of the exact ten nearest. The
service's own projector builds ECS state, then:

1. one client, sequential: p50/p95/p99 per request (goal p95 < 60 ms at 100,000 events);
2. eight concurrent clients: throughput (goal >= 80 requests/s) and latency;
3. modes in the same run: full, chronicle-only (requested), and breaker-open equivalent (ECS
   enrichment switched off through the admin flag) — goal: chronicle-only p95 <= full p95;
4. server-side stage timings (medians of `timings_ms`);
5. the machine's 1-minute load average before and after each run (it is shared with other work).

Results go to evals/perf/results/context.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
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
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app.database import create_engine
from app.embedded import EmbeddedPostgres, EmbeddedValkey
from app.settings import to_asyncpg_url
from evals.generator import generate_world
from rag.embedding import LocalMiniLMEmbedder
from rag.store import append_events, refresh_statistics

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "evals" / "perf" / "results" / "context.json"
QUESTIONS = ("Where is {a} now?", "What happened to {a}?", "Who does {a} trust?", "What is {a} carrying?",
             "What did {a} and {b} do together?")  # fmt: skip


def progress(message: str) -> None:
    print(f"[bench_context {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(pick(0.5), 2), "p95": round(pick(0.95), 2), "p99": round(pick(0.99), 2),
            "mean": round(statistics.fmean(ordered), 2), "n": len(ordered)}  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def lore(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True,
                            timeout=300, check=True, cwd=REPO)  # fmt: skip
    return result.stdout.strip()


async def write_chronicle(
    database_url: str, base: str, key: str, n: int, embedder: LocalMiniLMEmbedder
) -> str:
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        chronicle = (await client.post("/api/chronicles", json={"title": f"bench-{n}"})).json()
    world = generate_world(n, seed=n, queries_per_kind=0)
    engine = create_engine(database_url, timeout_ms=600_000, pool_size=2)
    started = time.monotonic()
    try:
        async with engine.connect() as conn:
            tenant_id = await conn.scalar(
                text("SELECT tenant_id FROM chronicles WHERE id = :id"),
                {"id": uuid.UUID(chronicle["id"])},
            )
        for start in range(0, n, 1_000):
            batch = world.events[start : start + 1_000]
            vectors = await asyncio.to_thread(embedder.embed, [event.summary for event in batch])
            async with engine.begin() as conn:
                await append_events(conn, tenant_id, uuid.UUID(chronicle["id"]), batch,
                                    dict(enumerate(vectors)))  # fmt: skip
            if start % 10_000 == 0:
                progress(f"  {start + len(batch)}/{n} events embedded and written "
                         f"({time.monotonic() - started:.0f} s)")  # fmt: skip
        async with engine.begin() as conn:  # what `lore ingest` does after a bulk load
            await refresh_statistics(conn)
    finally:
        await engine.dispose()
    names = list(world.characters)[:50]
    return json.dumps({"id": chronicle["id"], "names": names})


async def settle(database_url: str) -> None:
    """VACUUM (ANALYZE) the tables just written, as autovacuum does soon after in a running service.

    A chronicle of 100,000 events is not served minutes after being written in one go: by then
    autovacuum has set hint bits and the visibility map. Measured right after the bulk write,
    every read also paid for that first visit (8 clients at 10,000 events: 59 against 75
    requests/s once settled)."""
    engine = create_engine(database_url, timeout_ms=600_000, pool_size=1)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in ("chronicle_events", "ecs_entities", "ecs_components", "ecs_relationships"):
                await conn.execute(text(f"VACUUM (ANALYZE) {table}"))
            # And write out what the load and the vacuum dirtied now, not during the measurement.
            await conn.execute(text("CHECKPOINT"))
    finally:
        await engine.dispose()


async def wait_projected(client: httpx.AsyncClient, chronicle: str, n: int, timeout: float = 1_800) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status = (await client.get(f"/api/chronicles/{chronicle}/ecs")).json()
        if status["checkpoint_sequence"] >= n:
            return time.monotonic() - started
        await asyncio.sleep(1.0)
    raise RuntimeError(f"projection did not catch up within {timeout} s")


async def run_requests(
    client: httpx.AsyncClient,
    chronicle: str,
    names: list[str],
    count: int,
    concurrency: int,
    body: dict[str, Any],
) -> dict[str, Any]:
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    modes: dict[str, int] = {}
    errors = 0
    queue = list(range(count))

    async def worker() -> None:
        nonlocal errors
        while queue:
            i = queue.pop()
            a, b = names[i % len(names)], names[(i * 7 + 3) % len(names)]
            query = QUESTIONS[i % len(QUESTIONS)].format(a=a, b=b)
            started = time.perf_counter()
            response = await client.post(
                f"/api/chronicles/{chronicle}/context", json={"query": query, **body}
            )
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                errors += 1
                continue
            bundle = response.json()
            modes[bundle["mode"]] = modes.get(bundle["mode"], 0) + 1
            for stage, value in bundle["timings_ms"].items():
                stages.setdefault(stage, []).append(value)

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        # The machine is shared: the 1-minute load average (this run's own processes included)
        # says how much else was competing for its two cores while this was measured.
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "concurrency": concurrency,
        "requests": count,
        "errors": errors,
        "requests_per_s": round(count / wall, 1),
        "latency_ms": percentiles(latencies),
        "server_stage_median_ms": {k: round(statistics.median(v), 2) for k, v in sorted(stages.items())},
        "modes": modes,
    }


async def bench(sizes: list[int], requests: int, root: Path) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "LORE_"))}
    env |= {"LORE_DATA_DIR": str(root), "LORE_PORT": str(port), "LORE_LOG_LEVEL": "WARNING"}
    key = lore(["tenant", "create", "bench"], env)
    admin = lore(["tenant", "create", "bench-admin", "--admin"], env)
    log = (root / "serve.log").open("w")
    service = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, cwd=REPO)  # fmt: skip
    postgres = EmbeddedPostgres(root)
    database_url = to_asyncpg_url(postgres.acquire())
    results: dict[str, Any] = {}
    # The stored events' embeddings, by the model the service embeds questions with.
    embedder = LocalMiniLMEmbedder()
    try:
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            for _ in range(240):
                try:
                    if (await client.get("/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
            for n in sizes:
                progress(f"{n} events: writing")
                info = json.loads(await write_chronicle(database_url, base, key, n, embedder))
                progress(f"{n} events: waiting for the projector")
                projected_in = await wait_projected(client, info["id"], n)
                await settle(database_url)
                names = info["names"]
                progress(f"{n} events: warm-up")
                await run_requests(client, info["id"], names, 20, 1, {})
                entry: dict[str, Any] = {"projection_seconds": round(projected_in, 1)}
                progress(f"{n} events: one client, full mode")
                entry["full_1_client"] = await run_requests(client, info["id"], names, requests, 1, {})
                progress(f"{n} events: eight clients, full mode")
                # Five times as many requests as one client sends: a run of several seconds, so that one
                # stall (a checkpoint, an autovacuum) does not decide the figure.
                entry["full_8_clients"] = await run_requests(client, info["id"], names, requests * 5, 8, {})
                progress(f"{n} events: one client, chronicle-only")
                entry["chronicle_only_1_client"] = await run_requests(
                    client, info["id"], names, requests, 1, {"mode": "chronicle_only"}
                )
                progress(f"{n} events: one client, ECS switched off (as with the breaker open)")
                admin_headers = {"Authorization": f"Bearer {admin}"}
                await client.put("/api/admin/flags", json={"ecs_enrichment": False}, headers=admin_headers)
                await asyncio.sleep(1.5)  # the flag is cached for a second
                entry["ecs_off_1_client"] = await run_requests(client, info["id"], names, requests, 1, {})
                await client.put("/api/admin/flags", json={"ecs_enrichment": True}, headers=admin_headers)
                results[str(n)] = entry
    finally:
        embedder.close()
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(60)
        except subprocess.TimeoutExpired:
            service.kill()
        postgres.release()
        EmbeddedPostgres(root).stop()
        EmbeddedValkey(root).stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="lore-bench-ctx-"))
    try:
        results = asyncio.run(bench(args.sizes, args.requests, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    largest = results[str(max(args.sizes))]
    report = {
        "benchmark": "context",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "parameters": {"sizes": args.sizes, "requests": args.requests,
                       "stored_vectors": "the local model's embeddings of the summaries; query embedded by the same model"},
        "results": results,
        "goals": {
            "p95_1_client_ms < 60 at the largest size": largest["full_1_client"]["latency_ms"]["p95"] < 60,
            "requests_per_s_8_clients >= 80": largest["full_8_clients"]["requests_per_s"] >= 80,
            "chronicle_only_p95 <= full_p95": largest["chronicle_only_1_client"]["latency_ms"]["p95"]
            <= largest["full_1_client"]["latency_ms"]["p95"],
        },
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
