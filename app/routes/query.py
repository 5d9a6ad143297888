"""Hybrid questions: `POST /api/chronicles/{id}/query`.

The body is one typed question (a tagged union on `type`); the answer is one typed result with
provenance, `answered_from` and `unavailable`. The domain logic is `ecs.hybrid`; this is HTTP only.
"""

from __future__ import annotations

import uuid

from litestar import Controller, post
from litestar.params import FromPath, JSONBody

from app.database import translate_database_errors
from app.dependencies import ServicesDep, TenantId
from app.errors import FieldError, ProblemError, not_found
from app.services import Services
from ecs.hybrid import (
    HybridQuery,
    HybridResult,
    QueryError,
    ReferenceUnavailable,
    Scope,
    UnknownReference,
    answer,
)
from rag.store import get_chronicle

__all__ = ["QueryController"]

DESCRIPTION = """\
One question per request, chosen by `type`; entities are given by id, name or alias.

* `entity_fate` (`entity`): current location, status and holder with the events that set them,
  and the key events (moves, holder changes, items gained and lost, status changes, death).
* `event_participants` (`event`: id or external id; optional `dimension`): the actors and whoever
  else the replay puts at the event's location then, and how each ordered pair stands now.
* `present_at` (`location`; optional `toward`, `dimension` (default `trust`), exclusive `min` /
  `max`, `kind` (default `character`, `null` for all)): who is there now, dead ones flagged.
* `relationship_history` (`a`, `b`; optional `dimension`): every valence change from a to b.
* `item_interactions` (`item`): holders in order and the other events involving it.
* `state_as_of` (`entity` and exactly one of `sequence` or `occurred_at`): the replayed state.

`answered_from` is `ecs` or `chronicle`; when the ECS database is unavailable the answer comes
from the chronicle and `unavailable` lists the parts it could not give, with the reason.
Unknown entities or events are a 404 naming the field.
"""


def _problem(error: QueryError) -> ProblemError:
    errors = [FieldError(field=error.field, message=error.message)]
    if isinstance(error, UnknownReference):
        return ProblemError(404, "Not found", str(error), problem_type="not-found", errors=errors)
    if isinstance(error, ReferenceUnavailable):
        return ProblemError(
            503, "Service unavailable", str(error), problem_type="ecs-unavailable", errors=errors,
            headers={"Retry-After": "2"},
        )  # fmt: skip
    return ProblemError(422, "Invalid request", str(error), problem_type="invalid-request", errors=errors)


async def _ecs_disabled(services: Services) -> str | None:
    if not await services.flags.get("ecs_enrichment"):
        services.count_fallback("ECS enrichment is switched off")
        return "ECS enrichment is switched off"
    if services.breaker.state == "open":
        services.count_fallback("ECS circuit open")
        return f"ECS circuit open ({services.breaker.last_error or 'failures'})"
    return None


class QueryController(Controller):
    path = "/api/chronicles"
    tags = ["query"]  # noqa: RUF012 - Litestar reads these as class attributes

    @post(
        "/{chronicle_id:uuid}/query",
        summary="Answer a hybrid question (fate, participants, presence, relationship, item, past state)",
        description=DESCRIPTION,
        status_code=200,
    )
    async def query(
        self,
        chronicle_id: FromPath[uuid.UUID],
        data: JSONBody[HybridQuery],
        services: ServicesDep,
        tenant_id: TenantId,
    ) -> HybridResult:
        async with translate_database_errors(), services.engine.connect() as conn:
            chronicle = await get_chronicle(conn, tenant_id, chronicle_id)
        if chronicle is None:
            raise not_found("chronicle", chronicle_id)
        ecs_disabled = await _ecs_disabled(services)
        if ecs_disabled is None:
            await services.ensure_projected(chronicle_id, chronicle.last_sequence)
        scope = Scope(
            chronicle_engine=services.engine,
            ecs_engine=services.ecs_engine,
            tenant_id=tenant_id,
            chronicle_id=chronicle_id,
            cache=getattr(services, "cache", None),
            breaker=services.breaker,
            ecs_budget_seconds=services.settings.ecs_timeout_ms / 1000,
            ecs_disabled=ecs_disabled,
        )
        try:
            async with translate_database_errors():
                return await answer(scope, data)
        except QueryError as error:
            raise _problem(error) from None
