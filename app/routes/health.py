"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.openapi import ResponseSpec
from sqlalchemy import text

from app.database import current_revision, head_revision, is_unavailable_error
from app.dependencies import ServicesDep

__all__ = ["health", "ready"]


@get("/health", summary="Liveness: the process is up", tags=["ops"])
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/ready",
    summary="Readiness: database reachable and migrated to head",
    tags=["ops"],
    # Not ready is a 503 with the same body (found by fuzzing against the OpenAPI schema).
    responses={
        503: ResponseSpec(
            dict[str, Any], description="Not ready: the same checks, failing", generate_examples=False
        )
    },
)
async def ready(services: ServicesDep) -> Response[dict[str, Any]]:
    checks: dict[str, Any] = {}
    ok = True
    try:
        async with services.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            revision = await current_revision(conn)
        head = head_revision()
        checks["database"] = "ok"
        checks["migrations"] = {"current": revision, "head": head, "ok": revision == head}
        ok = revision == head
    except Exception as error:  # readiness reports every failure instead of raising
        checks["database"] = (
            "unavailable" if is_unavailable_error(error) else f"error: {type(error).__name__}"
        )
        ok = False
    # ECS trouble does not make the service unready: it keeps answering in chronicle-only mode.
    checks["ecs"] = {
        "breaker": services.breaker.state,
        "last_error": services.breaker.last_error,
        "mode": "full" if services.breaker.state != "open" else "chronicle_only",
    }
    body = {"status": "ready" if ok else "not ready", "checks": checks}
    return Response(body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "2"})
