"""Tenants and API keys. Keys are stored only as SHA-256 hashes and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid

import msgspec
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from rag.schema import api_keys, tenants

__all__ = [
    "Caller",
    "KeyCache",
    "caller_for_key",
    "create_tenant",
    "find_tenant",
    "hash_key",
    "issue_key",
    "new_key",
    "tenant_for_key",
]

KEY_PREFIX = "lk_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


async def create_tenant(conn: AsyncConnection, name: str, *, admin: bool = False) -> tuple[uuid.UUID, str]:
    """Create a tenant and its first API key; the raw key is returned once and never stored."""
    tenant_id = uuid.uuid4()
    await conn.execute(insert(tenants).values(id=tenant_id, tenant_id=tenant_id, name=name))
    return tenant_id, await issue_key(conn, tenant_id, admin=admin)


async def find_tenant(conn: AsyncConnection, name: str) -> uuid.UUID | None:
    return await conn.scalar(select(tenants.c.id).where(tenants.c.name == name))


async def issue_key(conn: AsyncConnection, tenant_id: uuid.UUID, *, admin: bool = False) -> str:
    key = new_key()
    await conn.execute(
        insert(api_keys).values(
            id=uuid.uuid4(), tenant_id=tenant_id, key_hash=hash_key(key), prefix=key[:10], is_admin=int(admin)
        )
    )
    return key


class Caller(msgspec.Struct, frozen=True):
    tenant_id: uuid.UUID
    is_admin: bool


async def caller_for_key(conn: AsyncConnection, key: str) -> Caller | None:
    digest = hash_key(key)
    row = (
        await conn.execute(
            select(api_keys.c.tenant_id, api_keys.c.key_hash, api_keys.c.is_admin).where(
                api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
            )
        )
    ).first()
    # The lookup is by hash, so timing reveals nothing about the key; compare_digest keeps the
    # final check constant-time as well.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return Caller(tenant_id=row.tenant_id, is_admin=bool(row.is_admin))


async def tenant_for_key(conn: AsyncConnection, key: str) -> uuid.UUID | None:
    caller = await caller_for_key(conn, key)
    return None if caller is None else caller.tenant_id


class KeyCache:
    """Resolved keys for a few seconds, so that authentication costs no query on hot paths.

    A revoked key stops working within `ttl_seconds`.
    """

    def __init__(self, ttl_seconds: float = 10.0, max_entries: int = 10_000) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: dict[str, tuple[float, Caller]] = {}

    def get(self, key: str) -> Caller | None:
        entry = self._entries.get(hash_key(key))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, caller: Caller) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[hash_key(key)] = (time.monotonic() + self._ttl, caller)
