"""What every dataset adapter produces: streams of events with the questions asked along the way.

A stream becomes one fresh chronicle. Its events are ingested in order; each query is asked after
`asked_after` events have been ingested (and projected), so a harness can ingest up to a query's
point, ask, and go on. Gold answers are plain JSON values so reports can show them.

Query kinds and the shape of their `answer`:

| kind | subjects | answer | params |
|---|---|---|---|
| where_now | [entity] | location name, or None (nowhere / unknown) | |
| who_holds | [item] | holder name, or None | |
| is_alive | [entity] | "yes" / "no" | |
| exists | [entity] | "yes" / "no" (ProPara: the participant exists) | |
| is_at | [entity, location] | "yes" / "no" | |
| feeling | [from, to] | {"dimension", "value", "sign"} | {"dimension"} |
| what_happened | [entity] | {"status", "location"} | |
| who_was_at | [] | sorted list of names | {"event": external id} |
| where_before | [entity] | location name | |
| state_as_of | [entity] | location name | {"as_of_sequence"} |
| who_gave | [item, receiver] | giver name | |
| what_given | [giver, receiver] | item name | |
| who_received | [item, giver] | receiver name | |

`evidence` lists the external ids of the events that establish the answer; `stale_values` lists
values a careless system would give (earlier, superseded values), never the answer itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, Protocol

import msgspec

__all__ = ["QUERY_KINDS", "Dataset", "EvalQuery", "EvalStream", "QueryKind"]

QueryKind = Literal[
    "where_now", "who_holds", "is_alive", "exists", "is_at", "feeling", "what_happened", "who_was_at",
    "where_before", "state_as_of", "who_gave", "what_given", "who_received",
]  # fmt: skip
QUERY_KINDS: tuple[str, ...] = QueryKind.__args__  # type: ignore[attr-defined]


class EvalQuery(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    kind: str
    text: str
    asked_after: int
    subjects: list[str] = []
    answer: Any = None
    evidence: list[str] = []
    stale_values: list[Any] = []
    params: dict[str, Any] = {}


class EvalStream(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    events: list[dict[str, Any]]
    """Events as the HTTP API takes them (rag.events.EventIn as JSON), each with an external_id."""
    queries: list[EvalQuery]


class Dataset(Protocol):
    name: str

    def streams(self) -> Iterator[EvalStream]: ...
