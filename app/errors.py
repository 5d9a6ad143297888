"""RFC 9457 problem details for every error the API returns.

One error base class carries status and type; one set of handlers turns it, Litestar's own
exceptions, and database outages into `application/problem+json`. Unexpected errors are logged
with their stack trace and answered with a 500 that carries none.
"""

from __future__ import annotations

import inspect
import logging
import re
from http import HTTPStatus
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from app.database import DatabaseUnavailable, is_unavailable_error
from rag.embedding import EmbeddingConfigError, EmbeddingUnavailable
from rag.store import EmbeddingSpaceMismatch

__all__ = [
    "FieldError",
    "ProblemDetails",
    "ProblemError",
    "document_problem_responses",
    "exception_handlers",
    "problem_response",
]

log = logging.getLogger("lore.errors")

PROBLEM_TYPE_BASE = "https://lorekeeper.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = "2"


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str
    index: int | None = None


class ProblemDetails(msgspec.Struct, frozen=True, kw_only=True):
    """The body of every error response, as `problem_response` builds it; for the OpenAPI schema.

    Problem types may add members of their own (RFC 9457 extensions), so others are allowed.
    """

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


class ProblemError(Exception):
    """An error the client should see, with its HTTP status and a stable problem type."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        problem_type: str,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.problem_type = problem_type
        self.errors = errors or []
        self.headers = headers or {}
        self.extra = extra or {}


def not_found(what: str, identifier: object) -> ProblemError:
    return ProblemError(404, "Not found", f"{what} {identifier} does not exist", problem_type="not-found")


def bad_parameter(field: str, message: str) -> ProblemError:
    return ProblemError(
        400, "Invalid parameter", f"{field}: {message}", problem_type="invalid-parameter",
        errors=[FieldError(field=field, message=message)],
    )  # fmt: skip


def invalid_parameter(field: str, message: str) -> ProblemError:
    """A 422 for a value of the right type that cannot be honoured (a template that does not exist,
    an ``as_of_sequence`` after the last event)."""
    return ProblemError(
        422, "Invalid request", f"{field}: {message}", problem_type="invalid-request",
        errors=[FieldError(field=field, message=message)],
    )  # fmt: skip


def invalid_events(errors: list[FieldError]) -> ProblemError:
    """A 422 naming each event (index) and field a batch was refused for."""
    detail = "; ".join(f"event {e.index}: {e.field}: {e.message}" for e in errors)
    return ProblemError(422, "Invalid request", detail, problem_type="invalid-request", errors=errors)


def problem_response(
    request: Request[Any, Any, Any] | None,
    status: int,
    title: str,
    detail: str,
    problem_type: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + problem_type,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
    if errors:
        body["errors"] = [msgspec.to_builtins(e) for e in errors]
    if extra:
        body.update(extra)
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _handle_problem(request: Request[Any, Any, Any], exc: ProblemError) -> Response[dict[str, Any]]:
    return problem_response(
        request, exc.status, exc.title, exc.detail, exc.problem_type, exc.errors, exc.headers, exc.extra
    )


_INDEX = re.compile(r"\[(\d+)\]")
_OBJECT_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `([^`]+)`")


def _field_error(item: dict[str, Any]) -> FieldError:
    message = str(item.get("message", "invalid value"))
    key = str(item.get("key", "") or "")
    # msgspec reports post-init errors at the object; we keep its path (`events[3].effects[0]`).
    key = key.removeprefix("$.").removeprefix("data.")
    if key in ("data", "$"):
        key = ""  # the body itself
    named = _OBJECT_FIELD.search(message)
    if named is not None:
        # "Object missing required field `query`" is reported at the object; the field is the
        # one a client has to mend.
        key = f"{key}.{named.group(1)}" if key else named.group(1)
    match = _INDEX.search(key)
    index = int(match.group(1)) if match and key.startswith("events[") else None
    return FieldError(field=key or "body", message=message, index=index)


def _handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    raw = exc.extra if isinstance(exc.extra, list) else []
    errors = [_field_error(item) for item in raw if isinstance(item, dict)]
    body_errors = any(isinstance(item, dict) and item.get("source") == "body" for item in raw)
    if errors:
        detail = "; ".join(
            (f"event {e.index}: " if e.index is not None else "") + f"{e.field}: {e.message}" for e in errors
        )
    else:
        detail = str(exc.detail)
    # Body that parsed as JSON but does not fit the schema is 422; malformed JSON and bad
    # query or path parameters are 400.
    malformed = _is_unparsable(detail)
    if malformed:
        detail = _not_json(detail)
    status = 422 if body_errors and not malformed else 400
    return problem_response(request, status, "Invalid request", detail, "invalid-request", errors)


def _is_unparsable(detail: str) -> bool:
    return "malformed" in detail.lower() or "Input data was truncated" in detail


def _not_json(detail: str) -> str:
    # The parser's "Input data was truncated" is also what a lone surrogate escape (\ud800) gets:
    # say what the body must be.
    return f"the request body is not valid JSON in UTF-8 ({detail})"


def _handle_not_utf8(request: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[dict[str, Any]]:
    # Found by a client sending Latin-1: the JSON parser raises this (not its own DecodeError) for
    # bytes that are not UTF-8, and it came back as a 500.
    detail = f"the request body is not valid JSON in UTF-8 (byte {exc.start}: {exc.reason})"
    return problem_response(
        request, 400, "Invalid request", detail, "invalid-request", [FieldError(field="body", message=detail)]
    )


def _handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    title = {401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
             413: "Request too large", 429: "Too many requests"}.get(status, "Error")  # fmt: skip
    headers = dict(exc.headers or {})
    detail = str(exc.detail)
    if status == 404 and detail == "Not Found":
        detail = f"no route for {request.method} {request.url.path}"
    if status == 400 and _is_unparsable(detail):  # a body read as JSON by the handler itself
        return problem_response(request, 400, "Invalid request", _not_json(detail), "invalid-request",
                                [FieldError(field="body", message=_not_json(detail))])  # fmt: skip
    return problem_response(request, status, title, detail, title.lower().replace(" ", "-"), headers=headers)


def _handle_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        request, 503, "Service unavailable", "the database is unreachable or timed out; retry shortly",
        "database-unavailable", headers={"Retry-After": RETRY_AFTER_SECONDS},
    )  # fmt: skip


def _handle_embedding_unavailable(
    request: Request[Any, Any, Any], exc: Exception
) -> Response[dict[str, Any]]:
    log.warning("embedder unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        request, 503, "Service unavailable",
        f"the embedding model is unavailable ({exc}); nothing was stored",
        "embedding-unavailable", headers={"Retry-After": RETRY_AFTER_SECONDS},
    )  # fmt: skip


def _handle_embedding_config(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.error("embedder misconfigured on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        request, 502, "Embedding service error", f"{exc}; nothing was stored", "embedding-error"
    )


# PostgreSQL refuses NUL (U+0000) in text and jsonb: character_not_in_repertoire (text
# parameters) and untranslatable_character (a \u0000 escape in jsonb).
_UNSTORABLE_TEXT_SQLSTATES = frozenset({"22021", "22P05"})


def _unrepresentable_input(exc: BaseException) -> str | None:
    """Why the database could not take a value the client sent, if that is what `exc` is."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(seen) < 16:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if getattr(error, "sqlstate", None) in _UNSTORABLE_TEXT_SQLSTATES:
            return "text must not contain NUL (U+0000) characters: they cannot be stored or searched"
        if isinstance(error, asyncpg.DataError) and isinstance(error.__cause__, OverflowError):
            # asyncpg could not encode a parameter as bigint (only then: other OverflowErrors are ours)
            return "an integer is out of range (at most 9223372036854775807)"
        # Explicit chains only (SQLAlchemy's `orig`, `raise ... from`), never an unrelated context.
        causes = (getattr(error, "orig", None), error.__cause__)
        pending += [cause for cause in causes if isinstance(cause, BaseException)]
    return None


def _handle_internal(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, DatabaseUnavailable) or is_unavailable_error(exc):
        return _handle_unavailable(request, exc)
    if isinstance(exc, EmbeddingSpaceMismatch):
        return problem_response(
            request, 409, "Embedding model mismatch", str(exc), "embedding-model-mismatch"
        )
    reason = _unrepresentable_input(exc)
    if reason is not None:
        # Found by fuzzing (tests/fuzz): client values the database cannot take came back as 500s.
        # A NUL in nearly any string (a chronicle title or its metadata, a query filter, a path
        # name, a context query, a hybrid question), and an integer past bigint (`from_sequence`,
        # `as_of_sequence`, a question's `sequence`). They are the client's input: 422 in a
        # body (the only place a POST or PUT here carries them), 400 in query or path parameters.
        # (Event batches reject NUL up front, naming the field: rag.events._NO_NUL.)
        status = 422 if request.method in ("POST", "PUT", "PATCH") else 400
        return problem_response(request, status, "Invalid request", reason, "invalid-request")
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        request, HTTP_500_INTERNAL_SERVER_ERROR, "Internal server error",
        "an unexpected error occurred; it has been logged", "internal",
    )  # fmt: skip


exception_handlers: dict[Any, Any] = {
    ProblemError: _handle_problem,
    ValidationException: _handle_validation,
    HTTPException: _handle_http,
    DatabaseUnavailable: _handle_unavailable,
    EmbeddingUnavailable: _handle_embedding_unavailable,
    EmbeddingConfigError: _handle_embedding_config,
    UnicodeDecodeError: _handle_not_utf8,
    Exception: _handle_internal,
}


# Handler parameters that are filled in by dependencies, not sent by the client.
_INJECTED = frozenset({"self", "services", "tenant_id", "admin", "caller", "request", "scope", "state"})


def _problem_statuses(path: str, handler: HTTPRouteHandler) -> list[int]:
    parameters = set(inspect.signature(handler.fn).parameters)
    statuses: set[int] = set()
    if parameters & {"tenant_id", "admin", "caller"}:
        # Authentication: a missing or unknown key, the per-key rate limit, and the key lookup's
        # database being unreachable.
        statuses |= {401, 429, 503}
    if "admin" in parameters:
        statuses.add(403)
    if "{" in path:
        statuses.add(404)
    if parameters - _INJECTED:
        statuses.add(400)
    if "data" in parameters:
        statuses |= {413, 422}
    return sorted(statuses)


def document_problem_responses(app: Litestar) -> None:
    """Declare, on every `/api` operation, the problem-details errors it can answer with.

    Found by fuzzing the API against its own OpenAPI schema (tests/fuzz): Litestar documents only a
    400, as `application/json` with the body of its own ValidationException, while every error
    here is `application/problem+json` with a `ProblemDetails` body (the handlers above), and the
    401/403/404/422/429/503 were not documented at all. Declared from the handler's signature
    (authenticated, admin, path or body parameters) so that a new route is documented too; a
    response a handler declares itself wins. Call before the schema is first built (it is built
    lazily, on the first request for it).
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith("/api/"):
            continue
        for handler in route.route_handlers:
            if "OPTIONS" in handler.http_methods:
                continue
            problems = {
                status: ResponseSpec(
                    data_container=ProblemDetails,
                    media_type=PROBLEM_MEDIA_TYPE,
                    description=HTTPStatus(status).phrase,
                    generate_examples=False,
                )
                for status in _problem_statuses(route.path, handler)
            }
            handler.responses = {**problems, **(handler.responses or {})}
