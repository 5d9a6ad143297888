"""Tables of the chronicle database, as SQLAlchemy Core objects for queries.

The schema itself is created only by the alembic migrations in `migrations/`; these definitions
must mirror them (a test compares the two). Every table carries `tenant_id`, and `chronicle_id`
where it applies, so that the data can later be distributed by either.
"""

from __future__ import annotations

from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    REAL,
    BigInteger,
    Column,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    cast,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR, UUID
from sqlalchemy.sql.elements import BindParameter, ColumnElement

__all__ = ["api_keys", "chronicle_events", "chronicles", "embedding_spaces", "metadata", "tenants"]

metadata = MetaData()


class StoredVector(Vector):
    """A pgvector column written as a binary `real[]` parameter cast to `vector` by the server.

    pgvector's own type formats every float as text on the client and the server parses it back:
    about 0.3 ms per 384-dimension vector, a few percent of a 100-event ingest. asyncpg encodes a
    list of floats as a binary `real[]` in C, and PostgreSQL's `real[]::vector` cast is cheap.
    Reads are unchanged (queries that need vectors select them with `vector_send`).
    """

    cache_ok = True

    def bind_processor(self, dialect: Any) -> None:
        return None

    def bind_expression(self, bindvalue: BindParameter[Any]) -> ColumnElement[Any]:
        return cast(cast(bindvalue, ARRAY(REAL)), Vector())


# The one deployment-wide table: which embedding model the vectors in this database come from.
# Mixing models would make cosine distances meaningless, so startup refuses a different one.
embedding_spaces = Table(
    "embedding_spaces",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("model_id", String(200), nullable=False),
    Column("dimension", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),  # equals id; kept for uniform sharding
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("is_admin", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
)

chronicles = Table(
    "chronicles",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("chronicle_id", UUID(as_uuid=True), nullable=False),  # equals id; kept for uniform sharding
    Column("title", String(500), nullable=False),
    Column("description", Text),
    Column("metadata", JSONB, nullable=False, server_default="{}"),
    Column("embedding_model", String(200), nullable=False),
    # The per-chronicle sequence counter. Ingest increments it under the row lock, which is what
    # makes sequences gap-free and commit-ordered.
    Column("last_sequence", BigInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

SEARCH_VECTOR_SQL = (
    "setweight(to_tsvector('english'::regconfig, summary), 'A') || "
    "setweight(to_tsvector('english'::regconfig, coalesce(actor_names, '') || ' ' || "
    "coalesce(location, '')), 'B')"
)


# The vector dimension is fixed by the migration from the configured embedding model; queries do
# not need to know it.
chronicle_events = Table(
    "chronicle_events",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column(
        "chronicle_id", UUID(as_uuid=True), ForeignKey("chronicles.id", ondelete="CASCADE"), nullable=False
    ),
    Column("sequence", BigInteger, nullable=False),
    Column("external_id", String(200)),
    Column("kind", String(100), nullable=False),
    Column("summary", Text, nullable=False),
    Column("actors", JSONB, nullable=False, server_default="[]"),
    Column("actor_keys", ARRAY(Text), nullable=False, server_default="{}"),
    Column("actor_names", Text),
    Column("location", String(200)),
    Column("location_key", String(200)),
    Column("effects", JSONB, nullable=False, server_default="[]"),
    Column("entity_keys", ARRAY(Text), nullable=False, server_default="{}"),
    Column("occurred_at", DateTime(timezone=True)),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("tags", ARRAY(Text), nullable=False, server_default="{}"),
    Column("importance", Float, nullable=False, server_default="0.5"),
    Column("embedding", StoredVector()),
    Column("search_vector", TSVECTOR, Computed(SEARCH_VECTOR_SQL, persisted=True)),
)
