"""Request-scoped dependencies: the process services and the caller's tenant."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from app.auth import Caller, caller_for_key, hash_key
from app.database import translate_database_errors
from app.errors import ProblemError
from app.ratelimit import retry_after_header
from app.services import Services

__all__ = [
    "AdminCaller",
    "ServicesDep",
    "TenantId",
    "provide_admin",
    "provide_caller",
    "provide_services",
    "provide_tenant",
]


def provide_services(state: State) -> Services:
    return state.services  # type: ignore[no-any-return]


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, "Unauthorized", detail, problem_type="unauthorized", headers={"WWW-Authenticate": "Bearer"}
    )


async def provide_caller(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Caller:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized("missing Authorization: Bearer <api key>")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("Authorization must be 'Bearer <api key>'")
    key = key.strip()
    wait = services.rate_limiter.check(hash_key(key))
    if wait is not None:
        raise ProblemError(
            429, "Too many requests", f"rate limit for this API key exceeded; retry in {wait:.1f} s",
            problem_type="rate-limited", headers={"Retry-After": retry_after_header(wait)},
        )  # fmt: skip
    cached = services.key_cache.get(key)
    if cached is not None:
        request.state.tenant_id = str(cached.tenant_id)
        return cached
    async with translate_database_errors(), services.engine.connect() as conn:
        caller = await caller_for_key(conn, key)
    if caller is None:
        raise _unauthorized("unknown or revoked API key")
    services.key_cache.put(key, caller)
    request.state.tenant_id = str(caller.tenant_id)
    return caller


async def provide_tenant(caller: NamedDependency[Caller]) -> uuid.UUID:
    return caller.tenant_id


async def provide_admin(caller: NamedDependency[Caller]) -> Caller:
    if not caller.is_admin:
        raise ProblemError(403, "Forbidden", "this route needs an admin API key", problem_type="forbidden")
    return caller


ServicesDep = NamedDependency[Services]
"""The process services, as a handler parameter named `services`."""
TenantId = NamedDependency[uuid.UUID]
"""The caller's tenant, as a handler parameter named `tenant_id`."""
AdminCaller = NamedDependency[Caller]
"""The caller, checked to hold an admin key, as a handler parameter named `admin`."""
