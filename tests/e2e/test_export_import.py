"""`lore export` / `lore import`: a chronicle survives the round trip unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import msgspec
import pytest
from sqlalchemy import select

from app.cli import load_sample_story
from rag.schema import tenants
from tests.conftest import Tenant

pytestmark = pytest.mark.timeout(300)


def lore(args: list[str], database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORE_")}
    env |= {"DATABASE_URL": database_url, "REDIS_URL": "redis://127.0.0.1:1/0", "LORE_RUN_PROJECTOR": "false"}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True,
                          timeout=240, check=False)  # fmt: skip


def comparable(path) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    header = {k: v for k, v in lines[0]["chronicle"].items() if k != "id"}
    return header, [{"sequence": e["sequence"], "event": e["event"]} for e in lines[1:]]


async def test_export_import_round_trip(client, engine, tenant: Tenant, database_url, tmp_path) -> None:
    chronicle = (await client.post("/api/chronicles", json={"title": "Round trip", "metadata": {"v": 1}},
                                   headers=tenant.headers)).json()["id"]  # fmt: skip
    events = [msgspec.to_builtins(e) for e in load_sample_story()]
    events.append({"summary": "An event without an external id.", "actors": ["Nell"]})
    await client.post(f"/api/chronicles/{chronicle}/events", json={"events": events}, headers=tenant.headers)

    first = tmp_path / "first.jsonl"
    exported = lore(["export", chronicle, "--out", str(first)], database_url)
    assert exported.returncode == 0, exported.stderr
    assert "exported 41 events" in exported.stderr

    async with engine.connect() as conn:
        tenant_name = await conn.scalar(select(tenants.c.name).where(tenants.c.id == tenant.id))
    imported = lore(["import", str(first), "--tenant", tenant_name], database_url)
    assert imported.returncode == 0, imported.stderr
    new_chronicle = imported.stdout.strip()
    assert new_chronicle != chronicle

    second = tmp_path / "second.jsonl"
    assert lore(["export", new_chronicle, "--out", str(second)], database_url).returncode == 0
    assert comparable(first) == comparable(second)
    restored = (await client.get(f"/api/chronicles/{new_chronicle}", headers=tenant.headers)).json()
    assert (
        restored["title"] == "Round trip"
        and restored["metadata"] == {"v": 1}
        and restored["event_count"] == 41
    )

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "something else"}\n')
    rejected = lore(["import", str(bad), "--tenant", tenant_name], database_url)
    assert rejected.returncode == 1 and "not a chronicle export" in rejected.stderr
