"""Projection status of a chronicle, and the operator's rebuild / verify / resume."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath

from app.database import translate_database_errors
from app.dependencies import AdminCaller, ServicesDep, TenantId
from app.errors import not_found
from app.services import Services
from ecs.maintenance import rebuild_chronicle, verify_chronicle
from ecs.repository import read_checkpoint, resume_checkpoint
from rag.store import get_chronicle, recorded_at_of

__all__ = ["AdminEcsController", "EcsStatusController", "ecs_status"]


class EcsStatus(msgspec.Struct, frozen=True):
    chronicle_id: uuid.UUID
    checkpoint_sequence: int
    chronicle_sequence: int
    lag_events: int
    lag_seconds: float
    """How long the oldest event not yet projected has waited (0 when caught up)."""
    state_hash: str | None
    parked: bool
    parked_reason: str | None
    attempts: int
    last_error: str | None
    updated_at: dt.datetime | None


class VerifyOut(msgspec.Struct, frozen=True):
    chronicle_id: uuid.UUID
    ok: bool
    replayed_sequence: int
    checkpoint_sequence: int
    checkpoint_hash_matches: bool
    differences: list[dict[str, Any]]


class RebuildOut(msgspec.Struct, frozen=True):
    chronicle_id: uuid.UUID
    events: int
    entities: int
    relationships: int
    state_hash: str


async def ecs_status(services: Services, tenant_id: uuid.UUID, chronicle_id: uuid.UUID) -> EcsStatus | None:
    async with services.engine.connect() as conn:
        chronicle = await get_chronicle(conn, tenant_id, chronicle_id)
        if chronicle is None:
            return None
    async with services.ecs_engine.connect() as conn:
        checkpoint = await read_checkpoint(conn, chronicle_id, snapshot=False)
    position = checkpoint.last_sequence if checkpoint else 0
    lag_events = max(0, chronicle.last_sequence - position)
    lag_seconds = 0.0
    if lag_events:
        async with services.engine.connect() as conn:
            oldest = await recorded_at_of(conn, chronicle_id, position + 1)
        if oldest is not None:
            lag_seconds = max(0.0, (dt.datetime.now(dt.UTC) - oldest).total_seconds())
    return EcsStatus(
        chronicle_id=chronicle_id,
        checkpoint_sequence=position,
        chronicle_sequence=chronicle.last_sequence,
        lag_events=lag_events,
        lag_seconds=round(lag_seconds, 3),
        state_hash=checkpoint.state_hash if checkpoint else None,
        parked=bool(checkpoint and checkpoint.parked_at),
        parked_reason=checkpoint.parked_reason if checkpoint else None,
        attempts=checkpoint.attempts if checkpoint else 0,
        last_error=checkpoint.last_error if checkpoint else None,
        updated_at=checkpoint.updated_at if checkpoint else None,
    )


class EcsStatusController(Controller):
    path = "/api/chronicles"
    tags = ["ecs"]  # noqa: RUF012 - Litestar reads these as class attributes

    @get("/{chronicle_id:uuid}/ecs", summary="How far the world state has been projected")
    async def status(
        self, chronicle_id: FromPath[uuid.UUID], services: ServicesDep, tenant_id: TenantId
    ) -> EcsStatus:
        async with translate_database_errors():
            status = await ecs_status(services, tenant_id, chronicle_id)
        if status is None:
            raise not_found("chronicle", chronicle_id)
        return status


class AdminEcsController(Controller):
    """Operator routes; they need an admin key and reach any tenant's chronicle."""

    path = "/api/admin/chronicles"
    tags = ["admin"]  # noqa: RUF012 - Litestar reads these as class attributes

    @post("/{chronicle_id:uuid}/ecs/rebuild", summary="Replay the chronicle into fresh state and swap it in",
          status_code=200)  # fmt: skip
    async def rebuild(
        self, chronicle_id: FromPath[uuid.UUID], services: ServicesDep, admin: AdminCaller
    ) -> RebuildOut:
        async with translate_database_errors():
            result = await rebuild_chronicle(services.engine, services.ecs_engine, chronicle_id)
        if result is None:
            raise not_found("chronicle", chronicle_id)
        return RebuildOut(**msgspec.structs.asdict(result))

    @post("/{chronicle_id:uuid}/ecs/verify", summary="Compare stored state with an in-memory replay",
          status_code=200)  # fmt: skip
    async def verify(
        self, chronicle_id: FromPath[uuid.UUID], services: ServicesDep, admin: AdminCaller
    ) -> VerifyOut:
        async with translate_database_errors():
            result = await verify_chronicle(services.engine, services.ecs_engine, chronicle_id)
        if result is None:
            raise not_found("chronicle", chronicle_id)
        return VerifyOut(
            chronicle_id=result.chronicle_id,
            ok=result.ok,
            replayed_sequence=result.replayed_sequence,
            checkpoint_sequence=result.checkpoint_sequence,
            checkpoint_hash_matches=result.checkpoint_hash_matches,
            differences=[msgspec.to_builtins(d) for d in result.differences],
        )

    @post("/{chronicle_id:uuid}/ecs/resume", summary="Un-park a chronicle so projection retries now",
          status_code=200)  # fmt: skip
    async def resume(
        self, chronicle_id: FromPath[uuid.UUID], services: ServicesDep, admin: AdminCaller
    ) -> dict[str, bool]:
        async with translate_database_errors(), services.ecs_engine.begin() as conn:
            resumed = await resume_checkpoint(conn, chronicle_id)
        if not resumed:
            raise not_found("checkpoint of chronicle", chronicle_id)
        services.projector.wake()
        return {"resumed": True}
