"""ECS tables as SQLAlchemy Core objects; created only by the `ecs` branch of the migrations."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

__all__ = [
    "ecs_checkpoints",
    "ecs_components",
    "ecs_entities",
    "ecs_metadata",
    "ecs_outbox",
    "ecs_relationships",
    "ecs_valence_history",
]

ecs_metadata = MetaData()
_UUID = UUID(as_uuid=True)

ecs_entities = Table(
    "ecs_entities",
    ecs_metadata,
    Column("id", _UUID, primary_key=True),
    Column("tenant_id", _UUID, nullable=False),
    Column("chronicle_id", _UUID, nullable=False),
    Column("name", Text, nullable=False),
    Column("name_key", Text, nullable=False),
    Column("kind", String(100), nullable=False),
    Column("aliases", ARRAY(Text), nullable=False),
    Column("alias_keys", ARRAY(Text), nullable=False),
    Column("archetype", ARRAY(Text), nullable=False),
    Column("created_sequence", BigInteger, nullable=False),
    Column("updated_sequence", BigInteger, nullable=False),
    Column("created_event_id", _UUID, nullable=False),
    Column("updated_event_id", _UUID, nullable=False),
)

ecs_components = Table(
    "ecs_components",
    ecs_metadata,
    Column("entity_id", _UUID, ForeignKey("ecs_entities.id", ondelete="CASCADE"), primary_key=True),
    Column("type", String(100), primary_key=True),
    Column("tenant_id", _UUID, nullable=False),
    Column("chronicle_id", _UUID, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("location_id", _UUID),
    Column("holder_id", _UUID),
    Column("status", String(100)),
    Column("sequence", BigInteger, nullable=False),
    Column("event_id", _UUID, nullable=False),
)

ecs_relationships = Table(
    "ecs_relationships",
    ecs_metadata,
    Column("from_id", _UUID, primary_key=True),
    Column("to_id", _UUID, primary_key=True),
    Column("tenant_id", _UUID, nullable=False),
    Column("chronicle_id", _UUID, nullable=False),
    Column("types", JSONB, nullable=False),
    Column("valence", JSONB, nullable=False),
    Column("provenance", JSONB, nullable=False),
    Column("created_sequence", BigInteger, nullable=False),
    Column("updated_sequence", BigInteger, nullable=False),
)

ecs_valence_history = Table(
    "ecs_valence_history",
    ecs_metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("tenant_id", _UUID, nullable=False),
    Column("chronicle_id", _UUID, nullable=False),
    Column("event_id", _UUID, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("from_id", _UUID, nullable=False),
    Column("to_id", _UUID, nullable=False),
    Column("dimension", String(100), nullable=False),
    Column("previous", Float),
    Column("delta", Float, nullable=False),
    Column("new_value", Float, nullable=False),
)

ecs_checkpoints = Table(
    "ecs_checkpoints",
    ecs_metadata,
    Column("chronicle_id", _UUID, primary_key=True),
    Column("tenant_id", _UUID, nullable=False),
    Column("last_sequence", BigInteger, nullable=False),
    Column("state_hash", String(64), nullable=False),
    Column("snapshot", LargeBinary),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("parked_at", DateTime(timezone=True)),
    Column("parked_reason", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

ecs_outbox = Table(
    "ecs_outbox",
    ecs_metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("tenant_id", _UUID, nullable=False),
    Column("chronicle_id", _UUID, nullable=False),
    Column("event_id", _UUID, nullable=False),
    Column("entity_id", _UUID),
    Column("change_type", String(50), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("dead_lettered_at", DateTime(timezone=True)),
)
