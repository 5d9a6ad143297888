"""ECS world state: entities, components, relationships, valence history, checkpoints, outbox.

Revision ID: 0002
Revises:
Create Date: 2026-11-27

A branch of its own (`ecs`) so that these tables can live in the database named by
ECS_DATABASE_URL. Entity ids are deterministic (derived from the chronicle), so a rebuild gives
the same ids.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "0002"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("ecs",)
depends_on: str | Sequence[str] | None = None

UUID = pg.UUID(as_uuid=True)


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_table(
        "ecs_entities",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("tenant_id", UUID, nullable=False),
        sa.Column("chronicle_id", UUID, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("name_key", sa.Text, nullable=False),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("aliases", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("alias_keys", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("archetype", pg.ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("created_sequence", sa.BigInteger, nullable=False),
        sa.Column("updated_sequence", sa.BigInteger, nullable=False),
        sa.Column("created_event_id", UUID, nullable=False),
        sa.Column("updated_event_id", UUID, nullable=False),
    )
    op.create_index(
        "ecs_entities_chronicle_kind_idx", "ecs_entities", ["tenant_id", "chronicle_id", "kind", "id"]
    )
    op.create_index("ecs_entities_chronicle_name_idx", "ecs_entities", ["chronicle_id", "name_key"])
    op.create_index("ecs_entities_alias_keys_gin", "ecs_entities", ["alias_keys"], postgresql_using="gin")

    op.create_table(
        "ecs_components",
        sa.Column("entity_id", UUID, sa.ForeignKey("ecs_entities.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("type", sa.String(100), primary_key=True),
        sa.Column("tenant_id", UUID, nullable=False),
        sa.Column("chronicle_id", UUID, nullable=False),
        sa.Column("data", pg.JSONB, nullable=False),
        # Hot fields, duplicated out of `data` as native indexed columns: where things are, who
        # holds them, who is alive.
        sa.Column("location_id", UUID),
        sa.Column("holder_id", UUID),
        sa.Column("status", sa.String(100)),
        # Provenance: the event that last set this component.
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("event_id", UUID, nullable=False),
    )
    op.create_index(
        "ecs_components_data_gin", "ecs_components", ["data"], postgresql_using="gin",
        postgresql_ops={"data": "jsonb_path_ops"},
    )  # fmt: skip
    op.create_index(
        "ecs_components_location_idx", "ecs_components", ["chronicle_id", "location_id"],
        postgresql_where=sa.text("location_id IS NOT NULL"),
    )  # fmt: skip
    op.create_index(
        "ecs_components_holder_idx", "ecs_components", ["chronicle_id", "holder_id"],
        postgresql_where=sa.text("holder_id IS NOT NULL"),
    )  # fmt: skip
    op.create_index(
        "ecs_components_status_idx", "ecs_components", ["chronicle_id", "status"],
        postgresql_where=sa.text("status IS NOT NULL"),
    )  # fmt: skip
    op.create_index("ecs_components_type_idx", "ecs_components", ["chronicle_id", "type"])

    op.create_table(
        "ecs_relationships",
        sa.Column("from_id", UUID, primary_key=True),
        sa.Column("to_id", UUID, primary_key=True),
        sa.Column("tenant_id", UUID, nullable=False),
        sa.Column("chronicle_id", UUID, nullable=False),
        sa.Column("types", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column("valence", pg.JSONB, nullable=False, server_default="{}"),
        # Per valence dimension: [sequence, event id] of the change that set it.
        sa.Column("provenance", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column("created_sequence", sa.BigInteger, nullable=False),
        sa.Column("updated_sequence", sa.BigInteger, nullable=False),
    )
    op.create_index("ecs_relationships_reverse_idx", "ecs_relationships", ["to_id", "from_id"])
    # Graph pages walk edges in creation order within a chronicle.
    op.create_index(
        "ecs_relationships_chronicle_idx",
        "ecs_relationships",
        ["chronicle_id", "created_sequence", "from_id", "to_id"],
    )

    for table in ("ecs_entities", "ecs_components", "ecs_relationships"):
        # Projection writes these in large batches; keep their statistics close behind.
        op.execute(
            f"ALTER TABLE {table} SET "
            "(autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 500)"
        )

    op.create_table(
        "ecs_valence_history",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("tenant_id", UUID, nullable=False),
        sa.Column("chronicle_id", UUID, nullable=False),
        sa.Column("event_id", UUID, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("from_id", UUID, nullable=False),
        sa.Column("to_id", UUID, nullable=False),
        sa.Column("dimension", sa.String(100), nullable=False),
        sa.Column("previous", sa.Float),
        sa.Column("delta", sa.Float, nullable=False),
        sa.Column("new_value", sa.Float, nullable=False),
    )
    op.create_index(
        "ecs_valence_history_pair_idx",
        "ecs_valence_history",
        ["chronicle_id", "from_id", "to_id", "sequence"],
    )

    op.create_table(
        "ecs_checkpoints",
        sa.Column("chronicle_id", UUID, primary_key=True),
        sa.Column("tenant_id", UUID, nullable=False),
        sa.Column("last_sequence", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("state_hash", sa.String(64), nullable=False),
        # The projector's working state (the reducer's WorldState, canonical JSON), so a batch
        # does not have to rebuild it from the relational rows.
        sa.Column("snapshot", sa.LargeBinary),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Column("parked_at", sa.DateTime(timezone=True)),
        sa.Column("parked_reason", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ecs_checkpoints_tenant_idx", "ecs_checkpoints", ["tenant_id"])

    op.create_table(
        "ecs_outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("tenant_id", UUID, nullable=False),
        sa.Column("chronicle_id", UUID, nullable=False),
        sa.Column("event_id", UUID, nullable=False),
        sa.Column("entity_id", UUID),
        sa.Column("change_type", sa.String(50), nullable=False),
        sa.Column("payload", pg.JSONB, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Column("dead_lettered_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "ecs_outbox_pending_idx", "ecs_outbox", ["chronicle_id", "id"],
        postgresql_where=sa.text("sent_at IS NULL AND dead_lettered_at IS NULL"),
    )  # fmt: skip


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for table in (
        "ecs_outbox", "ecs_checkpoints", "ecs_valence_history", "ecs_relationships", "ecs_components",
        "ecs_entities",
    ):  # fmt: skip
        op.drop_table(table)
