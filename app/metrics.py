"""Prometheus metrics at `/metrics`.

Counters that only the process knows (request latency) live in a registry owned by the app. The
rest are read at scrape time from the components that keep them (projector, relay, cache) and from
the ECS checkpoints (lag, parked chronicles), so there is no second copy of that state to drift.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from litestar import Request, Response, get
from litestar.enums import MediaType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.dependencies import ServicesDep
from app.logs import access_log, hash_tenant
from app.services import Services
from ecs.repository import read_checkpoints
from rag.store import chronicle_heads

__all__ = ["Metrics", "metrics_endpoint", "metrics_middleware"]

MAX_LAG_SERIES = 100
"""Per-chronicle lag is exported for the most lagging chronicles only, to bound cardinality."""


class _Snapshot(Collector):
    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        yield from self.families


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.request_seconds = Histogram(
            "lore_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)

    async def render(self, services: Services) -> bytes:
        self._snapshot.families = await _collect(services)
        return generate_latest(self.registry)


async def _collect(services: Services) -> list[Metric]:
    families: list[Metric] = []
    projector = services.projector.stats
    applied = CounterMetricFamily("lore_projector_events_applied", "Chronicle events applied to ECS state")
    applied.add_metric([], projector.events_applied)
    failures = CounterMetricFamily("lore_projector_failures", "Failed projection attempts")
    failures.add_metric([], projector.failures)
    families += [applied, failures]
    breaker = services.breaker.snapshot()
    transitions = CounterMetricFamily(
        "lore_breaker_transitions", "ECS circuit breaker state changes", labels=["transition"]
    )
    for name, count in sorted(breaker.transitions.items()):
        transitions.add_metric([name], count)
    state = GaugeMetricFamily("lore_breaker_state", "1 for the ECS breaker's current state", labels=["state"])
    for name in ("closed", "open", "half_open"):
        state.add_metric([name], 1.0 if breaker.state == name else 0.0)
    fallbacks = CounterMetricFamily(
        "lore_fallbacks_served", "Chronicle-only answers served instead of full ones", labels=["reason"]
    )
    for reason, count in sorted(services.fallbacks_served.items()):
        fallbacks.add_metric([reason], count)
    families += [transitions, state, fallbacks]
    if services.relay is not None:
        relay = services.relay.stats
        published = CounterMetricFamily("lore_relay_published", "Outbox rows published to Redis Streams")
        published.add_metric([], relay.published)
        families.append(published)
    cache = getattr(services, "cache", None)
    if cache is not None:
        hits = CounterMetricFamily("lore_cache_hits", "Entity cache hits")
        hits.add_metric([], getattr(cache, "hits", 0))
        misses = CounterMetricFamily("lore_cache_misses", "Entity cache misses")
        misses.add_metric([], getattr(cache, "misses", 0))
        ratio = GaugeMetricFamily("lore_cache_hit_ratio", "Entity cache hits / lookups since start")
        ratio.add_metric([], float(getattr(cache, "hit_ratio", 0.0)))
        families += [hits, misses, ratio]
    states = getattr(services, "ecs_states", None)
    if states is not None:
        families += _counters(
            ("lore_state_views_reused", "State views served again (same checkpoint)", states.hits),
            ("lore_state_views_read", "Entity state views read from ECS rows", states.misses),
        )
    query_runs = getattr(services, "query_runs", None)
    if query_runs is not None:
        families += _counters(
            ("lore_query_embedding_runs", "Model runs for context questions", query_runs.runs),
            ("lore_query_embedding_texts", "Context questions embedded", query_runs.texts),
        )
    families += await _projection_lag(services)
    return families


def _counters(*named: tuple[str, str, float]) -> list[Metric]:
    """Unlabelled counters from (name, help, value)."""
    families: list[Metric] = []
    for name, documentation, value in named:
        family = CounterMetricFamily(name, documentation)
        family.add_metric([], value)
        families.append(family)
    return families


async def _projection_lag(services: Services) -> list[Metric]:
    parked = GaugeMetricFamily("lore_projection_parked_chronicles", "Chronicles whose projection is parked")
    lag = GaugeMetricFamily(
        "lore_projection_lag_events",
        "Events written but not yet projected, per chronicle",
        labels=["chronicle"],
    )
    total = GaugeMetricFamily("lore_projection_lag_events_total", "Events not yet projected, all chronicles")
    up = GaugeMetricFamily("lore_ecs_reachable", "1 if the ECS database answered this scrape")
    try:
        async with services.engine.connect() as conn:
            heads = {h.id: h.last_sequence for h in await chronicle_heads(conn)}
        async with services.ecs_engine.connect() as conn:
            checkpoints = {c.chronicle_id: c for c in await read_checkpoints(conn)}
    except Exception:  # a scrape must not fail because a database is down; say so instead
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    parked.add_metric([], sum(1 for c in checkpoints.values() if c.parked_at is not None))
    lags = {
        cid: head - (checkpoints[cid].last_sequence if cid in checkpoints else 0)
        for cid, head in heads.items()
    }
    total.add_metric([], sum(max(0, v) for v in lags.values()))
    for chronicle_id, value in sorted(lags.items(), key=lambda kv: -kv[1])[:MAX_LAG_SERIES]:
        if value > 0:
            lag.add_metric([str(chronicle_id)], value)
    return [up, parked, total, lag]


# media_type documents the 200 as text (the exposition format), not the JSON string Litestar
# assumed for a bytes body (found by fuzzing against the OpenAPI schema).
@get(
    "/metrics", summary="Prometheus metrics", tags=["ops"], include_in_schema=True, media_type=MediaType.TEXT
)
async def metrics_endpoint(request: Request[Any, Any, Any], services: ServicesDep) -> Response[bytes]:
    metrics: Metrics = request.app.state.metrics
    return Response(await metrics.render(services), media_type=CONTENT_TYPE_LATEST)


def metrics_middleware(app: ASGIApp) -> ASGIApp:
    """Time every HTTP request: one latency observation and one access-log line, both labelled
    with the route template (never the raw path) and, in the log, a hash of the tenant."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await app(scope, receive, capture)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("path_template") or "unmatched"
            metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
            if metrics is not None:
                metrics.request_seconds.labels(scope["method"], route, str(status["code"])).observe(elapsed)
            tenant = (scope.get("state") or {}).get("tenant_id")
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status["code"],
                    "duration_ms": round(elapsed * 1000, 2),
                    "tenant": hash_tenant(tenant) if tenant else None,
                },
            )

    return middleware
