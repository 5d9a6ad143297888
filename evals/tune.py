"""Offline tuning of the retrieval preset: ``python -m evals.tune DATASET... [options]``.

Scores evidence recall@10 for many presets without re-running the service for each: every dataset
is ingested once into a private embedded PostgreSQL (the product's own ingest and embedder), then
for every query the three sources (vector, lexical, entity) are searched once, ``--depth`` deep
(default 120, above any ``k`` of the grid). A preset is then scored by re-running only the pure
steps on those hit lists - truncation to ``k_<source>``, :func:`rag.retrieval.fuse` (weighted RRF
and the recency prior) and :func:`rag.retrieval.collapse_near_duplicates` (MMR) - and ranking the
events as the harness reads a bundle (what retrieval found by score, then the other of the last
five events, newest first; see ``evals.metrics.ranked_items``). The baselines (vector only,
lexical only) are scored the same way with the same preset, as ``lore eval run`` asks them. On the
standard suite's selection the shipped preset scores exactly the recall@10 ``make eval`` reports.
``--cases FILE`` keeps the searched queries, so that further grids skip the ingest.

What it reproduces of a context request (``evals.harness.context_body``): the query text, the
focus (the query's subjects, except for ``who_was_at``), ``as_of_sequence`` (the query's point,
or the ``state_as_of`` sequence), and the entity keys the full mode searches for: the query is
analysed against the entities a replay of the events so far knows (names and aliases), as the ECS
would list them. What it does not: the token budget (bundles of the standard suite stay far below
it) and HNSW's approximation (small chronicles are searched exactly anyway).

The candidates: the default preset and a grid around it (:func:`grid`). The objective puts the
goal first: for every dataset, full-mode recall@10 minus the best baseline's under the same preset;
a preset is better when its worst margin over the datasets is larger, then when its mean recall is.
Tune on a split that is not the evaluation's: other generator seeds (``generator:1000:1``) and, with
a ``@N`` suffix on a spec, the streams after the first N (``make eval`` takes 300 queries: the first
60 bAbI stories, 27 ProPara paragraphs); then check the winner on the evaluation's own selection
(``--grid none --preset field=value,...``)::

    python -m evals.tune generator:1000:1 generator:10000:1 babi:1@60 babi:2@60 babi:5@60 \
        babi:6@60 propara@30 --top 15
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import pickle
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt
from sqlalchemy import LargeBinary, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ecs.reducer import ChronicleEvent, WorldState, apply_event
from ecs.state_source import KNOWN_ENTITY_LIMIT
from evals.harness import MAX_FOCUS, LoadedStream, load_streams
from evals.metrics import retrieval_metrics
from rag.context import RECENT_EVENTS
from rag.events import EventIn, normalize_name
from rag.presets import DEFAULT_PRESET, RetrievalPreset, get_preset
from rag.query_analysis import KnownEntity, analyse_query
from rag.retrieval import (
    Hit,
    RetrievalQuery,
    Source,
    collapse_near_duplicates,
    entity_search,
    fuse,
    lexical_search,
    vector_search,
)
from rag.schema import chronicle_events
from rag.store import recent_events

__all__ = ["Case", "grid", "main", "score_preset"]

BATCH: Final = 500
BASELINES: Final[Mapping[str, tuple[Source, ...]]] = {"vector": ("vector",), "lexical": ("lexical",)}
FULL: Final[tuple[Source, ...]] = ("vector", "lexical", "entity")


@dataclasses.dataclass
class Case:
    """One query, searched once: everything a preset needs to rank its events."""

    dataset: str
    query_id: str
    evidence: list[str]
    hits: dict[str, list[Hit]]
    recent: list[uuid.UUID]
    """The last events before the query's point, newest first."""
    max_sequence: int
    vectors: dict[uuid.UUID, npt.NDArray[np.float32]]
    external_ids: dict[uuid.UUID, str | None]


def ranked_ids(case: Case, preset: RetrievalPreset, sources: Sequence[Source]) -> list[str | None]:
    """External ids in the order the harness scores a bundle built with ``preset`` and ``sources``."""
    lists = [[h for h in case.hits[s] if h.rank <= preset.k(s)] for s in sources]
    candidates = fuse(lists, preset, case.max_sequence)
    selected, _ = collapse_near_duplicates(candidates[: preset.rerank_pool], case.vectors, preset)
    # As evals.metrics.ranked_items reads a bundle: what retrieval found by its score rounded to 6
    # places (ties: by sequence), wherever the bundle shows it; then the other recent events, newest
    # first.
    found = sorted((s.candidate for s in selected), key=lambda c: (-round(c.score, 6), c.sequence))
    chosen = {c.event_id for c in found}
    return [case.external_ids.get(c.event_id) for c in found] + [
        case.external_ids.get(e) for e in case.recent if e not in chosen
    ]


def recall_at_10(case: Case, preset: RetrievalPreset, sources: Sequence[Source]) -> float:
    value = retrieval_metrics(ranked_ids(case, preset, sources), case.evidence)["recall@10"]
    return float(value or 0.0)


def _mean_recall(
    cases: Sequence[Case], preset: RetrievalPreset, sources: Sequence[Source]
) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for case in cases:
        sums[case.dataset] = sums.get(case.dataset, 0.0) + recall_at_10(case, preset, sources)
        counts[case.dataset] = counts.get(case.dataset, 0) + 1
    return {d: v / counts[d] for d, v in sums.items()}


def _single_source_key(preset: RetrievalPreset, source: Source) -> tuple[Any, ...]:
    """What a one-source ranking depends on (its weight and rrf_k only through the recency prior)."""
    return (source, preset.k(source), preset.weight(source), preset.rrf_k, preset.recency_weight,
            preset.recency_half_life, preset.mmr_lambda, preset.duplicate_threshold, preset.rerank_pool,
            preset.top_k)  # fmt: skip


def score_preset(
    cases: Sequence[Case],
    preset: RetrievalPreset,
    memo: dict[tuple[Any, ...], dict[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean recall@10 per dataset and mode (``full``, ``vector``, ``lexical``); ``memo`` keeps the
    baselines, which many presets share."""
    memo = {} if memo is None else memo
    full = _mean_recall(cases, preset, FULL)
    out: dict[str, dict[str, float]] = {d: {"full": v} for d, v in full.items()}
    for mode, sources in BASELINES.items():
        key = _single_source_key(preset, sources[0])
        if key not in memo:
            memo[key] = _mean_recall(cases, preset, sources)
        for dataset, value in memo[key].items():
            out[dataset][mode] = value
    return out


def objective(scores: Mapping[str, Mapping[str, float]]) -> tuple[float, float]:
    """(worst margin of full over the best baseline, mean full recall): larger is better."""
    margins = [s["full"] - max(s[m] for m in BASELINES) for s in scores.values()]
    mean = sum(s["full"] for s in scores.values()) / max(1, len(scores))
    return (min(margins, default=0.0), mean)


# --------------------------------------------------------------------------------------------------
# Candidates


GRID_AXES: Final[Mapping[str, Sequence[Any]]] = {
    "weight_vector": (0.2, 0.3, 0.5),
    "weight_lexical": (0.7, 1.0, 1.5),
    "weight_entity": (1.0, 1.5, 2.0),
    "rrf_k": (30, 60),
    "recency_weight": (0.002, 0.005, 0.01),
    "mmr_lambda": (0.85, 1.0),
    "duplicate_threshold": (0.97, 0.99),
}
"""The neighbourhood of the shipped default (648 presets, about 20 minutes on the standard suite's
size on a busy 2-core machine); ``--axis`` replaces or adds an axis."""


def grid(base: RetrievalPreset, axes: Mapping[str, Sequence[Any]] = GRID_AXES) -> Iterator[RetrievalPreset]:
    """``base`` with every combination of the axes' values."""
    names = list(axes)
    for values in itertools.product(*(axes[n] for n in names)):
        changes = dict(zip(names, values, strict=True))
        label = ",".join(f"{k}={v}" for k, v in changes.items())
        yield msgspec.structs.replace(base, name=label, **changes)


def field_value(field: str, raw: str) -> int | float:
    """A preset field's value from text (int or float, as the field is typed)."""
    types = {f.name: f.type for f in msgspec.structs.fields(RetrievalPreset)}
    if field not in types or field == "name":
        raise SystemExit(f"unknown preset field {field!r}")
    return int(raw) if types[field] is int else float(raw)


def parse_preset(text: str) -> RetrievalPreset:
    """``NAME`` (a shipped preset) or ``field=value,field=value`` (changes to the default)."""
    if "=" not in text:
        return get_preset(text)
    changes: dict[str, Any] = {}
    for part in text.split(","):
        key, _, raw = part.partition("=")
        changes[key.strip()] = field_value(key.strip(), raw)
    return msgspec.structs.replace(get_preset(DEFAULT_PRESET), name=text, **changes)


# --------------------------------------------------------------------------------------------------
# Ingest and search (the only I/O)


class _World:
    """Known entities as the ECS would list them, replayed from the events as they are ingested."""

    def __init__(self) -> None:
        self.state = WorldState(chronicle_id="tune")
        self.applied = 0

    def advance(self, events: Sequence[EventIn], upto: int) -> None:
        while self.applied < min(upto, len(events)):
            event = events[self.applied]
            self.applied += 1
            apply_event(
                self.state,
                ChronicleEvent.from_event_in(
                    event, event_id=str(self.applied), sequence=self.applied, chronicle_id="tune"
                ),
            )

    def known(self) -> list[KnownEntity]:
        entities = sorted(self.state.entities.values(), key=lambda e: e.created_sequence)
        return [
            KnownEntity(id=e.id, name=e.name, aliases=list(e.aliases), kind=e.kind)
            for e in entities[:KNOWN_ENTITY_LIMIT]
        ]


def _focus_keys(query: Any, known: list[KnownEntity]) -> list[str]:
    """The entity keys rag.context.assemble_context searches for (focus and entities named)."""
    focus = [] if query.kind == "who_was_at" else [s for s in (query.subjects or []) if s][:MAX_FOCUS]
    analysis = analyse_query(query.text, known, [str(f)[:200] for f in focus])
    by_id = {k.id: k for k in known}
    ids = dict.fromkeys(m.entity_id for m in analysis.mentions)
    return sorted({normalize_name(n) for i in ids if i in by_id for n in (by_id[i].name, *by_id[i].aliases)})


def _as_of(query: Any) -> int:
    params = dict(query.params or {})
    if query.kind == "state_as_of" and isinstance(params.get("as_of_sequence"), int):
        return int(params["as_of_sequence"])
    return int(query.asked_after)


async def _load(
    engine: AsyncEngine, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, ids: Iterable[uuid.UUID]
) -> tuple[dict[uuid.UUID, npt.NDArray[np.float32]], dict[uuid.UUID, str | None]]:
    e = chronicle_events.c
    wanted = list(set(ids))
    if not wanted:
        return {}, {}
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(e.id, e.external_id, func.vector_send(e.embedding, type_=LargeBinary).label("v")).where(
                e.tenant_id == tenant_id, e.chronicle_id == chronicle_id, e.id.in_(wanted)
            )
        )
        vectors: dict[uuid.UUID, npt.NDArray[np.float32]] = {}
        external: dict[uuid.UUID, str | None] = {}
        for row in rows:
            external[row.id] = row.external_id
            if row.v is not None:
                vectors[row.id] = np.frombuffer(row.v, dtype=">f4", offset=4).astype(np.float32)
    return vectors, external


async def _stream_cases(
    engine: AsyncEngine, embedder: Any, tenant_id: uuid.UUID, stream: LoadedStream, depth: int, label: str
) -> list[Case]:
    from rag.ingest import ingest_batch
    from rag.store import create_chronicle

    async def embed(texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(embedder.embed, texts)

    async with engine.begin() as conn:
        chronicle = await create_chronicle(
            conn, tenant_id, title=f"tune {stream.key}", description=None, metadata={},
            embedding_model=embedder.model_id,
        )  # fmt: skip
    chronicle_id = chronicle.id
    needed = max((q.asked_after for q in stream.queries), default=0)
    events = [msgspec.convert(e, EventIn) for e in stream.events[:needed]]
    for start in range(0, len(events), BATCH):
        await ingest_batch(engine, embed, tenant_id, chronicle_id, events[start : start + BATCH])
    async with engine.begin() as conn:
        await conn.exec_driver_sql("ANALYZE chronicle_events")

    world = _World()
    cases = []
    for query in sorted(stream.queries, key=lambda q: q.asked_after):
        world.advance(events, query.asked_after)
        as_of = _as_of(query)
        vector = (await embed([query.text]))[0] if query.text.strip() else None
        request = RetrievalQuery(
            tenant_id=tenant_id,
            chronicle_id=chronicle_id,
            text=query.text,
            query_vector=vector,
            entity_keys=_focus_keys(query, world.known()),
            as_of_sequence=as_of,
        )
        async with engine.begin() as conn:
            hits = {
                "vector": await vector_search(conn, request, depth, max(100, depth), max_scan_tuples=40_000),
                "lexical": await lexical_search(conn, request, depth),
                "entity": await entity_search(conn, request, depth),
            }
            recent = await recent_events(conn, tenant_id, chronicle_id, as_of, RECENT_EVENTS)
        ids = [h.event_id for hs in hits.values() for h in hs] + [r.id for r in recent]
        vectors, external = await _load(engine, tenant_id, chronicle_id, ids)
        external.update({r.id: r.external_id for r in recent})
        cases.append(
            Case(
                dataset=label,
                query_id=query.id,
                evidence=list(query.evidence or []),
                hits=hits,
                recent=[r.id for r in recent],
                max_sequence=min(as_of, len(events)),
                vectors=vectors,
                external_ids=external,
            )
        )
    return [c for c in cases if c.evidence]


async def collect(
    specs: Sequence[str], *, data_dir: Path | None, limit: int | None, depth: int, root: Path
) -> list[Case]:
    """Ingest the datasets into a fresh embedded PostgreSQL under ``root`` and search every query."""
    from app.auth import create_tenant
    from app.database import CHRONICLE_BRANCH, create_engine, migrate
    from app.settings import to_asyncpg_url
    from rag.embedding import LocalMiniLMEmbedder
    from rag.store import claim_embedding_space

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from app.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(root)
    embedder = LocalMiniLMEmbedder()
    engine = create_engine(to_asyncpg_url(server.acquire()), timeout_ms=120_000, pool_size=2)
    try:
        await migrate(engine, embedder.dimension, branch=CHRONICLE_BRANCH)
        async with engine.begin() as conn:
            await claim_embedding_space(conn, embedder.model_id, embedder.dimension)
            tenant_id, _ = await create_tenant(conn, f"tune-{uuid.uuid4().hex[:8]}")
        cases: list[Case] = []
        for text in specs:
            started = time.perf_counter()
            spec, _, skip = text.partition("@")
            _, streams = load_streams(spec, data_dir, limit, skip=int(skip or 0))
            before = len(cases)
            for stream in streams:
                cases += await _stream_cases(engine, embedder, tenant_id, stream, depth, text)
            print(f"[tune] {text}: {len(streams)} streams, {len(cases) - before} queries with evidence "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)  # fmt: skip
        return cases
    finally:
        await engine.dispose()
        embedder.close()
        server.release()


# --------------------------------------------------------------------------------------------------
# CLI


def _table(rows: Sequence[tuple[RetrievalPreset, dict[str, dict[str, float]]]], datasets: list[str]) -> str:
    lines = []
    for preset, scores in rows:
        worst, mean = objective(scores)
        cells = "  ".join(
            f"{d} {scores[d]['full']:.3f} (v {scores[d]['vector']:.3f} l {scores[d]['lexical']:.3f})"
            for d in datasets
        )
        lines.append(f"worst margin {worst:+.3f}  mean {mean:.3f}  {preset.name}\n    {cells}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.tune", description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="+", metavar="DATASET[@SKIP]")
    parser.add_argument("--limit", type=int, default=300, help="queries per dataset (default 300)")
    parser.add_argument("--depth", type=int, default=120, help="hits fetched per source (default 120)")
    parser.add_argument("--datasets-dir", type=Path, default=None)
    parser.add_argument("--grid", choices=("default", "none"), default="default",
                        help="'none': only the presets named by --preset")  # fmt: skip
    parser.add_argument("--axis", action="append", default=[], metavar="FIELD=V1,V2,...",
                        help="replace or add a grid axis (repeatable)")  # fmt: skip
    parser.add_argument("--preset", action="append", default=[], metavar="NAME|field=value,...",
                        help="extra presets to score (repeatable)")  # fmt: skip
    parser.add_argument("--top", type=int, default=10, help="best presets to print (default 10)")
    parser.add_argument("--json", type=Path, help="write every preset's scores here")
    parser.add_argument("--cases", type=Path,
                        help="the searched queries: read if the file exists, else written")  # fmt: skip
    args = parser.parse_args(argv)

    if args.cases is not None and args.cases.is_file():
        with args.cases.open("rb") as saved:
            cases = pickle.load(saved)  # noqa: S301 - a file this command wrote, for this command
        cases = [c for c in cases if c.dataset in set(args.datasets)]
    else:
        root = Path(tempfile.mkdtemp(prefix="lore-tune-"))
        try:
            cases = asyncio.run(
                collect(
                    args.datasets, data_dir=args.datasets_dir, limit=args.limit, depth=args.depth, root=root
                )
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if args.cases is not None:
            with args.cases.open("wb") as out:
                pickle.dump(cases, out)
    datasets = list(dict.fromkeys(c.dataset for c in cases))
    presets = [get_preset(DEFAULT_PRESET), *(parse_preset(p) for p in args.preset)]
    if args.grid == "default":
        axes = dict(GRID_AXES)
        for axis in args.axis:
            field, _, values = axis.partition("=")
            axes[field.strip()] = [field_value(field.strip(), v) for v in values.split(",")]
        presets += list(grid(get_preset(DEFAULT_PRESET), axes))
    started = time.perf_counter()
    results = []
    memo: dict[tuple[Any, ...], dict[str, float]] = {}
    for index, preset in enumerate(presets):
        results.append((preset, score_preset(cases, preset, memo)))
        if index == 0:
            per = time.perf_counter() - started
            print(f"[tune] {len(presets)} presets, ~{per * len(presets):.0f} s", file=sys.stderr)
    print("== shipped default\n" + _table(results[:1], datasets))
    if len(results) > 1:
        extra = results[1 : 1 + len(args.preset)]
        if extra:
            print("== named\n" + _table(extra, datasets))
        best = sorted(results, key=lambda r: objective(r[1]), reverse=True)[: args.top]
        print(f"== best {len(best)}\n" + _table(best, datasets))
    if args.json:
        args.json.write_text(json.dumps(
            [{"preset": msgspec.to_builtins(p), "scores": s, "objective": objective(s)} for p, s in results],
            indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy, so that pickled cases name evals.tune.Case.
    from evals.tune import main as _main

    raise SystemExit(_main())
