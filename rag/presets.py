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
time are both unreliable measures of "how long ago in the telling". For scale, with ``rrf_k=60``
a single source's first rank is worth ``1/61 ~ 0.0164`` and rank 10 ``1/70 ~ 0.0143``: the
default prior (at most 0.002) can reorder near-ties by a few ranks but never outweighs being found
by a second source (another ~0.01-0.016).

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
    duplicate_threshold: float = 0.95
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
        # Balanced: meaning and words count alike, the focus entities a little less (an entity
        # match alone says the event involves someone, not that it answers the question).
        "default": RetrievalPreset(name="default"),
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
