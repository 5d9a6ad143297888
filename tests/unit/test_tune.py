"""The offline preset tuner's pure parts: candidates, and ranking as the harness reads a bundle."""

from __future__ import annotations

import uuid

import numpy as np

from evals.tune import FULL, Case, grid, objective, parse_preset, ranked_ids
from rag.presets import get_preset
from rag.retrieval import Hit


def _id(name: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, name)


def _hit(name: str, sequence: int, source: str, rank: int) -> Hit:
    return Hit(event_id=_id(name), sequence=sequence, source=source, rank=rank, score=0.5)  # type: ignore[arg-type]


def test_ranking_puts_a_recent_event_retrieval_found_by_its_score() -> None:
    names = {"A": 1, "C": 2, "D": 9, "B": 10}
    vectors = {_id(n): np.eye(4, dtype=np.float32)[i] for i, n in enumerate(names)}  # no duplicates
    case = Case(
        dataset="d",
        query_id="q",
        evidence=["B"],
        hits={
            "vector": [_hit("A", 1, "vector", 1), _hit("B", 10, "vector", 2)],
            "lexical": [_hit("C", 2, "lexical", 1), _hit("B", 10, "lexical", 3)],
            "entity": [],
        },
        recent=[_id("B"), _id("D")],
        max_sequence=10,
        vectors=vectors,
        external_ids={_id(n): n for n in names},
    )
    # B is recent but found by two sources: it ranks first; D, recent only, comes last.
    assert ranked_ids(case, get_preset("default"), FULL) == ["B", "C", "A", "D"]
    assert ranked_ids(case, get_preset("default"), ("lexical",)) == ["C", "B", "D"]
    # With one lexical candidate, B is found by the vector source alone and falls behind A.
    assert ranked_ids(case, parse_preset("k_lexical=1"), FULL) == ["C", "A", "B", "D"]


def test_grid_and_named_presets() -> None:
    presets = list(grid(get_preset("default"), {"rrf_k": (10, 20), "weight_vector": (0.5,)}))
    assert [(p.rrf_k, p.weight_vector) for p in presets] == [(10, 0.5), (20, 0.5)]
    assert presets[0].name == "rrf_k=10,weight_vector=0.5"
    custom = parse_preset("weight_entity=2,rrf_k=15")
    assert (custom.weight_entity, custom.rrf_k, custom.weight_lexical) == (
        2.0,
        15,
        get_preset("default").weight_lexical,
    )
    assert parse_preset("lore-heavy") is get_preset("lore-heavy")


def test_objective_is_the_worst_margin_over_the_best_baseline_then_the_mean() -> None:
    scores = {
        "a": {"full": 0.8, "vector": 0.7, "lexical": 0.9},
        "b": {"full": 0.6, "vector": 0.5, "lexical": 0.4},
    }
    worst, mean = objective(scores)
    assert round(worst, 6) == -0.1 and round(mean, 6) == 0.7
