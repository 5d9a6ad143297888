"""The projector on real PostgreSQL: follows chronicles, never double-applies, equals a replay."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest
from sqlalchemy import func, select

from app.cli import load_sample_story
from ecs import maintenance
from ecs import projector as projector_module
from ecs.maintenance import rebuild_chronicle, verify_chronicle
from ecs.projector import Projector, replay_stored
from ecs.queries import (
    GraphEdge,
    GraphFilters,
    _relation_types,
    complete_views,
    entity_view_from_state,
    get_entity_core,
    relationship_graph,
)
from ecs.reducer import apply_event, decode_state
from ecs.repository import read_checkpoint, read_snapshot, resume_checkpoint
from ecs.schema import ecs_components, ecs_entities, ecs_outbox, ecs_relationships, ecs_valence_history
from ecs.state_source import EcsStateSource, KnownNamesCache, StateViewCache
from rag.context import EntityState
from rag.events import EventIn
from rag.ingest import ingest_batch
from rag.store import EventFilters, create_chronicle, list_events
from tests.conftest import make_tenant
from tests.integration.test_concurrent_ingest import hashed_vectors


async def new_chronicle(engine) -> tuple[uuid.UUID, uuid.UUID]:
    tenant = await make_tenant(engine)
    async with engine.begin() as conn:
        row = await create_chronicle(
            conn, tenant.id, title="p", description=None, metadata={}, embedding_model="t"
        )
    return tenant.id, row.id


async def ingest(engine, tenant_id, chronicle_id, events) -> None:
    results = await ingest_batch(engine, hashed_vectors, tenant_id, chronicle_id, events)
    assert results is not None


async def entity_named(engine, chronicle_id, name: str) -> dict:
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    select(ecs_entities).where(
                        ecs_entities.c.chronicle_id == chronicle_id, ecs_entities.c.name == name
                    )
                )
            )
            .mappings()
            .one()
        )
        components = {
            r.type: r
            for r in (
                await conn.execute(select(ecs_components).where(ecs_components.c.entity_id == row["id"]))
            )
        }
    return {"row": row, "components": components}


async def test_sample_story_projects_to_the_hand_computed_state(engine) -> None:
    tenant_id, chronicle_id = await new_chronicle(engine)
    await ingest(engine, tenant_id, chronicle_id, load_sample_story())
    projector = Projector(engine, engine, batch_size=7)
    assert await projector.catch_up(chronicle_id) == 40

    bram = await entity_named(engine, chronicle_id, "Bram")
    cellar = await entity_named(engine, chronicle_id, "Lantern Cellar")
    assert bram["components"]["status"].status == "dead"
    assert bram["components"]["position"].location_id == cellar["row"]["id"]
    elara = await entity_named(engine, chronicle_id, "Elara")
    key = await entity_named(engine, chronicle_id, "Silver Key")
    assert key["components"]["holder"].holder_id == elara["row"]["id"]
    assert elara["components"]["health"].data == {"hp": 6.0, "max_hp": 10.0, "condition": None}
    corvin = await entity_named(engine, chronicle_id, "Corvin")
    assert "the Magpie" in corvin["row"]["aliases"]
    oswin = await entity_named(engine, chronicle_id, "Oswin")
    async with engine.connect() as conn:
        trust = await conn.scalar(
            select(ecs_relationships.c.valence["trust"].as_float()).where(
                ecs_relationships.c.from_id == oswin["row"]["id"],
                ecs_relationships.c.to_id == corvin["row"]["id"],
            )
        )
    assert trust == pytest.approx(-0.8)
    assert oswin["components"]["oath"].data["fulfilled_day"] == 4  # a custom component, read back unchanged

    result = await verify_chronicle(engine, engine, chronicle_id)
    assert result is not None and result.ok, result


async def test_incremental_batches_equal_one_replay_and_outbox_rows_are_written(engine) -> None:
    tenant_id, chronicle_id = await new_chronicle(engine)
    story = load_sample_story()
    projector = Projector(engine, engine, batch_size=3)
    for start in range(0, len(story), 9):
        await ingest(engine, tenant_id, chronicle_id, story[start : start + 9])
        await projector.catch_up(chronicle_id)
    result = await verify_chronicle(engine, engine, chronicle_id)
    assert result is not None and result.ok and result.checkpoint_sequence == 40

    async with engine.connect() as conn:
        checkpoint = await read_checkpoint(conn, chronicle_id)
    # checkpoint reads never carry the snapshot (megabytes for long chronicles): read_snapshot does
    assert checkpoint is not None and not hasattr(checkpoint, "snapshot")

    async with engine.connect() as conn:
        outbox = (await conn.execute(
            select(ecs_outbox.c.sequence, ecs_outbox.c.change_type).where(ecs_outbox.c.chronicle_id == chronicle_id)
            .order_by(ecs_outbox.c.id)
        )).all()  # fmt: skip
    sequences = [row.sequence for row in outbox]
    assert sequences == sorted(sequences) and set(sequences) <= set(range(1, 41))
    assert {"entity_created", "component_set", "valence_changed", "alias_added"} <= {
        r.change_type for r in outbox
    }


async def test_concurrent_projectors_never_double_apply(engine) -> None:
    tenant_id, chronicle_id = await new_chronicle(engine)
    await ingest(engine, tenant_id, chronicle_id, load_sample_story())
    workers = [Projector(engine, engine, batch_size=2) for _ in range(4)]
    await asyncio.gather(*(w.catch_up(chronicle_id, wait_for_lock=False) for w in workers))
    # Whoever skipped a locked batch may have stopped early; one more pass finishes.
    await workers[0].catch_up(chronicle_id)
    assert sum(w.stats.events_applied for w in workers) == 40
    async with engine.connect() as conn:
        valence_rows = await conn.scalar(
            select(func.count())
            .select_from(ecs_valence_history)
            .where(ecs_valence_history.c.chronicle_id == chronicle_id)
        )
    story_valence = sum(
        1 for e in load_sample_story() for f in e.effects if type(f).__name__ == "ValenceEffect"
    )
    assert valence_rows == story_valence
    result = await verify_chronicle(engine, engine, chronicle_id)
    assert result is not None and result.ok


async def test_snapshots_are_written_every_so_many_events_and_a_new_worker_restores_from_one(
    engine, monkeypatch
) -> None:
    tenant_id, chronicle_id = await new_chronicle(engine)
    story = load_sample_story()
    await ingest(engine, tenant_id, chronicle_id, story[:25])
    first = Projector(engine, engine, batch_size=5, snapshot_every_events=12)
    await first.catch_up(chronicle_id)
    async with engine.connect() as conn:
        checkpoint = await read_checkpoint(conn, chronicle_id)
        snapshot = await read_snapshot(conn, chronicle_id)
    assert checkpoint is not None and checkpoint.last_sequence == 25
    # batches end at 5, 10, ..., 25; a snapshot when 12 or more events passed since the last one
    assert snapshot is not None and decode_state(snapshot).last_sequence == 15

    await ingest(engine, tenant_id, chronicle_id, story[25:])
    # nothing in memory: restores the snapshot at 15 and replays 16..25, then 29 (snapshot), 33, 37, 40
    second = Projector(engine, engine, batch_size=4, snapshot_every_events=12)
    assert await second.catch_up(chronicle_id) == 15
    result = await verify_chronicle(engine, engine, chronicle_id)
    assert result is not None and result.ok and result.checkpoint_sequence == 40
    async with engine.connect() as conn:
        assert decode_state(await read_snapshot(conn, chronicle_id)).last_sequence == 29
    # the first worker's state in memory is stale now: it must notice, and bring it up by replaying
    # the 15 events the second worker applied (checked against the checkpoint's hash), not reuse it
    await ingest(
        engine,
        tenant_id,
        chronicle_id,
        [EventIn(summary="Bram's ghost walks to the Old Mill.", actors=["Bram"], location="Old Mill")],
    )
    restores = first.stats.restores
    assert await first.catch_up(chronicle_id) == 1
    assert (first.stats.fast_forwards, first.stats.restores) == (1, restores)
    result = await verify_chronicle(engine, engine, chronicle_id)
    assert result is not None and result.ok and result.checkpoint_sequence == 41

    # the second worker is behind by one event; with fast-forwarding switched off it restores
    await ingest(
        engine, tenant_id, chronicle_id, [EventIn(summary="Maud sweeps the Old Mill.", actors=["Maud"])]
    )
    monkeypatch.setattr(projector_module, "FAST_FORWARD_MAX_EVENTS", 0)
    restores = second.stats.restores
    assert await second.catch_up(chronicle_id) == 1
    assert (second.stats.fast_forwards, second.stats.restores) == (0, restores + 1)
    result = await verify_chronicle(engine, engine, chronicle_id)
    assert result is not None and result.ok and result.checkpoint_sequence == 42


async def test_verify_reports_tampering_and_rebuild_repairs_it(engine) -> None:
    tenant_id, chronicle_id = await new_chronicle(engine)
    await ingest(engine, tenant_id, chronicle_id, load_sample_story())
    await Projector(engine, engine).catch_up(chronicle_id)
    bram = await entity_named(engine, chronicle_id, "Bram")
    async with engine.begin() as conn:
        await conn.execute(
            ecs_components.update()
            .where(ecs_components.c.entity_id == bram["row"]["id"], ecs_components.c.type == "status")
            .values(data={"value": "alive"}, status="alive")
        )
        await conn.execute(
            ecs_entities.update().where(ecs_entities.c.id == bram["row"]["id"]).values(kind="item")
        )
    result = await verify_chronicle(engine, engine, chronicle_id)
    assert result is not None and not result.ok
    found = {(d.entity, d.component, d.field, str(d.stored), str(d.expected)) for d in result.differences}
    bram_id = str(bram["row"]["id"])
    assert (bram_id, "status", "status", "alive", "dead") in found
    assert (bram_id, None, "kind", "item", "character") in found

    rebuilt = await rebuild_chronicle(engine, engine, chronicle_id)
    assert rebuilt is not None and rebuilt.events == 40
    result = await verify_chronicle(engine, engine, chronicle_id)
    assert result is not None and result.ok, result.differences
    # A projector after the rebuild continues from the rebuilt checkpoint.
    await ingest(engine, tenant_id, chronicle_id, [EventIn(summary="Bram's ghost lingers.", actors=["Bram"])])
    assert await Projector(engine, engine).catch_up(chronicle_id) == 1
    assert (await verify_chronicle(engine, engine, chronicle_id)).ok


async def test_rebuild_and_verify_read_the_chronicle_a_page_at_a_time_with_the_same_result(
    engine, monkeypatch
) -> None:
    tenant_id, chronicle_id = await new_chronicle(engine)
    await ingest(engine, tenant_id, chronicle_id, load_sample_story())
    await Projector(engine, engine).catch_up(chronicle_id)

    async def valence_history() -> list[tuple]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(ecs_valence_history.c.sequence, ecs_valence_history.c.from_id, ecs_valence_history.c.to_id,
                       ecs_valence_history.c.dimension, ecs_valence_history.c.delta, ecs_valence_history.c.new_value)
                .where(ecs_valence_history.c.chronicle_id == chronicle_id)
                # Every column of the key: two feelings changed by one event (same sequence and
                # dimension) came back in either order after the rebuild.
                .order_by(ecs_valence_history.c.sequence, ecs_valence_history.c.dimension,
                          ecs_valence_history.c.from_id, ecs_valence_history.c.to_id)
            )  # fmt: skip
            return [tuple(r) for r in rows]

    projected_history = await valence_history()
    assert len(projected_history) >= 3
    async with engine.connect() as conn:
        projected_hash = (await read_checkpoint(conn, chronicle_id)).state_hash

    # 40 events in pages of 7: six full pages and a short one.
    monkeypatch.setattr(maintenance, "REPLAY_PAGE", 7)
    seen: list[int] = []
    rebuilt = await rebuild_chronicle(engine, engine, chronicle_id, progress=seen.append)
    assert rebuilt is not None and rebuilt.events == 40 and rebuilt.state_hash == projected_hash
    assert seen == [7, 14, 21, 28, 35, 40]
    assert await valence_history() == projected_history  # written page by page, each row once
    verified: list[int] = []
    result = await verify_chronicle(engine, engine, chronicle_id, progress=verified.append)
    assert result is not None and result.ok and result.replayed_sequence == 40
    assert verified == seen
    # A chronicle of exactly one full page ends on an empty page.
    monkeypatch.setattr(maintenance, "REPLAY_PAGE", 40)
    assert (await rebuild_chronicle(engine, engine, chronicle_id)).state_hash == projected_hash


async def test_failing_event_is_retried_then_parked_and_resumed(engine) -> None:
    tenant_id, chronicle_id = await new_chronicle(engine)
    await ingest(
        engine, tenant_id, chronicle_id, [EventIn(summary=f"calm {i}", actors=["Ina"]) for i in range(3)]
    )
    await ingest(engine, tenant_id, chronicle_id, [EventIn(summary="the cursed event", actors=["Ina"])])
    await ingest(engine, tenant_id, chronicle_id, [EventIn(summary="after", actors=["Ina"], location="Hall")])
    broken = {"on": True}

    def reducer(state, event):
        if broken["on"] and event.summary == "the cursed event":
            raise RuntimeError("reducer bug on this event")
        return apply_event(state, event)

    projector = Projector(
        engine, engine, batch_size=10, max_attempts=3, backoff_base_seconds=0.0, reducer=reducer
    )
    for _ in range(5):
        await projector.catch_up(chronicle_id)
    async with engine.connect() as conn:
        checkpoint = await read_checkpoint(conn, chronicle_id)
    assert checkpoint is not None
    assert checkpoint.last_sequence == 3  # the events before the failing one were applied
    assert checkpoint.parked_at is not None
    assert "event 4" in checkpoint.parked_reason and "reducer bug" in checkpoint.parked_reason
    assert checkpoint.attempts == 3
    assert chronicle_id not in await projector.pending_chronicles()  # later events wait

    broken["on"] = False
    async with engine.begin() as conn:
        assert await resume_checkpoint(conn, chronicle_id)
    assert await projector.catch_up(chronicle_id) == 2
    assert (await verify_chronicle(engine, engine, chronicle_id)).ok


async def test_relationship_graph_in_one_statement_equals_the_rows(engine) -> None:
    """The graph is assembled as JSON by PostgreSQL; it must say exactly what the rows say."""
    tenant_id, chronicle_id = await new_chronicle(engine)
    await ingest(engine, tenant_id, chronicle_id, load_sample_story())
    await Projector(engine, engine).catch_up(chronicle_id)
    r = ecs_relationships
    async with engine.connect() as conn:
        graph = await relationship_graph(
            conn, tenant_id, chronicle_id, GraphFilters(), after=None, limit=1000
        )
        rows = (
            await conn.execute(
                select(r)
                .where(r.c.chronicle_id == chronicle_id)
                .order_by(r.c.created_sequence, r.c.from_id, r.c.to_id)
            )
        ).all()
        names = dict((await conn.execute(select(ecs_entities.c.id, ecs_entities.c.name))).all())
    expected = [
        GraphEdge(
            from_id=row.from_id,
            to_id=row.to_id,
            types=_relation_types(row.types),
            valence={k: float(v) for k, v in row.valence.items()},
            created_sequence=row.created_sequence,
            updated_sequence=row.updated_sequence,
        )
        for row in rows
    ]
    assert graph.edges == expected and len(expected) == 14
    assert any(edge.valence for edge in graph.edges) and any(edge.types for edge in graph.edges)
    first_seen = list(dict.fromkeys(i for e in expected for i in (e.from_id, e.to_id)))
    assert [(n.id, n.name) for n in graph.nodes] == [(i, names[i]) for i in first_seen]


async def test_a_projector_keeps_a_bounded_number_of_world_states(engine) -> None:
    projector = Projector(engine, engine)
    projector.max_cached_states = 2
    chronicles = []
    for _ in range(3):
        tenant_id, chronicle_id = await new_chronicle(engine)
        await ingest(engine, tenant_id, chronicle_id, load_sample_story()[:3])
        await projector.catch_up(chronicle_id)
        chronicles.append(chronicle_id)
    assert list(projector._states) == chronicles[1:]  # the least recently projected went first


async def test_known_names_are_kept_per_checkpoint_and_renewed_when_it_moves(engine) -> None:
    tenant_id, chronicle_id = await new_chronicle(engine)
    projector = Projector(engine, engine)
    names = KnownNamesCache()

    async def known() -> tuple:
        return await EcsStateSource(engine, engine, tenant_id, chronicle_id, names=names).known_entities()

    await ingest(engine, tenant_id, chronicle_id, [EventIn(summary="Ada waits.", actors=["Ada"])])
    await projector.catch_up(chronicle_id)
    first = await known()
    assert [k.name for k in first] == ["Ada"]
    assert await known() is first  # same checkpoint: kept, not read again
    await ingest(engine, tenant_id, chronicle_id, [EventIn(summary="Bo arrives.", actors=["Bo"])])
    assert await known() is first  # not projected yet, so ECS has not changed either
    await projector.catch_up(chronicle_id)
    second = await known()
    assert [k.name for k in second] == ["Ada", "Bo"]
    # A rebuild swaps in new rows at the same sequence; the checkpoint's time says they are new.
    assert await rebuild_chronicle(engine, engine, chronicle_id) is not None
    third = await known()
    assert third is not second and third == second


async def test_views_read_together_follow_holder_chains_of_any_length(engine) -> None:
    tenant_id, chronicle_id = await new_chronicle(engine)
    story = [
        {"summary": "Ada walks into the hall.", "actors": ["Ada"], "location": "Hall",
         "effects": [{"op": "move", "entity": "Ada", "to": "Hall"}]},
        {"summary": "Ada takes the chest.", "actors": ["Ada"],
         "effects": [{"op": "transfer", "item": "Chest", "to": "Ada"}]},
        {"summary": "The pouch goes into the chest.", "effects": [{"op": "transfer", "item": "Pouch", "to": "Chest"}]},
        {"summary": "The coin goes into the pouch.", "effects": [{"op": "transfer", "item": "Coin", "to": "Pouch"}]},
        {"summary": "Ada walks to the yard.", "actors": ["Ada"], "location": "Yard",
         "effects": [{"op": "move", "entity": "Ada", "to": "Yard"}]},
    ]  # fmt: skip
    await ingest(engine, tenant_id, chronicle_id, [msgspec.convert(e, EventIn) for e in story])
    await Projector(engine, engine).catch_up(chronicle_id)
    async with engine.connect() as conn:
        events = await list_events(conn, tenant_id, chronicle_id, EventFilters(), after_sequence=0, limit=100)
        state, _, _ = replay_stored(events, chronicle_id)
        ids = sorted(state.entities)
        cores = [await get_entity_core(conn, tenant_id, uuid.UUID(i)) for i in ids]
        views = await complete_views(conn, cores)
    assert views == [entity_view_from_state(state, i) for i in ids]
    located = {v.name: v.location.name if v.location else None for v in views}
    assert located["Coin"] == located["Pouch"] == located["Chest"] == located["Ada"] == "Yard"


async def test_entity_states_are_kept_per_checkpoint_and_read_again_when_it_moves(engine) -> None:
    tenant_id, chronicle_id = await new_chronicle(engine)
    projector = Projector(engine, engine)
    states = StateViewCache(max_entities=8)

    ids: dict[str, str] = {}

    async def state_of(*names: str) -> list:
        source = EcsStateSource(engine, engine, tenant_id, chronicle_id, states=states)
        if not ids:
            ids.update({k.name: k.id for k in await source.known_entities()})
        return await source.entity_states([ids[n] for n in names], None)

    await ingest(engine, tenant_id, chronicle_id, [
        EventIn(summary="Ada waits in the hall.", actors=["Ada"], location="Hall"),
        EventIn(summary="Bo waits in the yard.", actors=["Bo"], location="Yard"),
    ])  # fmt: skip
    await projector.catch_up(chronicle_id)
    ada, bo = await state_of("Ada", "Bo")
    assert (ada.location.value, bo.location.value) == ("Hall", "Yard")
    assert (states.hits, states.misses) == (0, 2)
    # Changed behind the checkpoint's back (never done by the service): the kept views are served,
    # which shows that no row was read for them.
    async with engine.begin() as conn:
        await conn.execute(
            ecs_entities.update().where(ecs_entities.c.id == uuid.UUID(ada.id)).values(name="Tampered")
        )
    again = await state_of("Bo", "Ada")
    assert [s.id for s in again] == [bo.id, ada.id]  # in the order asked for
    assert again[1] is ada and (states.hits, states.misses) == (2, 2)
    # A projection moves the checkpoint: the next request reads the rows of the new state.
    await ingest(
        engine, tenant_id, chronicle_id, [EventIn(summary="Ada goes out.", actors=["Ada"], location="Yard")]
    )
    await projector.catch_up(chronicle_id)
    (moved,) = await state_of("Ada")
    assert moved.location.value == "Yard"
    assert (states.hits, states.misses) == (2, 3)
    # A rebuild at the same sequence saves the checkpoint again (a new time): read again.
    async with engine.begin() as conn:
        await conn.execute(
            ecs_entities.update().where(ecs_entities.c.id == uuid.UUID(ada.id)).values(name="Tampered")
        )
    assert (await state_of("Ada"))[0] is moved
    assert await rebuild_chronicle(engine, engine, chronicle_id) is not None
    (rebuilt,) = await state_of("Ada")
    assert rebuilt == moved and rebuilt is not moved  # the rebuild repaired the name
    assert (states.hits, states.misses) == (3, 4)


def test_the_state_view_cache_keeps_the_newest_version_of_a_few_chronicles() -> None:
    states = StateViewCache(max_chronicles=2, max_entities=2)
    make = lambda i: EntityState(id=i, name=i, kind="character")  # noqa: E731
    states.put("c1", "v1", make("a"))
    states.put("c1", "v1", make("b"))
    states.put("c1", "v1", make("c"))  # over max_entities: not kept
    assert states.get("c1", "v1", "a") is not None and states.get("c1", "v1", "c") is None
    states.put("c1", "v2", make("a"))  # a newer version drops the older one's views
    assert states.get("c1", "v1", "b") is None and states.get("c1", "v2", "a") is not None
    states.put("c2", "v1", make("a"))
    assert states.get("c1", "v2", "a") is not None  # c1 is now the most recent
    states.put("c3", "v1", make("a"))
    assert states.get("c2", "v1", "a") is None and states.get("c1", "v2", "a") is not None
