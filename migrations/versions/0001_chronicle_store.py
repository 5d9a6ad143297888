"""Chronicle store: tenants, API keys, chronicles, events with embeddings and full-text.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

The embedding column's dimension is taken from the configured model (`embedding_dimension` in the
alembic config attributes, or `-x embedding_dimension=N`); 384 is the default local model's.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql as pg

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("chronicle",)
depends_on: str | Sequence[str] | None = None

DEFAULT_DIMENSION = 384

SEARCH_VECTOR_SQL = (
    "setweight(to_tsvector('english'::regconfig, summary), 'A') || "
    "setweight(to_tsvector('english'::regconfig, coalesce(actor_names, '') || ' ' || "
    "coalesce(location, '')), 'B')"
)


def _dimension() -> int:
    configured = context.config.attributes.get("embedding_dimension")
    if configured is None:
        configured = context.get_x_argument(as_dictionary=True).get("embedding_dimension", DEFAULT_DIMENSION)
    return int(configured)


def upgrade() -> None:
    # Fail fast instead of queueing behind long transactions and blocking all traffic behind us.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")

    op.create_table(
        "embedding_spaces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("dimension", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "tenants",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("tenant_id = id", name="tenants_tenant_id_is_id"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "tenant_id",
            pg.UUID(as_uuid=True),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("is_admin", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_index("api_keys_tenant_idx", "api_keys", ["tenant_id"])
    op.create_table(
        "chronicles",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "tenant_id",
            pg.UUID(as_uuid=True),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("chronicle_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("metadata", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column("embedding_model", sa.String(200), nullable=False),
        sa.Column("last_sequence", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("chronicle_id = id", name="chronicles_chronicle_id_is_id"),
    )
    op.create_index("chronicles_tenant_created_idx", "chronicles", ["tenant_id", "created_at", "id"])
    op.create_table(
        "chronicle_events",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("tenant_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "chronicle_id",
            pg.UUID(as_uuid=True),
            sa.ForeignKey("chronicles.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("external_id", sa.String(200)),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("actors", pg.JSONB, nullable=False, server_default="[]"),
        sa.Column("actor_keys", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("actor_names", sa.Text),
        sa.Column("location", sa.String(200)),
        sa.Column("location_key", sa.String(200)),
        sa.Column("effects", pg.JSONB, nullable=False, server_default="[]"),
        sa.Column("entity_keys", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("occurred_at", sa.DateTime(timezone=True)),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("tags", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("importance", sa.Float, nullable=False, server_default="0.5"),
        sa.Column("embedding", Vector(_dimension())),
        sa.Column("search_vector", pg.TSVECTOR, sa.Computed(SEARCH_VECTOR_SQL, persisted=True)),
        sa.UniqueConstraint("chronicle_id", "sequence", name="chronicle_events_sequence_key"),
        sa.UniqueConstraint("chronicle_id", "external_id", name="chronicle_events_external_id_key"),
    )
    # The unique constraint above is the btree on (chronicle_id, sequence) that the projector
    # and cursor pagination read along.
    op.execute(
        "CREATE INDEX chronicle_events_embedding_hnsw ON chronicle_events "
        "USING hnsw (embedding vector_cosine_ops)"
    )
    op.create_index(
        "chronicle_events_search_gin", "chronicle_events", ["search_vector"], postgresql_using="gin"
    )
    op.create_index(
        "chronicle_events_actor_keys_gin", "chronicle_events", ["actor_keys"], postgresql_using="gin"
    )
    op.create_index(
        "chronicle_events_entity_keys_gin", "chronicle_events", ["entity_keys"], postgresql_using="gin"
    )
    op.create_index("chronicle_events_tenant_idx", "chronicle_events", ["tenant_id", "chronicle_id"])
    # Analyze after 2% new rows rather than PostgreSQL's 10%: with stale statistics the planner
    # believes a chronicle is tiny and scans it whole instead of using the HNSW and GIN indexes.
    op.execute(
        "ALTER TABLE chronicle_events SET (autovacuum_analyze_scale_factor = 0.02, "
        "autovacuum_analyze_threshold = 500)"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_table("chronicle_events")
    op.drop_table("chronicles")
    op.drop_table("api_keys")
    op.drop_table("tenants")
    op.drop_table("embedding_spaces")
    # The vector extension stays: other schemas in the database may use it.
