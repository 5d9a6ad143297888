"""The project's seeded world generator (:mod:`evals.generator`) as a dataset.

One stream per world (per seed). The generator's query kinds are the same as the harness's, so the
mapping is direct: ``where_now``, ``who_holds``, ``is_alive``, ``feeling`` (answer
``{"dimension", "value", "sign"}``, params ``dimension``), ``what_happened``, ``who_was_at``
(subjects ``[]`` - the generator lists the answer there -, params ``event``), ``where_before``,
``state_as_of`` (params ``as_of_sequence`` and ``as_of_event``). Subjects are canonical names; the
question text may use an alias, which is kept in ``params["subject_refs"]`` when it differs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from evals.datasets.base import EvalQuery, EvalStream
from evals.datasets.common import event_json
from evals.generator import GeneratedWorld, Query, generate_world

__all__ = ["GeneratedDataset", "world_stream"]


def _query(q: Query) -> EvalQuery:
    params = dict(q.params)
    subjects = list(q.subjects)
    if q.kind == "who_was_at":
        subjects = []
    elif q.subject_refs != q.subjects:
        params["subject_refs"] = list(q.subject_refs)
    return EvalQuery(
        id=q.id,
        kind=q.kind,
        text=q.text,
        asked_after=q.asked_after,
        subjects=subjects,
        answer=q.answer,
        evidence=list(q.evidence),
        stale_values=list(q.stale_values),
        params=params,
    )


def world_stream(world: GeneratedWorld, name: str | None = None) -> EvalStream:
    return EvalStream(
        name=name or f"generator-{len(world.events)}-seed{world.seed}",
        events=[event_json(e) for e in world.events],
        queries=[_query(q) for q in world.queries],
    )


class GeneratedDataset:
    """``n_events`` events per world, one world (stream) per seed."""

    def __init__(
        self,
        n_events: int,
        seeds: Sequence[int] = (0,),
        *,
        queries_per_kind: int = 20,
        limit: int | None = None,
    ) -> None:
        if n_events < 1:
            raise ValueError(f"n_events must be positive, got {n_events}")
        if not seeds:
            raise ValueError("at least one seed is needed")
        self.n_events = n_events
        self.seeds = list(seeds)
        self.queries_per_kind = queries_per_kind
        self.limit = limit
        seed_part = "" if self.seeds == [0] else ":" + ",".join(map(str, self.seeds))
        self.name = f"generator:{n_events}{seed_part}"

    def streams(self) -> Iterator[EvalStream]:
        seeds = self.seeds if self.limit is None else self.seeds[: self.limit]
        for seed in seeds:
            world = generate_world(self.n_events, seed=seed, queries_per_kind=self.queries_per_kind)
            yield world_stream(world)
