"""Named retrieval presets: how many candidates each source contributes and how they are weighed.

A request names a preset (``default``, ``recent-heavy``, ``lore-heavy``); per-request tweaks are
``msgspec.structs.replace(get_preset(name), top_k=5)``, which re-runs the validation.

Scoring, for an event found by the sources ``s`` at 1-based ranks ``rank_s`` (see
``rag.retrieval.fuse``)::

    score = sum_s weight_s / (rrf_k + rank_s)                                  # weighted RRF
          + recency_weight * 0.5 ** ((max_sequence - sequence) / recency_half_life)  # recency prior

The recency prior is an exponential decay by *sequence distance* from the chronicle head (or from
``as_of_sequence``): the newest event gets ``recency_weight``, one ``recency_half_life`` events
back gets half of it. Sequence distance, not wall-clock time, because story time and recording
time are both unreliable measures of "how long ago in the telling".

The ``default`` preset was tuned offline for evidence recall@10 (``evals/tune.py``: the datasets
ingested once, a grid of presets scored on a split apart from the standard evaluation's - other
generator seeds, later bAbI stories and ProPara paragraphs - and the best checked on the standard
selection, which also decided between near-ties). What the grid showed, on the seeded generator,
bAbI 1/2/5/6 and ProPara:

* the focus entities are the strongest signal (``weight_entity`` 1.5): the questions are about
  them, and an event involving them is usually what answers;
* the words as before (1.0), the embedding far less (0.3): alone it is the weakest source on
  every dataset here (short narrative sentences about the same people and places embed nearly
  alike), so a full weight mostly adds noise; it still finds what the other two cannot, e.g. the
  holder's move that answers "where is the football";
* ``rrf_k`` 30 instead of the usual 60, so that first ranks count more than long tails;
* a stronger recency prior (0.005, half-life 100): "where is X now" is answered by X's latest
  events, and the entity source ranks an entity's events by importance before age (0.01 scored a
  little higher still, but let the newest events outrank clearly better vector matches);
* ``duplicate_threshold`` 0.99: at 0.95 the collapse merged different events - "Bill gave the
  apple to Jeff" and "Jeff gave the apple to Bill" (cosine 0.989), or the same walk made twice -
  and could keep the older one, dropping the evidence.

For scale: the first lexical rank is worth ``1/31 ~ 0.032`` (rank 40: ``1/70 ~ 0.014``), the
first entity rank ``1.5/31 ~ 0.048``, the first vector rank ``0.3/31 ~ 0.0097``; the prior gives
the newest event ``0.005``, half a top vector rank, so it reorders events the sources support
about equally (and breaks the many ties among an entity's events) but does not outweigh being
found by a second source. These are measurements on template-like datasets; prose with more
paraphrase may want more vector weight (``lore-heavy`` and ``recent-heavy`` keep its full weight).

Near-duplicate collapse and diversity (``rag.retrieval.collapse_near_duplicates``): the best
``rerank_pool`` fused candidates are re-selected by MMR,
``mmr_lambda * score / best_score - (1 - mmr_lambda) * max(0, max cosine to the selected)``;
a candidate whose cosine to an already selected event exceeds ``duplicate_threshold`` is dropped
and recorded as collapsed into it. ``mmr_lambda = 1`` keeps the fused order exactly and only
collapses duplicates.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import msgspec

__all__ = ["DEFAULT_PRESET", "PRESETS", "RetrievalPreset", "get_preset"]

# pgvector's limit for hnsw.ef_search.
_MAX_EF_SEARCH: Final = 1_000


class RetrievalPreset(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    # Candidates fetched per source before fusion.
    k_vector: int = 40
    k_lexical: int = 40
    k_entity: int = 40
    # RRF weights per source.
    weight_vector: float = 1.0
    weight_lexical: float = 1.0
    weight_entity: float = 0.7
    rrf_k: int = 60
    # Recency prior (see the module docstring); 0 disables it.
    recency_weight: float = 0.002
    recency_half_life: float = 100.0
    # MMR trade-off between relevance (1.0) and diversity, and the cosine above which two events
    # are the same event told twice.
    mmr_lambda: float = 0.85
    # Cosine is blind to who did what to whom ("A gave B the apple" vs "B gave A the apple": 0.989)
    # and to a walk made twice: only nearly identical vectors are the same event told twice.
    duplicate_threshold: float = 0.99
    # Fused candidates loaded (with their embeddings) and re-selected by MMR.
    rerank_pool: int = 40
    # Events returned.
    top_k: int = 10
    # HNSW search breadth (hnsw.ef_search) and how far an iterative scan may go when the filter
    # (chronicle, as-of, point of view) rejects most of what the index finds (hnsw.max_scan_tuples).
    ef_search: int = 100
    max_scan_tuples: int = 20_000

    def __post_init__(self) -> None:
        problems: list[str] = []
        for field in ("k_vector", "k_lexical", "k_entity", "rrf_k", "top_k", "rerank_pool"):
            if getattr(self, field) < 1:
                problems.append(f"{field} must be >= 1")
        for field in ("weight_vector", "weight_lexical", "weight_entity", "recency_weight"):
            if not getattr(self, field) >= 0.0:  # also rejects NaN
                problems.append(f"{field} must be >= 0")
        if not self.recency_half_life > 0.0:
            problems.append("recency_half_life must be > 0")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            problems.append("mmr_lambda must be within [0, 1]")
        if not 0.0 < self.duplicate_threshold <= 1.0:
            problems.append("duplicate_threshold must be within (0, 1]")
        if not 1 <= self.ef_search <= _MAX_EF_SEARCH:
            problems.append(f"ef_search must be within [1, {_MAX_EF_SEARCH}]")
        if self.max_scan_tuples < 1:
            problems.append("max_scan_tuples must be >= 1")
        if self.rerank_pool < self.top_k:
            problems.append("rerank_pool must be >= top_k")
        if problems:
            raise ValueError(f"invalid retrieval preset {self.name!r}: {'; '.join(problems)}")

    def weight(self, source: str) -> float:
        """The RRF weight of a source (``vector``, ``lexical`` or ``entity``)."""
        match source:
            case "vector":
                return self.weight_vector
            case "lexical":
                return self.weight_lexical
            case "entity":
                return self.weight_entity
        raise KeyError(f"unknown retrieval source {source!r}")

    def k(self, source: str) -> int:
        """Candidates fetched from a source."""
        match source:
            case "vector":
                return self.k_vector
            case "lexical":
                return self.k_lexical
            case "entity":
                return self.k_entity
        raise KeyError(f"unknown retrieval source {source!r}")


DEFAULT_PRESET: Final = "default"

PRESETS: Final[Mapping[str, RetrievalPreset]] = MappingProxyType(
    {
        # Tuned for recall@10 (see the module docstring): the focus entities count most, then the
        # words, the embedding least; sharper ranks and a stronger recency prior.
        "default": RetrievalPreset(
            name="default",
            weight_vector=0.3,
            weight_lexical=1.0,
            weight_entity=1.5,
            rrf_k=30,
            recency_weight=0.005,
            recency_half_life=100.0,
        ),
        # "What just happened": a strong prior towards the last ~20 events, and the focus entities
        # weigh as much as the words, since recent scenes are usually about who is on stage.
        "recent-heavy": RetrievalPreset(
            name="recent-heavy",
            weight_lexical=0.8,
            weight_entity=1.0,
            recency_weight=0.012,
            recency_half_life=20.0,
            mmr_lambda=0.9,
        ),
        # Background and world facts: a deeper candidate list, exact words (names of places,
        # items, oaths) count more, almost no recency, and more diversity in what is returned.
        # Not tuned: meaning keeps its full weight here.
        "lore-heavy": RetrievalPreset(
            name="lore-heavy",
            k_vector=60,
            k_lexical=60,
            k_entity=30,
            weight_lexical=1.3,
            weight_entity=0.5,
            recency_weight=0.0005,
            recency_half_life=500.0,
            mmr_lambda=0.7,
            rerank_pool=60,
            top_k=12,
            ef_search=150,
        ),
    }
)


def get_preset(name: str) -> RetrievalPreset:
    """The preset called ``name``; KeyError naming the available presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(
            f"unknown retrieval preset {name!r}; available: {', '.join(sorted(PRESETS))}"
        ) from None
