"""Pure parts of the degraded-mode replay: alias groups and the world a replay starts from."""

from __future__ import annotations

from ecs.components import Holder
from ecs.reducer import ChronicleEvent, apply_event, lookup
from ecs.state_source import alias_groups, named_in_event, seeded_world
from rag.events import TransferEffect
from rag.query_analysis import KnownEntity


def test_alias_groups_follow_the_reducer() -> None:
    groups = alias_groups(
        [
            ("Quenilek", "the Sparrow"),
            ("the sparrow", "Old Bird"),  # an alias of an alias: the same entity
            ("Mara", "The  Sparrow"),  # already Quenilek's: the reducer refuses it
            ("Mara", "Mara"),  # her own name
            ("", "nobody"),
        ]
    )
    assert groups == {"quenilek": ("Quenilek", ["the Sparrow", "Old Bird"])}


def test_named_in_event_gives_roles_as_kinds() -> None:
    named = dict(
        named_in_event(
            [{"name": "Mara"}],
            "The Mill",
            [
                {"op": "transfer", "item": "pipe", "to": "Bram"},
                {"op": "valence", "from": "Mara", "to": "Ilse", "dimension": "trust", "delta": 0.1},
                {"op": "alias", "entity": "Mara", "alias": "the Widow"},
            ],
        )
    )
    assert {k: v.kind for k, v in named.items()} == {
        "mara": "character", "the mill": "location", "pipe": "item", "bram": "character"
    }  # fmt: skip


def test_a_seeded_world_resolves_an_alias_without_its_declaration() -> None:
    known = [
        KnownEntity(id="quenilek", name="Quenilek", aliases=["the Sparrow"]),
        KnownEntity(id="mara", name="Mara"),
    ]
    world = seeded_world("c", known)
    assert set(world.names) == {"quenilek", "the sparrow"}  # only entities with aliases are seeded
    apply_event(
        world,
        ChronicleEvent(
            id="e", sequence=7, chronicle_id="c", effects=[TransferEffect(item="pipe", to="the Sparrow")]
        ),
    )
    pipe = world.entities[lookup(world, "pipe") or ""]
    holder = pipe.get(Holder)
    assert holder is not None and world.entities[holder.holder].name == "Quenilek"
    assert len(world.entities) == 2
