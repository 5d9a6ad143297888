"""ECS benchmark on embedded PostgreSQL + Valkey (started in a temporary directory).

    .venv/bin/python -m evals.perf.bench_ecs [--events N] [--out PATH]

1. Projector throughput: a generated chronicle of N events (default 100,000) with mixed effects is
   written to the event log (no embeddings: the projector never reads them), then one worker catches
   up from sequence 0. Goal: at least 3,000 events/s.
2. Scaling: the state is reset and two worker *processes* catch up two chronicles at once; the
   aggregate rate is compared with one worker.
3. Entity reads: p50/p95 of a full entity view (own components, location, inventory, relationships),
   uncached (PostgreSQL only) and through the Redis read-through cache.
4. Cache hit ratio under a Zipf-distributed read load over all entities (goal at least 95%).
5. Relationship graph of a 1,000-entity chronicle (goal p95 under 10 ms): the API's default page
   (200 edges with their nodes, what `GET .../relationships` returns), the ego graph of the most
   connected entity (`?entity=`), and for reference a 500-edge page.

The event log is vacuumed and analysed after loading, before anything is timed: autovacuum would
otherwise run on the freshly written 200,000 rows during the first measurement.

Results go to evals/perf/results/ecs.json; a summary is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import create_tenant
from app.database import create_engine, migrate
from app.embedded import EmbeddedPostgres, EmbeddedValkey
from app.settings import to_asyncpg_url
from ecs.cache import EntityCache
from ecs.projector import Projector
from ecs.queries import GraphFilters, complete_view, get_entity_core, relationship_graph
from ecs.reducer import GENESIS_HASH
from ecs.repository import delete_chronicle_state
from ecs.schema import ecs_checkpoints, ecs_entities, ecs_outbox
from evals.generator import generate_world
from rag.store import append_events, create_chronicle

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "evals" / "perf" / "results" / "ecs.json"
GOAL_PROJECTOR_EPS = 3_000.0
GOAL_HIT_RATIO = 0.95
GOAL_GRAPH_P95_MS = 10.0


def progress(message: str) -> None:
    print(f"[bench_ecs {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"p50": round(pick(0.50), 3), "p95": round(pick(0.95), 3), "p99": round(pick(0.99), 3),
            "mean": round(statistics.fmean(ordered) * 1000, 3), "n": len(ordered)}  # fmt: skip


async def load_chronicle(engine: AsyncEngine, tenant_id: uuid.UUID, n_events: int, seed: int) -> uuid.UUID:
    world = generate_world(n_events, seed=seed, queries_per_kind=0)
    async with engine.begin() as conn:
        chronicle = await create_chronicle(
            conn, tenant_id, title=f"bench-{seed}", description=None, metadata={}, embedding_model="none"
        )
    for start in range(0, len(world.events), 1_000):
        batch = world.events[start : start + 1_000]
        async with engine.begin() as conn:
            await append_events(conn, tenant_id, chronicle.id, batch, dict.fromkeys(range(len(batch))))
    return chronicle.id


async def reset_projection(engine: AsyncEngine, chronicle_id: uuid.UUID) -> None:
    async with engine.begin() as conn:
        await delete_chronicle_state(conn, chronicle_id)
        await conn.execute(delete(ecs_outbox).where(ecs_outbox.c.chronicle_id == chronicle_id))
        await conn.execute(
            update(ecs_checkpoints)
            .where(ecs_checkpoints.c.chronicle_id == chronicle_id)
            .values(last_sequence=0, state_hash=GENESIS_HASH, snapshot=None, attempts=0)
        )


def project_in_subprocesses(database_url: str, chronicle_ids: list[uuid.UUID]) -> dict[str, float]:
    """Worker processes that start together (after their imports) and report wall-clock spans."""
    start_at = time.time() + 8.0  # time enough for every process to import and connect
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "evals.perf.bench_ecs",
                "--worker",
                str(c),
                "--database-url",
                database_url,
                "--start-at",
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )  # fmt: skip
        for c in chronicle_ids
    ]
    reports = [json.loads(p.communicate(timeout=1_800)[0]) for p in processes]
    span = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    applied = sum(r["applied"] for r in reports)
    return {"applied": applied, "seconds": span, "events_per_s": applied / span}


async def worker_main(database_url: str, chronicle_id: str, start_at: float) -> None:
    engine = create_engine(database_url, timeout_ms=60_000, pool_size=2)
    projector = Projector(engine, engine)
    async with engine.connect() as conn:  # connect before the clock starts
        await conn.exec_driver_sql("SELECT 1")
    await asyncio.sleep(max(0.0, start_at - time.time()))
    started = time.time()
    applied = await projector.catch_up(uuid.UUID(chronicle_id))
    print(json.dumps({"applied": applied, "started": started, "ended": time.time()}))
    await engine.dispose()


async def bench(n_events: int, root: Path) -> dict[str, Any]:
    postgres, valkey = EmbeddedPostgres(root), EmbeddedValkey(root)
    database_url = to_asyncpg_url(postgres.acquire())
    redis_url = valkey.acquire()
    engine = create_engine(database_url, timeout_ms=120_000, pool_size=4)
    results: dict[str, Any] = {}
    try:
        await migrate(engine, 384, branch="chronicle")
        await migrate(engine, 384, branch="ecs")
        async with engine.begin() as conn:
            tenant_id, _ = await create_tenant(conn, "bench")
        progress(f"generating and writing 2 chronicles of {n_events} events")
        started = time.perf_counter()
        first = await load_chronicle(engine, tenant_id, n_events, seed=1)
        second = await load_chronicle(engine, tenant_id, n_events, seed=2)
        results["load_seconds"] = round(time.perf_counter() - started, 1)
        async with engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql("VACUUM ANALYZE chronicle_events")

        progress("projector: one worker, in process")
        projector = Projector(engine, engine)
        started = time.perf_counter()
        applied = await projector.catch_up(first)
        seconds = time.perf_counter() - started
        results["projector_one_worker"] = {"events": applied, "seconds": round(seconds, 2),
                                           "events_per_s": round(applied / seconds, 1)}  # fmt: skip

        progress("projector: one worker process, then two worker processes on two chronicles")
        await reset_projection(engine, first)
        solo_rate = project_in_subprocesses(database_url, [first])["events_per_s"]
        await reset_projection(engine, first)
        pair_rate = project_in_subprocesses(database_url, [first, second])["events_per_s"]
        results["projector_scaling"] = {
            "one_process_events_per_s": round(solo_rate, 1),
            "two_processes_aggregate_events_per_s": round(pair_rate, 1),
            "speedup": round(pair_rate / solo_rate, 2),
        }

        async with engine.connect() as conn:
            rows = (await conn.execute(
                ecs_entities.select().with_only_columns(ecs_entities.c.id, ecs_entities.c.kind)
                .where(ecs_entities.c.chronicle_id == first).order_by(ecs_entities.c.created_sequence)
            )).all()  # fmt: skip
        entity_ids = [r.id for r in rows]
        results["entities"] = len(entity_ids)
        rng = np.random.default_rng(7)

        progress("entity reads: uncached")
        uncached: list[float] = []
        async with engine.connect() as conn:
            for entity_id in rng.choice(entity_ids, 2_000):
                t = time.perf_counter()
                core = await get_entity_core(conn, tenant_id, entity_id)
                assert core is not None
                await complete_view(conn, core)
                uncached.append(time.perf_counter() - t)
        results["entity_read_uncached_ms"] = percentiles(uncached)

        progress("entity reads: through the cache, Zipf-distributed")
        cache = EntityCache.from_url(redis_url, engine)
        # Zipf over entity popularity: a few protagonists are read far more often than the rest.
        # The first 10,000 reads warm the cache (every first read of an entity is a miss); the
        # hit ratio is reported for them and, separately, for the 20,000 steady-state reads after.
        ranks = rng.zipf(1.2, 30_000)
        picks = [entity_ids[(r - 1) % len(entity_ids)] for r in ranks]
        cached: list[float] = []
        warm_hits = warm_misses = 0
        async with engine.connect() as conn:
            for index, entity_id in enumerate(picks):
                if index == 10_000:
                    warm_hits, warm_misses = cache.hits, cache.misses
                t = time.perf_counter()
                core = await cache.get(tenant_id, entity_id)
                assert core is not None
                await complete_view(conn, core)
                cached.append(time.perf_counter() - t)
        steady_hits, steady_misses = cache.hits - warm_hits, cache.misses - warm_misses
        results["entity_read_cached_ms"] = percentiles(cached[10_000:])
        results["cache"] = {
            "warm_up_reads": 10_000, "warm_up_hit_ratio": round(warm_hits / max(1, warm_hits + warm_misses), 4),
            "reads": 20_000, "hits": steady_hits, "misses": steady_misses,
            "hit_ratio": round(steady_hits / max(1, steady_hits + steady_misses), 4),
            "distinct_entities_read": len(set(picks)),
        }  # fmt: skip
        own_only: list[float] = []
        for entity_id in picks[:5_000]:
            t = time.perf_counter()
            await cache.get(tenant_id, entity_id)
            own_only.append(time.perf_counter() - t)
        results["entity_core_cached_ms"] = percentiles(own_only)
        await cache.aclose()

        progress("relationship graph")
        async with engine.connect() as conn:
            busiest = (
                await conn.execute(
                    text(
                        "SELECT id FROM (SELECT from_id AS id FROM ecs_relationships WHERE chronicle_id = :c"
                        " UNION ALL SELECT to_id FROM ecs_relationships WHERE chronicle_id = :c) ends"
                        " GROUP BY id ORDER BY count(*) DESC LIMIT 1"
                    ),
                    {"c": first},
                )
            ).scalar_one()
            for name, filters, limit in (
                ("relationship_graph", GraphFilters(), 200),
                ("relationship_graph_ego", GraphFilters(entity_id=busiest), 200),
                ("relationship_graph_500", GraphFilters(), 500),
            ):
                for _ in range(20):  # warm-up: plans and buffers
                    await relationship_graph(conn, tenant_id, first, filters, after=None, limit=limit)
                graph: list[float] = []
                for _ in range(300):
                    t = time.perf_counter()
                    page = await relationship_graph(conn, tenant_id, first, filters, after=None, limit=limit)
                    graph.append(time.perf_counter() - t)
                results[name] = {"edges": len(page.edges), "nodes": len(page.nodes), **percentiles(graph)}
    finally:
        await engine.dispose()
        postgres.release()
        valkey.release()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(worker_main(args.database_url, args.worker, args.start_at))
        return 0
    root = Path(tempfile.mkdtemp(prefix="lore-bench-ecs-"))
    try:
        results = asyncio.run(bench(args.events, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    one = results["projector_one_worker"]["events_per_s"]
    report = {
        "benchmark": "ecs",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "parameters": {"events_per_chronicle": args.events},
        # Other work on the machine lowers every figure; the load average tells how busy it was.
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "results": results,
        "goals": {
            "projector_events_per_s >= 3000": one >= GOAL_PROJECTOR_EPS,
            "cache_hit_ratio >= 0.95": results["cache"]["hit_ratio"] >= GOAL_HIT_RATIO,
            "graph_p95_ms < 10": results["relationship_graph"]["p95"] < GOAL_GRAPH_P95_MS,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
