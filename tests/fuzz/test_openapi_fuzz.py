"""Schemathesis against the service's own OpenAPI schema: every operation, valid and invalid input.

Checks on every response: no 5xx; every 4xx is an RFC 9457 problem-details document; every
response matches what the schema documents for its status code and media type. Requests carry
an admin key (so admin routes are fuzzed past the 403). In the fuzzing phase, half of the
generated ids (and of the names in hybrid questions) are swapped for real ones from the sample
story, ingested and projected; the other half stay random, as do the coverage phase's.

Short by default, as part of `pytest`; `make fuzz` is the long run (sizes: see conftest.py).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.fuzz.conftest import (
    FUZZ_EXAMPLES,
    FUZZ_SEED,
    SCHEMA_PATH,
    FuzzBudget,
    FuzzWorld,
    Targets,
    served_schema,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"

SERVED = served_schema()
schema = schemathesis.openapi.from_dict(copy.deepcopy(SERVED))
if FUZZ_SEED is not None:
    schema.config.seed = FUZZ_SEED


@schemathesis.check
def problem_details_on_4xx(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any
) -> None:
    """Every 4xx is `application/problem+json` with type, title, status (its own) and detail."""
    if not 400 <= response.status_code < 500:
        return
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.split(";")[0].strip() == PROBLEM_MEDIA_TYPE, (
        f"{response.status_code} answered with content-type {content_type!r}, not {PROBLEM_MEDIA_TYPE}"
    )
    body = response.json()
    assert isinstance(body, dict), f"the problem body is not a JSON object: {body!r}"
    missing = [name for name in ("type", "title", "status", "detail") if name not in body]
    assert not missing, f"the problem body lacks {missing}: {body!r}"
    assert body["status"] == response.status_code, (
        f"problem status {body['status']} != {response.status_code}"
    )
    assert all(isinstance(body[name], str) for name in ("type", "title", "detail")), body


# `content_type_conformance` too: without it a response in a media type the schema does not
# document for its status (problem+json, text/plain) would not be validated at all.
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance, problem_details_on_4xx]


def _uuid_like(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@schema.hook
def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any]) -> Any:
    """Half the time, swap generated ids for real ones (random ids only ever reach the 404s).

    Only well-formed generated ids are swapped: a negative case (a malformed id) stays as it is.
    `a` and `b` (relationship history) become the two ends of a real relationship.
    """
    world = Targets.world
    if world is None or not path_parameters:
        return st.just(path_parameters)
    real: dict[str, st.SearchStrategy[Any]] = {}
    if _uuid_like(path_parameters.get("chronicle_id")):
        real["chronicle_id"] = st.just(world.chronicle_id)
    if _uuid_like(path_parameters.get("entity_id")):
        real["entity_id"] = st.sampled_from(world.entity_ids)
    if "a" in path_parameters and "b" in path_parameters:
        real["pair"] = st.sampled_from(world.edges)
    if not real:
        return st.just(path_parameters)
    return st.tuples(st.booleans(), st.fixed_dictionaries(real)).map(
        lambda drawn: _swap(path_parameters, drawn[1]) if drawn[0] else path_parameters
    )


def _swap(generated: dict[str, Any], real: dict[str, Any]) -> dict[str, Any]:
    swapped = {**generated, **real}
    if "pair" in swapped:
        swapped["a"], swapped["b"] = swapped.pop("pair")
    return swapped


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> Any:
    """Hybrid questions name real entities and events half the time (else: only 404s)."""
    world = Targets.world
    operation = context.operation
    if (
        world is None
        or operation is None
        or not operation.path.endswith("/query")
        or not isinstance(body, dict)
    ):
        return st.just(body)
    names = st.sampled_from(world.entity_names)
    refs = {
        "entity": st.sampled_from(world.entity_names + world.entity_ids),
        "item": names,
        "location": names,
        "toward": names,
        "a": names,
        "b": names,
        "event": st.sampled_from(world.event_refs),
    }
    present = {key: strategy for key, strategy in refs.items() if isinstance(body.get(key), str)}
    if not present:
        return st.just(body)
    return st.tuples(st.booleans(), st.fixed_dictionaries(present)).map(
        lambda drawn: {**body, **drawn[1]} if drawn[0] else body
    )


def test_fuzzed_app_serves_this_schema(fuzz_app: Any) -> None:
    """The document the cases are generated from is the one the app under test serves."""
    with asgi.get_client(fuzz_app) as client:
        response = client.get(SCHEMA_PATH)
    assert response.status_code == 200
    assert response.json() == SERVED


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    # Every example is a real request through PostgreSQL (and the embedder on writes): slow by
    # Hypothesis' standards, and timing says nothing about correctness here.
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_api_conforms_to_its_schema(
    case: schemathesis.Case,
    fuzz_app: Any,
    fuzz_world: FuzzWorld,
    fuzz_budget: FuzzBudget,
    restore_flags: Callable[[], None],
) -> None:
    fuzz_budget.check()
    try:
        case.call_and_validate(app=fuzz_app, headers=fuzz_world.headers, checks=CHECKS)
    finally:
        if case.operation.label == "PUT /api/admin/flags":
            restore_flags()
