"""Operations: ECS health across chronicles, the breaker, and runtime flags (admin key)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from litestar import Controller, get, put
from litestar.params import JSONBody

from app.dependencies import AdminCaller, ServicesDep
from app.errors import ProblemError
from app.services import Services
from ecs.repository import read_checkpoints
from rag.store import chronicle_heads

__all__ = ["OpsController", "ecs_overview"]

MAX_LAG_ROWS = 200


class FlagsIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ecs_enrichment: bool


async def ecs_overview(services: Services) -> dict[str, Any]:
    """Breaker state, projector and relay health, lag per chronicle and parked chronicles."""
    overview: dict[str, Any] = {
        "breaker": msgspec.to_builtins(services.breaker.snapshot()),
        "flags": await services.flags.snapshot(),
        "projector": msgspec.to_builtins(services.projector.stats),
        "relay": msgspec.to_builtins(services.relay.stats) if services.relay is not None else None,
        "cache": {"hit_ratio": services.cache.hit_ratio, "available": services.cache.available}
        if getattr(services, "cache", None) is not None
        else None,
        "fallbacks_served": dict(services.fallbacks_served),
    }
    try:
        async with services.engine.connect() as conn:
            heads = {h.id: h for h in await chronicle_heads(conn)}
        async with services.ecs_engine.connect() as conn:
            checkpoints = {c.chronicle_id: c for c in await read_checkpoints(conn)}
    except Exception as error:  # the overview reports an outage instead of failing with it
        overview["ecs_reachable"] = False
        overview["ecs_error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return overview
    overview["ecs_reachable"] = True
    lags = []
    for chronicle_id, head in heads.items():
        checkpoint = checkpoints.get(chronicle_id)
        position = checkpoint.last_sequence if checkpoint else 0
        lags.append({
            "chronicle_id": str(chronicle_id),
            "chronicle_sequence": head.last_sequence,
            "checkpoint_sequence": position,
            "lag_events": max(0, head.last_sequence - position),
            "parked": bool(checkpoint and checkpoint.parked_at),
        })  # fmt: skip
    lags.sort(key=lambda row: (-row["lag_events"], row["chronicle_id"]))
    overview["lag"] = lags[:MAX_LAG_ROWS]
    overview["chronicles"] = len(heads)
    overview["parked"] = [
        {"chronicle_id": str(c.chronicle_id), "reason": c.parked_reason,
         "parked_at": c.parked_at.isoformat() if c.parked_at else None}
        for c in checkpoints.values() if c.parked_at is not None
    ]  # fmt: skip
    overview["checked_at"] = dt.datetime.now(dt.UTC).isoformat()
    return overview


class OpsController(Controller):
    path = "/api"
    tags = ["ops"]  # noqa: RUF012 - Litestar reads these as class attributes

    @get("/ops/status", summary="Breaker state, last error, lag per chronicle, parked chronicles")
    async def status(self, services: ServicesDep, admin: AdminCaller) -> dict[str, Any]:
        return await ecs_overview(services)

    @get("/admin/flags", summary="Runtime feature flags")
    async def flags(self, services: ServicesDep, admin: AdminCaller) -> dict[str, bool]:
        return await services.flags.snapshot()

    @put("/admin/flags", summary="Switch runtime feature flags (all replicas, no restart)")
    async def set_flags(
        self, data: JSONBody[FlagsIn], services: ServicesDep, admin: AdminCaller
    ) -> dict[str, Any]:
        shared = await services.flags.set("ecs_enrichment", data.ecs_enrichment)
        if not shared:
            raise ProblemError(
                503, "Flag not shared", "the flag was set on this replica only: Redis is unavailable",
                problem_type="flag-not-shared", headers={"Retry-After": "2"},
            )  # fmt: skip
        return {"ecs_enrichment": data.ecs_enrichment, "shared": shared}
