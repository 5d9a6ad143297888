"""Request-scoped dependencies: the process services and the caller's tenant."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from app.auth import tenant_for_key
from app.database import translate_database_errors
from app.errors import ProblemError
from app.services import Services

__all__ = ["ServicesDep", "TenantId", "provide_services", "provide_tenant"]


def provide_services(state: State) -> Services:
    return state.services  # type: ignore[no-any-return]


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, "Unauthorized", detail, problem_type="unauthorized", headers={"WWW-Authenticate": "Bearer"}
    )


async def provide_tenant(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> uuid.UUID:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized("missing Authorization: Bearer <api key>")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("Authorization must be 'Bearer <api key>'")
    key = key.strip()
    cached = services.key_cache.get(key)
    if cached is not None:
        return cached
    async with translate_database_errors(), services.engine.connect() as conn:
        tenant_id = await tenant_for_key(conn, key)
    if tenant_id is None:
        raise _unauthorized("unknown or revoked API key")
    services.key_cache.put(key, tenant_id)
    return tenant_id


ServicesDep = NamedDependency[Services]
"""The process services, as a handler parameter named `services`."""
TenantId = NamedDependency[uuid.UUID]
"""The caller's tenant, as a handler parameter named `tenant_id`."""
