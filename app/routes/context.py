"""Context bundles: `POST /api/chronicles/{id}/context`."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Response, post
from litestar.enums import MediaType
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import FromPath, JSONBody

from app.database import translate_database_errors
from app.dependencies import ServicesDep, TenantId
from app.errors import invalid_parameter, not_found
from app.services import Services
from ecs.guard import GuardedEcsSource, check_staleness, is_ecs_failure
from ecs.state_source import ChronicleReplayStateSource, EcsStateSource
from rag.context import (
    Bundle,
    ContextRequest,
    StateSource,
    UnknownPointOfView,
    assemble_context,
    needs_query_vector,
)
from rag.presets import PRESETS, get_preset
from rag.store import ChronicleRow, get_chronicle, without_transaction
from rag.templates import UnknownTemplate

__all__ = ["ContextController", "ContextIn"]

log = logging.getLogger("lore.context")

FocusName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class ContextIn(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    query: Annotated[str, msgspec.Meta(max_length=8_000)]
    focus: Annotated[list[FocusName], msgspec.Meta(max_length=20)] = []
    max_tokens: Annotated[int, msgspec.Meta(ge=16, le=100_000)] = 1_500
    preset: Annotated[str, msgspec.Meta(max_length=50)] = "default"
    format: Literal["json", "text", "both"] = "both"
    template: Annotated[str, msgspec.Meta(max_length=100)] = "default"
    pov: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    as_of_sequence: Annotated[int, msgspec.Meta(ge=0)] | None = None
    mode: Literal["auto", "full", "chronicle_only"] = "auto"
    """auto: full unless ECS is unhealthy; chronicle_only forces degraded mode (evaluation baselines)."""
    retrieval: Literal["hybrid", "vector", "lexical"] = "hybrid"
    include_state: bool = True
    """False gives retrieval only, no state (the evaluation harness's `hybrid` baseline)."""


async def build_bundle(
    services: Services, tenant_id: uuid.UUID, chronicle_id: uuid.UUID, data: ContextIn
) -> Bundle:
    try:
        preset = get_preset(data.preset)
    except KeyError:
        raise invalid_parameter(
            "preset", f"unknown preset {data.preset!r}; available: {', '.join(sorted(PRESETS))}"
        ) from None
    try:
        services.templates.resolve(data.template)
    except UnknownTemplate as error:
        raise invalid_parameter("template", str(error).strip("'\"")) from None
    async with translate_database_errors(), without_transaction(services.engine).connect() as conn:
        chronicle = await get_chronicle(conn, tenant_id, chronicle_id)
    if chronicle is None:
        raise not_found("chronicle", chronicle_id)
    if data.as_of_sequence is not None and data.as_of_sequence > chronicle.last_sequence:
        raise invalid_parameter(
            "as_of_sequence",
            f"{data.as_of_sequence} is after the chronicle's last event (#{chronicle.last_sequence})",
        )

    request = ContextRequest(
        tenant_id=tenant_id,
        chronicle_id=chronicle_id,
        query=data.query,
        focus=list(data.focus),
        max_tokens=data.max_tokens,
        preset=preset,
        template=data.template,
        pov=data.pov,
        as_of_sequence=data.as_of_sequence,
        retrieval_mode=data.retrieval,
        include_state=data.include_state,
    )
    embed = _QueryEmbeddings(services.embed_query)
    if needs_query_vector(request):
        # Embedding the question takes a few milliseconds on its own thread: it starts now and
        # is done by the time the search needs it, instead of after the staleness check, the
        # names and the query analysis.
        embed.start([request.query])

    async def assemble(
        state_source: StateSource, bundle_mode: Literal["full", "chronicle_only"], why: str | None
    ) -> Bundle:
        return await assemble_context(
            services.engine, request, chronicle_sequence=chronicle.last_sequence, state_source=state_source,
            mode=bundle_mode, degraded_reason=why, embed=embed, counter=services.token_counter,
            templates=services.templates,
            # A second search connection buys latency with CPU: only when this is the one request.
            spare_connection=services.contexts_in_flight <= 1,
        )  # fmt: skip

    async def degraded(reason: str) -> Bundle:
        services.count_fallback(reason)
        return await assemble(_replay(services, tenant_id, chronicle, data), "chronicle_only", reason)

    async with translate_database_errors():
        if data.mode == "chronicle_only":
            return await assemble(
                _replay(services, tenant_id, chronicle, data),
                "chronicle_only",
                "requested",
            )
        if not await services.flags.get("ecs_enrichment"):
            return await degraded("ECS enrichment is switched off")
        if services.breaker.state == "open":
            return await degraded(f"ECS circuit open ({services.breaker.last_error or 'failures'})")
        source = EcsStateSource(
            services.engine, services.ecs_engine, tenant_id, chronicle_id,
            cache=getattr(services, "cache", None), names=getattr(services, "ecs_names", None),
            states=getattr(services, "ecs_states", None),
        )  # fmt: skip
        guarded = GuardedEcsSource(source, services.breaker, services.settings.ecs_timeout_ms / 1000)
        warning = None
        try:
            staleness = await check_staleness(
                guarded,
                services.engine,
                chronicle_id,
                chronicle.last_sequence,
                services.staleness,
                catch_up=lambda: services.catch_up(chronicle_id),
            )
            if staleness.reason is not None:
                if services.staleness.on_stale == "degrade":
                    return await degraded(staleness.reason)
                warning = staleness.reason
            bundle = await assemble(guarded, "full", None)
        except Exception as error:
            if not is_ecs_failure(error):
                raise
            log.warning("ECS unavailable for context of chronicle %s: %s", chronicle_id, error)
            return await degraded(f"ECS unavailable: {type(error).__name__}")
        if warning is not None:
            bundle = msgspec.structs.replace(bundle, degraded_reason=f"stale: {warning}")
        return bundle


class _QueryEmbeddings:
    """The embeddings of one request's texts, each computed once.

    A fallback after a failed ECS attempt must not embed the query a second time, and the query
    is embedded ahead (`start`) while the request does its other reads. Each embedding is a task,
    shielded from its callers: the full attempt may be cancelled half-way (its state read failed
    while the question was being embedded), and the fallback then waits for that same embedding.
    """

    def __init__(self, embed: Callable[[list[str]], Awaitable[list[list[float]]]]) -> None:
        self._embed = embed
        self._tasks: dict[tuple[str, ...], asyncio.Future[list[list[float]]]] = {}

    def start(self, texts: list[str]) -> None:
        self._task(texts)

    def __call__(self, texts: list[str]) -> Awaitable[list[list[float]]]:
        return asyncio.shield(self._task(texts))

    def _task(self, texts: list[str]) -> asyncio.Future[list[list[float]]]:
        key = tuple(texts)
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = asyncio.ensure_future(self._embed(list(texts)))
            # Marked as seen even if no caller is left to await it (the request was abandoned).
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return task


def _replay(
    services: Services, tenant_id: uuid.UUID, chronicle: ChronicleRow, data: ContextIn
) -> ChronicleReplayStateSource:
    # The names the request gives are looked up in the whole chronicle, not only its recent events.
    return ChronicleReplayStateSource(
        services.engine, tenant_id, chronicle.id,
        events_per_entity=services.settings.replay_events_per_entity,
        known_cache=services.replay_names, chronicle_sequence=chronicle.last_sequence,
        focus=[*data.focus, *([data.pov] if data.pov else [])],
    )  # fmt: skip


@dataclass
class _ContextOperation(Operation):
    """Documents the second media type of the 200: `format: text` answers the text alone.

    Found by fuzzing against the OpenAPI schema: the handler returns bytes, so Litestar documented
    the 200 as a JSON string; it is a `Bundle` (JSON formats) or `text/plain` (the text format).
    """

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse) and ok.content is not None:
            ok.content[MediaType.TEXT.value] = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))


class ContextController(Controller):
    path = "/api/chronicles"
    tags = ["context"]  # noqa: RUF012 - Litestar reads these as class attributes

    @post(
        "/{chronicle_id:uuid}/context",
        summary="A token-budgeted context bundle: current state plus relevant history",
        status_code=200,
        # The handler builds the body itself (bytes); declare what it is, in both media types.
        responses={
            200: ResponseSpec(
                data_container=Bundle,
                media_type=MediaType.JSON,
                description="The bundle, or (`format: text`) its text alone as text/plain",
                generate_examples=False,
            )
        },
        operation_class=_ContextOperation,
    )
    async def context(
        self,
        chronicle_id: FromPath[uuid.UUID],
        data: JSONBody[ContextIn],
        services: ServicesDep,
        tenant_id: TenantId,
    ) -> Response[bytes]:
        services.contexts_in_flight += 1
        try:
            bundle = await build_bundle(services, tenant_id, chronicle_id, data)
        except UnknownPointOfView as error:
            raise invalid_parameter("pov", str(error)) from None
        finally:
            services.contexts_in_flight -= 1
        if data.format == "text":
            return Response(bundle.text.encode(), media_type=MediaType.TEXT)
        if data.format == "json":
            bundle = msgspec.structs.replace(bundle, text="")
        return Response(msgspec.json.encode(bundle), media_type="application/json")
