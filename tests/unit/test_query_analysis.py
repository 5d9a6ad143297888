"""Query analysis: entity mentions (names, aliases, focus) and facets, on the Salt Road cast."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.events import normalize_name
from rag.query_analysis import (
    FACETS,
    MAX_QUERY_CHARS,
    KnownEntity,
    QueryAnalysis,
    analyse_query,
)

CAST = [
    KnownEntity(id="c-oswin", name="Oswin", kind="character"),
    KnownEntity(id="c-tamsin", name="Tamsin", kind="character"),
    KnownEntity(id="c-maud", name="Maud", kind="character"),
    KnownEntity(id="c-elara", name="Elara", aliases=["Captain Elara"], kind="character"),
    KnownEntity(id="c-corvin", name="Corvin", aliases=["the Magpie"], kind="character"),
    KnownEntity(id="c-bram", name="Bram", kind="character"),
    KnownEntity(id="l-inn", name="Lantern Inn", kind="location"),
    KnownEntity(id="l-cellar", name="Lantern Cellar", kind="location"),
    KnownEntity(id="l-pass", name="Greywind Pass", kind="location"),
    KnownEntity(id="l-keep", name="Saltcrag Keep", kind="location"),
    KnownEntity(id="l-market", name="Brinewell Market", kind="location"),
    KnownEntity(id="i-key", name="Silver Key", kind="item"),
    KnownEntity(id="i-ledger", name="Salt Ledger", kind="item"),
    KnownEntity(id="i-blade", name="Oathblade", kind="item"),
    KnownEntity(id="i-draught", name="Healing Draught", kind="item"),
]


def ids(text: str, known: Sequence[KnownEntity] = CAST, focus: tuple[str, ...] = ()) -> list[str]:
    return analyse_query(text, known, focus).entity_ids


# --------------------------------------------------------------------------------------------------
# Mentions
# --------------------------------------------------------------------------------------------------


def test_names_are_matched_case_insensitively_with_spans() -> None:
    text = "Did OSWIN pay maud?"
    result = analyse_query(text, CAST)
    assert [m.entity_id for m in result.mentions] == ["c-oswin", "c-maud"]
    oswin, maud = result.mentions
    assert (oswin.matched, oswin.span, oswin.name, oswin.kind) == ("OSWIN", (4, 9), "Oswin", "character")
    assert maud.span is not None
    assert text[maud.span[0] : maud.span[1]] == maud.matched == "maud"
    assert not oswin.from_focus
    assert not oswin.ambiguous


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What happened to Bram's key?", ["c-bram", "i-key"]),  # "key": the Silver Key
        ("What happened to Bram’s key?", ["c-bram", "i-key"]),  # typographic apostrophe
        ("Bram, Maud; Tamsin!", ["c-bram", "c-maud", "c-tamsin"]),
        ("(Bram)", ["c-bram"]),
        ('"Elara?"', ["c-elara"]),
        ("Elara.", ["c-elara"]),
        ("bram-and-maud", ["c-bram", "c-maud"]),
    ],
)
def test_possessives_and_punctuation(text: str, expected: list[str]) -> None:
    assert ids(text) == expected


@pytest.mark.parametrize(
    "text",
    ["Brambles grow by the road", "Abram was not there", "the Oswins of this world", "Maudlin songs"],
)
def test_names_never_match_inside_words(text: str) -> None:
    assert ids(text) == []


def test_aliases_resolve_to_their_entity() -> None:
    result = analyse_query("Where did the Magpie hide the ledger?", CAST)
    mention, ledger = result.mentions
    assert ledger.entity_id == "i-ledger"  # "ledger": a word of the Salt Ledger's name
    assert mention.entity_id == "c-corvin"
    assert mention.name == "Corvin"
    assert mention.matched == "the Magpie"
    assert ids("Does THE MAGPIE trust anyone?") == ["c-corvin"]


def test_multi_word_names_and_line_breaks() -> None:
    text = "Who was in the lantern\n  CELLAR when Captain Elara arrived at Saltcrag Keep?"
    result = analyse_query(text, CAST)
    assert result.entity_ids == ["l-cellar", "c-elara", "l-keep"]
    cellar, elara, _ = result.mentions
    assert cellar.matched == "lantern\n  CELLAR"
    # The longer alias wins over the bare name it contains.
    assert elara.matched == "Captain Elara"


def test_longest_match_wins_over_contained_names() -> None:
    known = [*CAST, KnownEntity(id="l-lantern", name="Lantern", kind="location")]
    assert ids("Who was in the Lantern Cellar?", known) == ["l-cellar"]
    assert ids("Who was at the Lantern Inn?", known) == ["l-inn"]
    assert ids("Who lit the Lantern?", known) == ["l-lantern"]
    assert ids("The Lantern, then the Lantern Cellar", known) == ["l-lantern", "l-cellar"]


def test_overlapping_names_take_the_leftmost_match() -> None:
    known = [
        KnownEntity(id="a", name="Salt Road"),
        KnownEntity(id="b", name="Road Warden"),
    ]
    # "Salt Road" starts first, so it claims "Road"; "Road Warden" cannot overlap it, and is
    # found only by the word left over.
    result = analyse_query("the Salt Road Warden", known)
    assert [(m.entity_id, m.matched) for m in result.mentions] == [("a", "Salt Road"), ("b", "Warden")]
    assert ids("the Road Warden", known) == ["b"]


def test_names_with_inner_punctuation_must_line_up() -> None:
    known = [KnownEntity(id="ob", name="O'Brien"), KnownEntity(id="si", name="St. Ives")]
    assert ids("Ask o'brien and st.  ives", known) == ["ob", "si"]
    # Not lined up, the whole name does not match; its longest word still does, by itself.
    for text, word in (("Ask O 'Brien", "Brien"), ("Ask St.Ives", "Ives")):
        assert [m.matched for m in analyse_query(text, known).mentions] == [word]


STRANGERS = [
    KnownEntity(id="silas", name="Silas Crane"),
    KnownEntity(id="tobias", name="Tobias Finch"),
    KnownEntity(id="marguerite", name="Marguerite O'Connell", aliases=["the Keeper"]),
    KnownEntity(id="spyglass", name="brass spyglass", kind="item"),
    KnownEntity(id="finch", name="Finch", kind="character"),  # a name of its own: always wins
    KnownEntity(id="rock", name="Gull Rock", kind="location"),
    KnownEntity(id="cove", name="Black Cove", kind="location"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Where is Silas now?", ["silas"]),
        ("What happened to Crane?", ["silas"]),
        ("Who has the spyglass?", ["spyglass"]),
        ("Does the keeper trust Tobias?", ["marguerite", "tobias"]),
        ("Was O'Connell at the rock?", ["marguerite", "rock"]),
        ("Where is Finch?", ["finch"]),  # the entity named Finch, not Tobias Finch
        ("Tobias Finch and Finch", ["tobias", "finch"]),
        # Short and function words of names are never names by themselves.
        ("Who went to the cove with the brass?", ["cove", "spyglass"]),
        ("What is the gull doing at o'clock?", ["rock"]),
    ],
)
def test_a_word_of_a_name_refers_to_its_entity(text: str, expected: list[str]) -> None:
    assert ids(text, STRANGERS) == expected


def test_a_name_word_shared_by_a_few_is_ambiguous_and_by_many_names_nobody() -> None:
    pair = [KnownEntity(id="silas", name="Silas Crane"), KnownEntity(id="martha", name="Martha Crane")]
    result = analyse_query("Where is Crane?", pair)
    assert [(m.entity_id, m.ambiguous) for m in result.mentions] == [("martha", True), ("silas", True)]
    garrison = [KnownEntity(id=f"c{i}", name=f"Captain {name}") for i, name in enumerate("ABCD")]
    assert ids("Where is the captain?", garrison) == []
    assert ids("Where is the captain?", garrison[:3]) == ["c0", "c1", "c2"]
    assert ids("Where is Captain B?", garrison) == ["c1"]


def test_focus_may_name_an_entity_by_one_word_of_its_name() -> None:
    result = analyse_query("What now?", STRANGERS, focus=["Silas", "spyglass", "Nobody"])
    assert result.entity_ids == ["silas", "spyglass"]
    assert result.unresolved_focus == ("Nobody",)
    assert analyse_query("What now?", STRANGERS, focus=["Finch"]).entity_ids == ["finch"]


def test_each_entity_is_listed_once_at_its_first_occurrence() -> None:
    result = analyse_query("Maud and Bram, then Maud again and the Magpie and Corvin", CAST)
    assert result.entity_ids == ["c-maud", "c-bram", "c-corvin"]
    assert result.mentions[0].span == (0, 4)
    assert result.mentions[2].matched == "the Magpie"


def test_shared_alias_mentions_every_holder_but_a_name_beats_an_alias() -> None:
    known = [
        KnownEntity(id="x2", name="Warden Hale", aliases=["the Warden"]),
        KnownEntity(id="x1", name="Warden Oakes", aliases=["the Warden"]),
        KnownEntity(id="x3", name="Grey", aliases=["Ash"]),
        KnownEntity(id="x4", name="Ash"),
    ]
    result = analyse_query("Did the warden see Ash?", known)
    assert [(m.entity_id, m.ambiguous) for m in result.mentions] == [
        ("x2", True),  # by name: Warden Hale, then Warden Oakes (ids differ between modes)
        ("x1", True),
        ("x4", False),
    ]


def test_focus_comes_first_in_the_given_order() -> None:
    result = analyse_query(
        "Does Tamsin trust Oswin?", CAST, focus=["Silver Key", "c-oswin", "the magpie", "Nobody"]
    )
    assert result.entity_ids == ["i-key", "c-oswin", "c-corvin", "c-tamsin"]
    key, oswin, corvin, tamsin = result.mentions
    assert key.from_focus
    assert key.span is None
    assert key.matched == "Silver Key"
    # A focus entity that also appears in the text carries its text span.
    assert oswin.from_focus
    assert (oswin.matched, oswin.span) == ("Oswin", (18, 23))
    assert corvin.from_focus
    assert corvin.matched == "the magpie"
    assert not tamsin.from_focus
    assert result.unresolved_focus == ("Nobody",)


def test_focus_ids_beat_names_and_duplicates_are_ignored() -> None:
    known = [KnownEntity(id="Bram", name="Corvin"), KnownEntity(id="b-1", name="Bram")]
    assert ids("", known, focus=("Bram",)) == ["Bram"]
    assert ids("", CAST, focus=("c-bram", "BRAM", "c-bram")) == ["c-bram"]
    assert analyse_query("", CAST, focus=("", "  ")).unresolved_focus == ()


def test_no_known_entities_or_blank_names() -> None:
    assert analyse_query("Where is Bram?", []).mentions == ()
    known = [KnownEntity(id="blank", name="   ", aliases=["", "\n"])]
    assert analyse_query("   \n", known).mentions == ()


def test_result_is_deterministic_and_encodable() -> None:
    text = "Where is the Magpie, and does Elara trust Oswin with the Salt Ledger?"
    first = msgspec.json.encode(analyse_query(text, CAST, ["Bram"]))
    second = msgspec.json.encode(analyse_query(text, list(reversed(CAST)), ["Bram"]))
    assert first == second
    decoded = msgspec.json.decode(first, type=QueryAnalysis)
    assert decoded.entity_ids == ["c-bram", "c-corvin", "c-elara", "c-oswin", "i-ledger"]


def test_a_kept_tuple_of_names_gives_the_same_analysis_as_a_fresh_list() -> None:
    # State sources hand the same tuple to every request while the names are unchanged; the
    # analysis recognises it by identity and must answer exactly as from a list it has never seen.
    kept = tuple(CAST)
    text = "Did Captain Elara give the Silver Key to the Magpie at the Lantern Cellar?"
    expected = analyse_query(text, list(CAST))
    assert analyse_query(text, kept) == expected
    assert analyse_query(text, kept) == expected  # the second time from the index kept for it
    renamed = tuple(msgspec.structs.replace(k, name="Bramble") if k.id == "c-bram" else k for k in kept)
    assert ids("Where is Bram?", renamed) == []  # another tuple is another set of names
    assert ids("Where is Bramble?", renamed) == ["c-bram"]
    assert ids("Where is Bram?", kept) == ["c-bram"]


# --------------------------------------------------------------------------------------------------
# Facets
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facet", "queries"),
    [
        (
            "location",
            [
                "Where is Bram?",
                "What are the Magpie's whereabouts?",
                "current location of the Oathblade",
                "Tamsin went up the mountain, right?",
                "WHERE did Maud go",
            ],
        ),
        (
            "possession",
            [
                "Who has the Silver Key?",
                "What does Elara carry?",
                "Is Maud carrying the Healing Draught?",
                "Who holds the ledger now",
                "Does Oswin own a sword?",
                "Show Tamsin's inventory",
                "Do they possess the ledger?",
            ],
        ),
        (
            "status",
            [
                "Is Bram alive?",
                "Is Bram dead?",
                "Who died in the cellar?",
                "Who killed the innkeeper?",
                "Which of them are still living?",
                "What happened to Corvin?",
                "What was the Magpie's fate?",
            ],
        ),
        (
            "relationship",
            [
                "Does Maud trust Oswin?",
                "How does Elara feel about Oswin?",
                "What is the relationship between Tamsin and Oswin?",
                "Does the Magpie like anyone?",
                "Does Maud hate Corvin?",
                "Is Tamsin loyal to Oswin?",
                "Is Elara an ally or an enemy?",
                "Is Tamsin afraid of the Magpie?",
                "Does Maud respect Oswin?",
            ],
        ),
        (
            "presence",
            [
                "Who was at the Lantern Inn that night?",
                "Who was present at the oath?",
                "Was Tamsin present?",
                "Was there a witness to the theft?",
                "Who else was in the cellar?",
                "Who is at Saltcrag Keep now?",
                "Who's in the cellar?",
                "Who are with Elara?",
            ],
        ),
        (
            "timeline",
            [
                "What happened at Greywind Pass?",
                "What did Oswin do before the ambush?",
                "And after that?",
                "When did Bram die?",
                "Tell me the history of the ledger",
                "What did Maud see earlier?",
                "Who first saw the Magpie?",
                "When was the last time anyone saw Bram?",
            ],
        ),
    ],
)
def test_facets(facet: str, queries: list[str]) -> None:
    for query in queries:
        result = analyse_query(query, CAST)
        assert facet in result.facets, query
        assert "general" not in result.facets, query


def test_several_facets_in_canonical_order() -> None:
    result = analyse_query("Where was Bram when he died, and who has his key?", CAST)
    assert result.facets == ("location", "possession", "status", "timeline")
    assert result.has("status")
    assert not result.has("presence")


@pytest.mark.parametrize("query", ["Tell me about Oswin", "Oswin", "", "???", "Everywhere anywhere"])
def test_general_facet_when_nothing_specific_matches(query: str) -> None:
    assert analyse_query(query, CAST).facets == ("general",)


@pytest.mark.parametrize(
    ("query", "dimensions"),
    [
        ("Does Maud trust Oswin?", ("trust",)),
        ("Does Maud distrust Oswin?", ("trust",)),
        ("Does Tamsin like Oswin?", ("affection",)),
        ("Does Maud hate the Magpie?", ("affection",)),
        ("Is Tamsin afraid of the Magpie?", ("fear",)),
        ("Does Elara respect Oswin?", ("respect",)),
        ("Is Tamsin scared of Corvin, and does she still trust Oswin?", ("fear", "trust")),
        ("Where is Bram?", ()),
    ],
)
def test_relationship_dimension_hints(query: str, dimensions: tuple[str, ...]) -> None:
    result = analyse_query(query, CAST)
    assert result.dimensions == dimensions
    assert result.dimension == (dimensions[0] if dimensions else None)
    if dimensions:
        assert "relationship" in result.facets


def test_facet_words_match_whole_words_only() -> None:
    # "whereas", "hashes", "presently", "whenever", "Oathblade" contain facet words but are not them.
    result = analyse_query("whereas hashes presently whenever Oathblade", CAST)
    assert result.facets == ("general",)


# --------------------------------------------------------------------------------------------------
# Bounds and robustness
# --------------------------------------------------------------------------------------------------


def test_long_queries_are_truncated_and_say_so() -> None:
    text = "Where is Bram? " + "blah " * 400_000 + "Maud"
    assert len(text) > 1_000_000
    result = analyse_query(text, CAST)
    assert result.truncated
    assert result.analysed_chars <= MAX_QUERY_CHARS
    assert result.entity_ids == ["c-bram"]  # Maud lies beyond the analysed window
    assert not analyse_query("Where is Bram?", CAST).truncated


def test_truncation_does_not_create_a_name_from_a_longer_word() -> None:
    text = "x" * (MAX_QUERY_CHARS - 4) + " Maudlin"  # the window would end in "Maud"
    result = analyse_query(text, CAST)
    assert result.truncated
    assert result.mentions == ()


@pytest.mark.parametrize(
    "text",
    ["", "\x00", "\ud800 lone surrogate Bram", "İstanbul ǅ ß ﬁ 東京 🙂 Bram", "\u200b\u2028\x85" * 10],
)
def test_odd_unicode_never_raises(text: str) -> None:
    result = analyse_query(text, CAST, focus=["\ud800", ""])
    assert set(result.facets) <= set(FACETS)


_NAMES = st.text(min_size=1, max_size=12)


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(max_size=300),
    names=st.lists(_NAMES, max_size=6),
    aliases=st.lists(_NAMES, max_size=3),
    inserts=st.lists(st.integers(min_value=0, max_value=5), max_size=4),
)
def test_property_never_raises_and_spans_point_at_the_names(
    text: str, names: list[str], aliases: list[str], inserts: list[int]
) -> None:
    known = [KnownEntity(id=f"e{i}", name=name) for i, name in enumerate(names)]
    known.append(KnownEntity(id="aliased", name="Zed", aliases=aliases))
    # Plant some of the names in the text so that matches actually happen.
    for index in inserts:
        if index < len(names):
            text = f"{text} {names[index].upper()}'s"
    result = analyse_query(text, known, focus=names[:2])
    assert set(result.facets) <= set(FACETS)
    assert len(result.entity_ids) == len(result.mentions)  # one mention per entity
    by_id = {e.id: e for e in known}
    for mention in result.mentions:
        if mention.span is None:
            assert mention.from_focus
            continue
        start, end = mention.span
        assert 0 <= start < end <= len(text)
        assert text[start:end] == mention.matched
        entity = by_id[mention.entity_id]
        labels = {normalize_name(label) for label in (entity.name, *entity.aliases)}
        assert normalize_name(mention.matched) in labels
        # Whole words only: a match never starts or ends in the middle of a word.
        if mention.matched[0].isalnum() and start > 0:
            assert not _is_word_char(text[start - 1])
        if mention.matched[-1].isalnum() and end < len(text):
            assert not _is_word_char(text[end])


# --------------------------------------------------------------------------------------------------
# The name index kept between questions
# --------------------------------------------------------------------------------------------------


def test_a_scope_keeps_only_the_latest_version_of_its_names() -> None:
    from rag import query_analysis

    scope = ("chronicle", "ecs")
    names = tuple(CAST)
    # A chronicle being written to: every event may bring a name, so every version is new.
    for n in range(1, 101):
        names = (*names, KnownEntity(id=f"c-new-{n}", name=f"Newcomer{n}", kind="character"))
        found = analyse_query(f"Where is Newcomer{n} now?", names, scope=scope).entity_ids
        assert found == [f"c-new-{n}"]
    assert sum(1 for key in query_analysis._BY_SCOPE if key == scope) == 1
    # An equal list in a new tuple (the names were read again) reuses the index it already has.
    kept = query_analysis._BY_SCOPE[scope][2]
    assert analyse_query("Where is Bram?", tuple(names), scope=scope).entity_ids == ["c-bram"]
    assert query_analysis._BY_SCOPE[scope][2] is kept
    # A name that disappeared (a rebuild renamed it) is not found from a stale index.
    renamed = tuple(k for k in names if k.id != "c-bram")
    assert analyse_query("Where is Bram?", renamed, scope=scope).entity_ids == []


def test_scopes_are_bounded_and_unscoped_callers_are_cached_by_content() -> None:
    from rag import query_analysis

    for n in range(query_analysis._SCOPES_KEPT + 10):
        analyse_query("Where is Bram?", tuple(CAST), scope=("many", n))
    assert len(query_analysis._BY_SCOPE) <= query_analysis._SCOPES_KEPT
    for n in range(20):
        extra = [*CAST, KnownEntity(id=f"x-{n}", name=f"Extra{n}", kind="item")]
        assert analyse_query(f"Who has Extra{n}?", extra).entity_ids == [f"x-{n}"]
    assert len(query_analysis._BY_FINGERPRINT) <= query_analysis._FINGERPRINTS_KEPT


@pytest.mark.parametrize(
    ("text", "sequences", "ids", "external_ids"),
    [
        ("Who was present at event gen-1-0000097 (meeting at Foo)?", (), (), ("gen-1-0000097",)),
        ("What happened at #15, and at #3?", (15, 3), (), ()),
        ("What happened between #30 and #34?", (30, 31, 32, 33, 34), (), ()),
        ("Events #3-#5, then #9", (3, 4, 5, 9), (), ()),
        ("from #10 to 12", (10, 11, 12), (), ()),
        ("What about #7 and #9?", (7, 9), (), ()),  # a list, not a span
        ("between #1 and #100", tuple(range(1, 17)), (), ()),  # at most MAX_EVENT_REFERENCES
        ("And salt-road-012? dl-004; x1.", (), (), ("salt-road-012", "dl-004")),
        (
            "Tell me about 3F2B1C8E-8A8E-4A4F-9A0B-1C2D3E4F5A6B.",
            (),
            ("3f2b1c8e-8a8e-4a4f-9a0b-1c2d3e4f5a6b",),
            (),
        ),
    ],
)
def test_events_named_by_sequence_id_or_external_id(text, sequences, ids, external_ids) -> None:
    refs = analyse_query(text, CAST).events
    assert refs is not None
    assert (refs.sequences, refs.ids, refs.external_ids) == (sequences, ids, external_ids)


@pytest.mark.parametrize(
    "text",
    ["Where is Bram now?", "In 1201 the queen fell", "at 10:30, day 4", "C# and F#", "Bram's 2nd key"],
)
def test_years_times_and_ordinary_words_name_no_event(text: str) -> None:
    assert analyse_query(text, CAST).events is None


def test_words_of_a_name_inside_an_external_id_are_not_mentions() -> None:
    known = [
        KnownEntity(id="l-wharf", name="Tarrow Wharf", kind="location"),
        KnownEntity(id="c-droid", name="R2-D2", kind="character"),
    ]
    asked = analyse_query("What happened in tarrow-017?", known)
    assert asked.mentions == ()
    assert asked.events is not None and asked.events.external_ids == ("tarrow-017",)
    # A whole name that looks like an id is still a name, and the word alone still counts.
    assert [m.entity_id for m in analyse_query("Where is R2-D2?", known).mentions] == ["c-droid"]
    assert [m.entity_id for m in analyse_query("What happened at Tarrow?", known).mentions] == ["l-wharf"]
