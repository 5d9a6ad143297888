"""Property: for random valid event streams, projector output == in-memory replay == rebuild."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecs.maintenance import rebuild_chronicle, verify_chronicle
from ecs.projector import Projector, replay_stored
from ecs.queries import complete_views, entity_view_from_state, get_entity_core
from ecs.repository import read_checkpoint
from ecs.state_source import EcsStateSource
from rag.events import (
    AliasEffect,
    DestroyEffect,
    EventIn,
    MoveEffect,
    RelateEffect,
    SetEffect,
    StatusEffect,
    TransferEffect,
    UnrelateEffect,
    UnsetEffect,
    ValenceEffect,
)
from rag.store import EventFilters, list_events
from tests.integration.test_projector import ingest, new_chronicle

PEOPLE = ["Ada", "Bo", "Cyr", "the Fox"]
PLACES = ["Hall", "Yard", "Tower"]
ITEMS = ["Lamp", "Coin"]
names = st.sampled_from(PEOPLE)
effects = st.one_of(
    st.builds(MoveEffect, entity=names, to=st.sampled_from(PLACES)),
    st.builds(
        TransferEffect, item=st.sampled_from(ITEMS), to=names, from_=st.one_of(st.none(), names)
    ),  # fmt: skip
    st.builds(StatusEffect, entity=names, status=st.sampled_from(["alive", "dead", "missing", "weary"])),
    st.builds(
        ValenceEffect,
        from_=names,
        to=names,
        dimension=st.sampled_from(["trust", "fear"]),
        delta=st.floats(-0.7, 0.7, allow_nan=False),
    ),  # fmt: skip
    st.builds(
        ValenceEffect,
        from_=names,
        to=names,
        dimension=st.just("trust"),
        value=st.floats(-2, 2, allow_nan=False),
    ),  # fmt: skip
    st.builds(RelateEffect, from_=names, to=names, type=st.sampled_from(["ally", "rival"])),
    st.builds(UnrelateEffect, from_=names, to=names, type=st.sampled_from(["ally", "rival"])),
    st.builds(
        SetEffect,
        entity=names,
        component=st.sampled_from(["health", "mood"]),
        # NUL is rejected at the API (PostgreSQL text cannot hold it), so no valid event carries one.
        value=st.one_of(
            st.builds(dict, hp=st.integers(0, 10)),
            st.text(st.characters(blacklist_characters="\x00"), max_size=5),
        ),
    ),  # fmt: skip
    st.builds(UnsetEffect, entity=names, component=st.sampled_from(["health", "mood"])),
    st.builds(AliasEffect, entity=names, alias=st.sampled_from(["the Fox", "Red", "Old One"])),
    st.builds(DestroyEffect, entity=st.sampled_from(ITEMS)),
)
events = st.builds(
    EventIn,
    summary=st.text(min_size=1, max_size=20).filter(lambda s: s.strip() and "\x00" not in s),
    actors=st.lists(names, max_size=3),
    location=st.one_of(st.none(), st.sampled_from(PLACES)),
    effects=st.lists(effects, max_size=4),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.lists(events, min_size=1, max_size=25), batch_size=st.integers(1, 7))
async def test_projection_equals_replay_and_rebuild(engine, stream, batch_size) -> None:
    tenant_id, chronicle_id = await new_chronicle(engine)
    # Ingest in two parts with projection in between, as a live service would.
    middle = len(stream) // 2
    projector = Projector(engine, engine, batch_size=batch_size)
    await ingest(engine, tenant_id, chronicle_id, stream[:middle] or stream)
    await projector.catch_up(chronicle_id)
    if middle:
        await ingest(engine, tenant_id, chronicle_id, stream[middle:])
        await projector.catch_up(chronicle_id)
    verified = await verify_chronicle(engine, engine, chronicle_id)
    assert verified is not None and verified.ok, verified.differences
    await assert_views_read_together_equal_the_replay(engine, tenant_id, chronicle_id)
    async with engine.connect() as conn:
        projected_hash = (await read_checkpoint(conn, chronicle_id)).state_hash
    rebuilt = await rebuild_chronicle(engine, engine, chronicle_id)
    assert rebuilt is not None and rebuilt.state_hash == projected_hash
    assert (await verify_chronicle(engine, engine, chronicle_id)).ok


async def assert_views_read_together_equal_the_replay(engine, tenant_id, chronicle_id) -> None:
    """Every entity's view, all read in one batch (holder chains walked together, relationships
    of both ends in the batch), equals the view built from the replayed state; and the context's
    state of all of them at once equals their states asked for one by one."""
    async with engine.connect() as conn:
        events = await list_events(
            conn, tenant_id, chronicle_id, EventFilters(), after_sequence=0, limit=1_000
        )
        state, _, _ = replay_stored(events, chronicle_id)
        ids = sorted(state.entities)
        cores = [await get_entity_core(conn, tenant_id, uuid.UUID(i)) for i in ids]
        assert await complete_views(conn, cores) == [entity_view_from_state(state, i) for i in ids]
    source = EcsStateSource(engine, engine, tenant_id, chronicle_id)
    one_by_one = [s for i in ids for s in await source.entity_states([i], None)]
    assert await source.entity_states(ids, None) == one_by_one
    assert [s.id for s in one_by_one] == ids
