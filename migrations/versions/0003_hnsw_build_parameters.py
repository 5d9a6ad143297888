"""HNSW index on event embeddings built with m = 12 (pgvector's default is 16).

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-28

Inserting into the index was most of an ingest's database time, and the neighbour lists are most
of an insertion: each new vector rewrites up to 2 x m neighbours' lists. Measured on 2 cores with
the local model's vectors of generated summaries, appending 100 events to a chronicle of a few
thousand took 265 ms with m = 16, 195 ms with m = 12 and 46 ms with no index; batched ingest over
HTTP went from 0.83 to 0.88 of the bare embedder's throughput (the README's ingest figures).
Recall@10 of the default preset's vector search (40 candidates, ef_search 100, relaxed order)
against exact search: 0.9985 -> 0.996 at 30,000 events, 0.981 -> 0.975 at 100,000. A smaller
ef_construction (40) saved little more at insert and cost more recall (0.961 at 100,000).

An upgrade rebuilds the index: on a large chronicle store that takes a while (about a minute for
100,000 events on 2 cores), during which writes to chronicle_events wait.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "chronicle_events_embedding_hnsw"


def _rebuild(options: str) -> None:
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
    op.execute(f"CREATE INDEX {INDEX} ON chronicle_events USING hnsw (embedding vector_cosine_ops){options}")


def upgrade() -> None:
    _rebuild(" WITH (m = 12)")


def downgrade() -> None:
    _rebuild("")
