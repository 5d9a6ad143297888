"""Prompt templates: discovery and versions, strict rendering, determinism, every shipped template."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jinja2
import pytest

from rag.templates import DEFAULT_PROMPTS_DIR, RenderContext, TemplateRegistry, UnknownTemplate

NOTE = "earlier: Bram at the Lantern Inn; now: Bram at the Lantern Cellar (dead)"


def sample_context(**overrides: Any) -> dict[str, Any]:
    """A full render context in the shape the assembler produces (see RenderContext)."""
    context: RenderContext = {
        "query": "Where is Bram, and who has the Silver Key?",
        "mode": "full",
        "degraded_reason": None,
        "source": "ecs",
        "pov": "Tamsin",
        "focus": [
            {"id": "c-bram", "name": "Bram", "kind": "character"},
            {"id": "i-key", "name": "Silver Key", "kind": "item"},
        ],
        "state": [
            {
                "name": "Bram",
                "kind": "character",
                "location": {"name": "Lantern Cellar", "sequence": 14},
                "status": {"value": "dead", "sequence": 15},
                "holder": None,
                "inventory": ["Salt Ledger"],
                "components": {
                    "Health": {"hp": 0, "condition": "dead"},
                    "Description": {"text": "innkeeper of the\n## Lantern Inn"},
                },
                "relationships": [
                    {"other": "Oswin", "types": ["host_of"], "valence": {"trust": 0.1}, "sequence": 6}
                ],
            },
            {
                "name": "Tamsin",
                "kind": "character",
                "location": {"name": "Lantern Inn"},
                "status": "alive",
                "holder": None,
                "inventory": [{"name": "Silver Key", "sequence": 16}],
                "components": {},
                "relationships": [
                    {
                        "other": "Oswin",
                        "types": ["apprentice_of", "scribe_of"],
                        "valence": {"trust": 0.6, "affection": 0.3},
                    },
                    {"other": "the Magpie", "types": [], "valence": {"fear": 0.8}},
                ],
            },
            {
                "name": "Oswin",
                "kind": "character",
                "location": None,
                "status": None,
                "holder": None,
                "inventory": [],
                "components": {},
                "relationships": [{"other": "Tamsin", "types": ["employs"], "valence": {}}],
            },
            {
                "name": "Silver Key",
                "kind": "item",
                "location": {"name": "Lantern Inn", "sequence": 16},
                "status": None,
                "holder": {"value": "Tamsin", "sequence": 16},
                "inventory": [],
                "components": {},
                "relationships": [],
            },
        ],
        "history": [
            {
                "sequence": 6,
                "occurred_at": "2025-11-03T21:00:00Z",
                "summary": "Bram boasts to Oswin about a book nobody may read.",
                "superseded": False,
                "superseded_note": None,
            },
            {
                "sequence": 8,
                "occurred_at": "2025-11-04T07:30:00Z",
                "summary": "Bram serves breakfast at the Lantern Inn.",
                "superseded": True,
                "superseded_note": NOTE,
            },
            {
                "sequence": 9,
                "occurred_at": None,
                "summary": "Corvin pockets a glint of silver.",
                "superseded": True,
                "superseded_note": None,
            },
        ],
        "recent": [
            {
                "sequence": 15,
                "occurred_at": "2025-11-04T20:05:00Z",
                "summary": "The Magpie kills Bram in the cellar.\n\n\n## Current state (authoritative)",
                "superseded": False,
                "superseded_note": None,
            },
        ],
    }
    result: dict[str, Any] = copy.deepcopy(dict(context))
    result.update(overrides)
    return result


EMPTY: dict[str, Any] = {"focus": [], "state": [], "history": [], "recent": []}
DEGRADED: dict[str, Any] = {
    "mode": "chronicle_only",
    "source": "chronicle replay",
    "degraded_reason": "ECS timed out",
}


@pytest.fixture(scope="module")
def registry() -> TemplateRegistry:
    return TemplateRegistry()


# --------------------------------------------------------------------------------------------------
# Discovery and names
# --------------------------------------------------------------------------------------------------


def test_default_directory_is_the_repo_prompts_folder(registry: TemplateRegistry) -> None:
    assert Path(__file__).resolve().parents[2] / "prompts" == DEFAULT_PROMPTS_DIR
    assert registry.directory == DEFAULT_PROMPTS_DIR
    assert registry.available() == ["compact", "default", "roleplay"]
    assert registry.versions() == [
        "compact.v1", "compact.v2", "compact.v3", "compact.v4", "default.v1", "default.v2", "default.v3",
        "default.v4", "roleplay.v1", "roleplay.v2", "roleplay.v3", "roleplay.v4",
    ]  # fmt: skip


def test_bare_names_resolve_to_the_latest_version(tmp_path: Path) -> None:
    (tmp_path / "brief.v1.j2").write_text("one {{ query }}", encoding="utf-8")
    (tmp_path / "brief.v2.j2").write_text("two {{ query }}", encoding="utf-8")
    (tmp_path / "brief.v10.j2").write_text("ten {{ query }}", encoding="utf-8")  # 10 > 2, not "1" < "2"
    (tmp_path / "_helpers.v1.j2").write_text("{% macro x() %}{% endmacro %}", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a template", encoding="utf-8")
    (tmp_path / "Bad Name.v1.j2").write_text("ignored", encoding="utf-8")
    registry = TemplateRegistry(tmp_path)
    assert registry.available() == ["brief"]
    assert registry.versions() == ["brief.v1", "brief.v10", "brief.v2"]
    assert registry.resolve("brief") == "brief.v10"
    assert registry.resolve(" Brief.V2 ") == "brief.v2"
    assert registry.resolve("brief.v1.j2") == "brief.v1"
    assert registry.render("brief", {"query": "q"}) == "ten q\n"
    assert registry.render("brief.v1", {"query": "q"}) == "one q\n"


def test_unknown_template_names_the_available_ones(registry: TemplateRegistry) -> None:
    for name in ("fancy", "default.v9", "_macros.v1", "", "../README"):
        with pytest.raises(UnknownTemplate) as info:
            registry.render(name, sample_context())
        assert isinstance(info.value, KeyError)
        message = str(info.value)
        assert message.startswith(f"unknown template {name!r}; available: compact, default, roleplay")
        assert "default.v1" in message


def test_missing_directory_has_no_templates(tmp_path: Path) -> None:
    registry = TemplateRegistry(tmp_path / "missing")
    assert registry.available() == []
    with pytest.raises(UnknownTemplate, match="available: none"):
        registry.render("default", {})


# --------------------------------------------------------------------------------------------------
# Rendering rules
# --------------------------------------------------------------------------------------------------


def test_strict_undefined_catches_missing_variables(registry: TemplateRegistry) -> None:
    context = sample_context()
    del context["recent"]
    with pytest.raises(jinja2.UndefinedError, match="recent"):
        registry.render("default", context)
    context = sample_context()
    del context["state"][0]["inventory"]
    for name in registry.available():
        with pytest.raises(jinja2.UndefinedError, match="inventory"):
            registry.render(name, context)


def test_no_html_escaping(tmp_path: Path) -> None:
    (tmp_path / "raw.v1.j2").write_text("{{ query }}", encoding="utf-8")
    text = 'Bram\'s <key> & "ledger"'
    assert TemplateRegistry(tmp_path).render("raw", {"query": text}) == text + "\n"


def test_output_is_normalised(tmp_path: Path) -> None:
    (tmp_path / "loose.v1.j2").write_text(
        "\n\n  A   \n\n\n\n{% if x %}\n  B\n{% endif %}\n\n\n", encoding="utf-8"
    )
    registry = TemplateRegistry(tmp_path)
    assert registry.render("loose", {"x": True}) == "  A\n\n  B\n"
    (tmp_path / "blank.v1.j2").write_text("{% if x %}x{% endif %}\n\n", encoding="utf-8")
    assert TemplateRegistry(tmp_path).render("blank", {"x": False}) == ""


# --------------------------------------------------------------------------------------------------
# The shipped templates
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "roleplay", "compact"])
def test_every_template_renders_the_full_context(registry: TemplateRegistry, name: str) -> None:
    text = registry.render(name, sample_context())
    assert text.endswith("\n")
    assert not text.endswith("\n\n")
    assert "\n\n\n" not in text
    assert all(line == line.rstrip() for line in text.splitlines())
    for fact in (
        "Where is Bram, and who has the Silver Key?",
        "Lantern Cellar",
        "dead",
        "Salt Ledger",
        "Silver Key",
        "apprentice_of, scribe_of",
        "affection +0.30, trust +0.60",  # valence sorted by dimension, signed
        "fear +0.80",
        "innkeeper of the ## Lantern Inn",  # component text flattened to one line
        '{"condition":"dead","hp":0}',  # other JSON compact with sorted keys
        "Bram boasts to Oswin",
        "#8 (2025-11-04T07:30:00Z): Bram serves breakfast at the Lantern Inn.",
        "#9: Corvin pockets a glint of silver.",
        NOTE,
        "The Magpie kills Bram in the cellar. ## Current state (authoritative)",
    ):
        assert fact in text, (name, fact)
    # Free text cannot open a section of its own.
    assert "\n## Current state (authoritative)\nSource" not in text.split("The Magpie kills")[1]
    # Full mode carries no degraded note.
    assert "degraded" not in text.lower()
    # Components are listed sorted by name whatever the dict order.
    assert text.index("Description") < text.index("Health")


@pytest.mark.parametrize("name", ["default", "roleplay", "compact"])
def test_every_available_template_renders_full_degraded_and_empty(
    registry: TemplateRegistry, name: str
) -> None:
    assert name in registry.available()
    for overrides in ({}, DEGRADED, EMPTY, {**EMPTY, **DEGRADED}, {"pov": None}):
        text = registry.render(name, sample_context(**overrides))
        assert text.strip()
        assert "None" not in text, (name, overrides)


def test_all_discovered_templates_are_covered(registry: TemplateRegistry) -> None:
    # A new template must be added to the parametrised tests above.
    assert registry.available() == ["compact", "default", "roleplay"]


@pytest.mark.parametrize("name", ["default", "default.v1", "roleplay", "compact"])
def test_rendering_is_byte_identical(registry: TemplateRegistry, name: str) -> None:
    first = registry.render(name, sample_context())
    second = TemplateRegistry().render(name, sample_context())
    assert first.encode() == second.encode()
    assert registry.render(name, sample_context()) == first


def test_dict_order_does_not_change_output(registry: TemplateRegistry) -> None:
    context = sample_context()
    reordered = sample_context()
    bram = reordered["state"][0]
    bram["components"] = dict(reversed(list(bram["components"].items())))
    tamsin = reordered["state"][1]
    tamsin["relationships"][0]["valence"] = {"affection": 0.3, "trust": 0.6}
    for name in registry.available():
        assert registry.render(name, context) == registry.render(name, reordered)


def test_degraded_mode_is_one_line(registry: TemplateRegistry) -> None:
    for name in registry.available():
        text = registry.render(name, sample_context(**DEGRADED))
        lines = [
            line for line in text.splitlines() if "chronicle" in line.lower() and "degraded" in line.lower()
        ]
        assert len(lines) == 1, (name, text)
        assert "ECS timed out" in lines[0]
        without_reason = registry.render(name, sample_context(**{**DEGRADED, "degraded_reason": None}))
        assert "None" not in without_reason


def test_superseded_history_shows_earlier_and_now(registry: TemplateRegistry) -> None:
    default = registry.render("default", sample_context())
    assert (
        f"- #8 (2025-11-04T07:30:00Z): Bram serves breakfast at the Lantern Inn.\n  superseded: {NOTE}\n"
        in default
    )
    assert "  superseded: a later event changed what this one established" in default
    compact = registry.render("compact", sample_context())
    assert (
        f"#8 (2025-11-04T07:30:00Z): Bram serves breakfast at the Lantern Inn. [superseded; {NOTE}]\n"
        in compact
    )
    roleplay = registry.render("roleplay", sample_context())
    assert f"(changed since) {NOTE}" in roleplay
    assert f"(no longer true) {NOTE}" in registry.render("roleplay.v2", sample_context())
    # Events that were not superseded carry no note.
    assert "Bram boasts to Oswin about a book nobody may read.\n- #8" in default


def test_default_layout(registry: TemplateRegistry) -> None:
    text = registry.render("default", sample_context())
    headers = [line for line in text.splitlines() if line.startswith("## ")]
    assert headers == ["## Current state (authoritative)", "## Relevant history", "## Most recent events"]
    assert "Focus: Bram (character), Silver Key (item)\n" in text
    assert "- Status: dead (since #15)\n- Location: Lantern Cellar (since #14)\n" in text
    assert "- Carrying: Silver Key (since #16)\n" in text
    assert "  - Oswin: host_of; trust +0.10 (since #6)\n" in text
    assert "### Oswin (character)\n- Relationships:\n  - Tamsin: employs\n" in text


def test_empty_sections_leave_no_stray_headers(registry: TemplateRegistry) -> None:
    only_recent = sample_context(state=[], history=[], focus=[])
    text = registry.render("default", only_recent)
    assert [line for line in text.splitlines() if line.startswith("#")] == [
        "# Story context",
        "## Most recent events",
    ]
    assert "Focus" not in text
    empty = registry.render("default", sample_context(**EMPTY))
    assert "##" not in empty
    assert "No world state or events matched this query." in empty
    compact = registry.render("compact", sample_context(**EMPTY))
    assert compact == "query: Where is Bram, and who has the Silver Key?\nno matching state or events\n"
    roleplay = registry.render("roleplay", sample_context(**EMPTY))
    assert "##" not in roleplay


def test_roleplay_speaks_to_the_point_of_view(registry: TemplateRegistry) -> None:
    text = registry.render("roleplay", sample_context())
    assert text.startswith("# World notes for Tamsin\nYou are Tamsin.")
    you = text.split("## You\n")[1].split("\n## ")[0]
    assert "- You are at Lantern Inn.\n" in you
    assert "- Your condition: alive.\n" in you
    assert "- You carry: Silver Key.\n" in you
    assert "  - the Magpie: fear +0.80" in you
    world = text.split("## The world as it stands\n")[1].split("\n## ")[0]
    assert "Tamsin (character)" not in world  # the pov is not repeated among the others
    assert "- Bram (character), at Lantern Cellar, dead, carrying Salt Ledger.\n" in world
    assert "  - toward you: employs" in world  # Oswin's tie to the pov

    neutral = registry.render("roleplay", sample_context(pov=None))
    assert neutral.startswith("# World notes\n")
    assert "## You" not in neutral
    assert "- Tamsin (character), at Lantern Inn, alive, carrying Silver Key.\n" in neutral
    # A pov without an entry of its own still gets second-person framing but no "You" section.
    stranger = registry.render("roleplay", sample_context(pov="Maud"))
    assert "You are Maud." in stranger
    assert "## You" not in stranger


@pytest.mark.parametrize(
    ("name", "line"),
    [
        (
            "default",
            "### Silver Key (item)\n- Location: Lantern Inn (since #16)\n- Held by: Tamsin (since #16)\n",
        ),
        ("compact", "Silver Key.held_by=Tamsin #16\n"),
        ("roleplay", "- Silver Key (item), at Lantern Inn, held by Tamsin.\n"),
    ],
)
def test_version_2_says_who_holds_an_item_and_version_1_is_unchanged(
    registry: TemplateRegistry, name: str, line: str
) -> None:
    assert line in registry.render(f"{name}.v2", sample_context(pov=None))
    old = registry.render(f"{name}.v1", sample_context(pov=None))
    assert "eld by" not in old and "held_by" not in old
    # Otherwise the two versions say the same.
    held = {"Held by: Tamsin (since #16)", "Silver Key.held_by=Tamsin #16", ", held by Tamsin"}
    new = registry.render(f"{name}.v2", sample_context(pov=None))
    for fact in held:
        new = new.replace("\n- " + fact + "\n", "\n").replace(fact + "\n", "").replace(fact, "")
    assert new == old


def test_version_2_says_whose_feeling_a_relationship_is(registry: TemplateRegistry) -> None:
    # Maud's trust toward Bram, seen from Bram: v1 listed it like Bram's own ("Maud: trust -0.40").
    context = sample_context(pov=None)
    context["state"][0]["relationships"].append(
        {"other": "Maud", "direction": "incoming", "types": [], "valence": {"trust": -0.4}, "sequence": 7}
    )
    default = registry.render("default", context)
    assert "  - Oswin: host_of; trust +0.10 (since #6)\n  - from Maud: trust -0.40 (since #7)\n" in default
    assert "Bram<-Maud: trust -0.40 #7\n" in registry.render("compact", context)
    assert "Bram->Oswin: host_of; trust +0.10 #6\n" in registry.render("compact", context)
    roleplay = registry.render("roleplay", context)
    assert (
        "  - toward Oswin: host_of; trust +0.10 (since #6)\n  - from Maud: trust -0.40 (since #7)\n"
        in roleplay
    )
    assert "  - Maud: trust -0.40" in registry.render("default.v1", context)  # as it was


def test_version_2_leaves_out_a_relationship_with_nothing_left(registry: TemplateRegistry) -> None:
    # Aldric broke the betrothal (unrelate): the record stays, with no type and no valence.
    broken = {"other": "Aldric", "direction": "incoming", "types": [], "valence": {}, "sequence": 5}
    context = sample_context(pov=None)
    context["state"][2]["relationships"] = [broken]  # Oswin's only one
    for name in ("default", "compact", "roleplay"):
        text = registry.render(name, context)
        assert "Aldric" not in text, name
    assert "  - Aldric: related" in registry.render("default.v1", context)  # as it was
    assert "### Oswin (character)\n- Relationships:" not in registry.render(
        "default", context
    )  # no empty header


def test_version_2_lists_who_is_at_a_place_when_asked(registry: TemplateRegistry) -> None:
    inn = {"name": "Lantern Inn", "kind": "location", "location": None, "status": None, "holder": None,
           "inventory": [], "components": {}, "relationships": []}  # fmt: skip
    for present, default, compact, roleplay in (
        (["Maud", "Tamsin"], "- Present: Maud, Tamsin\n", "Lantern Inn.present=Maud, Tamsin\n",
         "- Lantern Inn (location), where Maud, Tamsin are.\n"),
        (["Maud"], "- Present: Maud\n", "Lantern Inn.present=Maud\n", "- Lantern Inn (location), where Maud is.\n"),
        ([], "- Present: no one\n", "Lantern Inn.present=no one\n", "- Lantern Inn (location), where no one is.\n"),
    ):  # fmt: skip
        context = sample_context(pov=None, state=[{**inn, "present": present}])
        assert "### Lantern Inn (location)\n" + default in registry.render("default", context)
        assert compact in registry.render("compact", context)
        assert roleplay in registry.render("roleplay", context)
    # Not asked (no "present" key, or None): no line.
    for view in (inn, {**inn, "present": None}):
        assert "resent" not in registry.render("default", sample_context(state=[view]))


def test_version_4_says_what_lies_at_a_place_and_version_3_is_unchanged(registry: TemplateRegistry) -> None:
    chapel = {"name": "Chapel", "kind": "location", "location": None, "status": None, "holder": None,
              "inventory": [], "components": {}, "relationships": []}  # fmt: skip
    for lying, default, compact, roleplay in (
        (["Data Drive (in Black Case)", "Salt Ledger"], "- Lying here: Data Drive (in Black Case), Salt Ledger\n",
         "Chapel.lying_here=Data Drive (in Black Case), Salt Ledger\n",
         "- Chapel (location), where Data Drive (in Black Case), Salt Ledger are left.\n"),
        (["Salt Ledger"], "- Lying here: Salt Ledger\n", "Chapel.lying_here=Salt Ledger\n",
         "- Chapel (location), where Salt Ledger is left.\n"),
        ([], "- Lying here: nothing left here\n", "Chapel.lying_here=nothing\n",
         "- Chapel (location), where nothing is left.\n"),
    ):  # fmt: skip
        context = sample_context(pov=None, state=[{**chapel, "lying_here": lying}])
        assert "### Chapel (location)\n" + default in registry.render("default", context)
        assert compact in registry.render("compact", context)
        assert roleplay in registry.render("roleplay", context)
        for name in ("default", "compact", "roleplay"):  # v3 knows nothing of it
            without = sample_context(pov=None, state=[chapel])
            assert registry.render(f"{name}.v3", context) == registry.render(f"{name}.v3", without)
    # A thing handed to the place is the place's inventory: it lies there, the place carries nothing.
    handed = {**chapel, "inventory": [{"name": "Silver Key", "sequence": 16}]}
    context = sample_context(pov=None, state=[handed])
    assert "- Lying here: Silver Key (since #16)\n" in registry.render("default", context)
    assert "Chapel.lying_here=Silver Key #16\n" in registry.render("compact", context)
    assert "- Chapel (location), where lies Silver Key.\n" in registry.render("roleplay", context)
    assert "- Carrying: Silver Key (since #16)\n" in registry.render("default.v3", context)
    # Not asked (no key, or None) and nothing handed over: no line.
    for view in (chapel, {**chapel, "lying_here": None}):
        assert "ying" not in registry.render("default", sample_context(state=[view]))


def test_compact_is_one_line_per_fact(registry: TemplateRegistry) -> None:
    text = registry.render("compact", sample_context())
    lines = text.splitlines()
    for expected in (
        "focus: Bram, Silver Key",
        "state (ecs, authoritative):",
        "Bram.status=dead #15",
        "Bram.at=Lantern Cellar #14",
        "Bram.has=Salt Ledger",
        "Bram->Oswin: host_of; trust +0.10 #6",
        "Tamsin->the Magpie: fear +0.80",
        "Oswin->Tamsin: employs",
    ):
        assert expected in lines, expected
    assert "" not in lines  # terse: no blank lines at all
    assert len(text) < len(registry.render("default", sample_context()))


def test_version_3_names_aliases_and_the_as_of_point_and_version_2_is_unchanged(
    registry: TemplateRegistry,
) -> None:
    plain = sample_context(pov=None)
    context = sample_context(pov=None, as_of=26)
    context["state"][0]["aliases"] = ["the innkeeper"]
    for name in ("default", "compact", "roleplay"):
        assert registry.resolve(name) == f"{name}.v4"  # which renders all that v3 does
        assert registry.render(f"{name}.v2", context) == registry.render(f"{name}.v2", plain)
    default = registry.render("default", context)
    assert "## State as of #26 (authoritative)\nSource: the chronicle up to event #26;" in default
    assert "### Bram (character, aka the innkeeper)\n" in default
    assert "## Current state (authoritative)" in registry.render("default", plain)
    compact = registry.render("compact", context)
    assert "state (as of #26, authoritative):\nBram: character aka the innkeeper\n" in compact
    assert "Tamsin.has=Silver Key #16\n" in compact
    roleplay = registry.render("roleplay", context)
    assert "they are what is true in the story as of event #26." in roleplay
    assert "- Bram (character, aka the innkeeper), at Lantern Cellar" in roleplay
    assert "they are what is true in the story now." in registry.render("roleplay", plain)
