"""Query analysis for context bundles: which known entities a question mentions, and what it asks.

``analyse_query`` is pure, fast and total: it never raises on any ``str`` (arbitrary Unicode,
lone surrogates, megabytes), because it runs on untrusted client text before anything else. Its
work is bounded by analysing at most :data:`MAX_QUERY_CHARS` characters; the result says whether
the text was cut.

Entity matching is token based rather than one big regex alternation: the text and every name or
alias are split into the same tokens (runs of word characters, or single other non-space
characters), compared case-folded token by token, with "glued" tokens (``O'Brien``) required to be
glued in the text too and whitespace-separated ones separated by whitespace. That gives
whole-word matching (``Bram`` never matches inside ``Brambles``, but matches in ``Bram's``), spans
that always fall on character boundaries of the original text, and a cost that does not depend on
compiling a regex over thousands of names on every request. A single word of a multi-word name
("Silas" for Silas Crane) is a term of its own too, below every whole name (see ``_name_words``).

Facets are coarse intents (where is X? who holds Y? is Z alive?) detected by word-boundary
regexes; the context assembler uses them to decide which facts and events to rank first.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Final, Literal, get_args

import msgspec

from rag.events import normalize_name

__all__ = [
    "FACETS",
    "MAX_QUERY_CHARS",
    "NAME_WORD_MIN_CHARS",
    "NOT_NAME_WORDS",
    "EventReferences",
    "Facet",
    "KnownEntity",
    "Mention",
    "QueryAnalysis",
    "analyse_query",
    "event_references",
    "name_words",
]

MAX_QUERY_CHARS: Final = 4_000
"""Characters of the query that are analysed. A question longer than this is almost certainly
pasted text rather than a question; analysing only its head keeps the cost per request bounded."""

Facet = Literal["location", "possession", "status", "relationship", "presence", "timeline", "general"]
"""What a query asks about. ``status`` is life status (alive, dead, fate); ``general`` is given
only when nothing more specific matched."""

FACETS: Final[tuple[Facet, ...]] = get_args(Facet)
"""Every facet, in the canonical order :attr:`QueryAnalysis.facets` uses."""


class KnownEntity(msgspec.Struct, frozen=True):
    """An entity the query may mention: from ECS, or from chronicle actors when ECS is down."""

    id: str
    name: str
    aliases: list[str] = []
    kind: str = "character"


class Mention(msgspec.Struct, frozen=True):
    """One entity the query is about.

    ``span`` is the ``(start, end)`` of the first occurrence in the query text, and ``matched`` is
    exactly ``text[start:end]``. A mention that comes only from ``focus`` has ``span`` ``None``
    and ``matched`` equal to the focus entry as given. ``ambiguous`` marks a name or alias shared
    by several entities; each of them gets a mention, since dropping the right one would lose
    context while including an extra one only costs budget.
    """

    entity_id: str
    name: str
    kind: str
    matched: str
    span: tuple[int, int] | None
    from_focus: bool = False
    ambiguous: bool = False


class EventReferences(msgspec.Struct, frozen=True):
    """Events named in a question: "what happened at #15?", "who was at salt-road-012?"."""

    sequences: tuple[int, ...] = ()
    ids: tuple[str, ...] = ()
    """Event ids (UUIDs, in canonical form)."""
    external_ids: tuple[str, ...] = ()
    """Words that may be external ids: they carry a digit and a letter (``salt-road-012``,
    ``dl-004``); a client's ids without both are not told apart from ordinary words, years and
    times."""


MAX_EVENT_REFERENCES: Final = 16
"""Event references read from one question, at most (of each form)."""
_SEQUENCE_REF: Final = re.compile(r"(?<![\w#])#(\d{1,18})(?!\w)")
_SEQUENCE_RANGE: Final = re.compile(
    r"\bbetween\s+#(\d{1,18})\s+and\s+#?(\d{1,18})(?!\w)"
    r"|(?<![\w#])#(\d{1,18})\s*(?:-|–|—|\.\.|to|through|until)\s*#?(\d{1,18})(?!\w)",
    re.IGNORECASE,
)
"""``#30 to #34``, ``between #30 and #34``, ``#30-34``: every event of the span (at most
``MAX_EVENT_REFERENCES`` of them, from its start)."""
_ID_LIKE: Final = re.compile(r"[^\s\"'()\[\]{}<>,;]+")
_TRIM: Final = ".:!?"
_ORDINAL: Final = re.compile(r"\d+(?:st|nd|rd|th)", re.IGNORECASE)


def _id_words(text: str) -> Iterator[tuple[str, int]]:
    """The words of ``text`` that may be event ids or external ids, with where each starts."""
    for match in _ID_LIKE.finditer(text):
        word = match.group().rstrip(_TRIM)
        if len(word) < 3 or word.startswith("#") or not any(c.isdigit() for c in word):
            continue
        if not any(c.isalpha() for c in word) or _ORDINAL.fullmatch(word):
            continue  # "1201", "10:30", "3rd": years, times and ordinals, far more often than ids
        yield word, match.start()


def _inside_id_words(
    text: str, occurrences: list[tuple[str, tuple[int, int], bool]], by_id: Mapping[str, KnownEntity]
) -> list[tuple[str, tuple[int, int], bool]]:
    """``occurrences`` without the words of names found inside an id ("tarrow-017" names an
    event, not the Tarrow Wharf); a whole name or alias stays, even one that looks like an id."""
    ids = [(start, start + len(word)) for word, start in _id_words(text)]
    if not ids:
        return occurrences

    def whole_name(entity_id: str, matched: str) -> bool:
        entity = by_id.get(entity_id)
        labels = () if entity is None else (entity.name, *entity.aliases)
        return normalize_name(matched) in {normalize_name(label) for label in labels}

    return [
        (entity_id, (begin, end), ambiguous)
        for entity_id, (begin, end), ambiguous in occurrences
        if not any(lo <= begin and end <= hi for lo, hi in ids) or whole_name(entity_id, text[begin:end])
    ]


def event_references(text: str) -> EventReferences | None:
    """The events ``text`` names by ``#sequence``, event id or a word that may be an external id."""
    bounds = [
        (int(m.group(1) or m.group(3)), int(m.group(2) or m.group(4))) for m in _SEQUENCE_RANGE.finditer(text)
    ]
    spans = [range(first, last + 1) for first, last in bounds if first < last]
    found = [int(m.group(1)) for m in _SEQUENCE_REF.finditer(text)]
    sequences = list(dict.fromkeys([*(n for span in spans for n in span[:MAX_EVENT_REFERENCES]), *found]))
    ids: list[str] = []
    external: list[str] = []
    for word, _ in _id_words(text):
        try:
            ids.append(str(uuid.UUID(word)))
        except ValueError:
            external.append(word)
    if not (sequences or ids or external):
        return None
    return EventReferences(
        sequences=tuple(sequences[:MAX_EVENT_REFERENCES]),
        ids=tuple(dict.fromkeys(ids))[:MAX_EVENT_REFERENCES],
        external_ids=tuple(dict.fromkeys(external))[:MAX_EVENT_REFERENCES],
    )


class QueryAnalysis(msgspec.Struct, frozen=True):
    """The result of :func:`analyse_query`.

    ``facets`` is a set, stored as a tuple in :data:`FACETS` order so that encodings and logs are
    deterministic (a frozenset's iteration order changes with the interpreter's hash seed).
    ``dimensions`` are relationship dimension hints (``trust``, ``affection``, ``fear``,
    ``respect``, ``loyalty``) in order of first occurrence.
    """

    mentions: tuple[Mention, ...] = ()
    facets: tuple[Facet, ...] = ("general",)
    dimensions: tuple[str, ...] = ()
    unresolved_focus: tuple[str, ...] = ()
    truncated: bool = False
    analysed_chars: int = 0
    events: EventReferences | None = None
    """Events the question names by id, external id or ``#sequence`` (None: it names none)."""

    @property
    def entity_ids(self) -> list[str]:
        """The mentioned entity ids, without repeats, in mention order (focus first)."""
        return list(dict.fromkeys(m.entity_id for m in self.mentions))

    @property
    def dimension(self) -> str | None:
        """The first relationship dimension hint, if any."""
        return self.dimensions[0] if self.dimensions else None

    def has(self, facet: Facet) -> bool:
        return facet in self.facets


# --------------------------------------------------------------------------------------------------
# Facets
# --------------------------------------------------------------------------------------------------


def _words(*alternatives: str) -> re.Pattern[str]:
    # (?<!\w)/(?!\w) instead of \b so that phrases starting or ending in punctuation still work,
    # and \s+ inside phrases so that line breaks or double spaces do not defeat them.
    body = "|".join(alt.replace(" ", r"\s+") for alt in alternatives)
    return re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)


# Inflected forms are listed explicitly (not stemmed) so that each pattern is easy to audit and
# none of them fires on an unrelated word that merely shares a prefix.
_FACET_PATTERNS: Final[tuple[tuple[Facet, re.Pattern[str]], ...]] = (
    (
        "location",
        _words(
            "where",
            "whereabouts",
            "location",
            "located",
            "went",
            "gone to",
            "go to",
            "goes to",
            "travel(?:l?ed)? to",
            "headed",
            "heading",
        ),
    ),
    (
        "possession",
        _words(
            "has",
            "have",
            "had",
            "carr(?:y|ies|ied|ying)",
            "hold(?:s|ing)?",
            "held",
            "own(?:s|ed)?",
            "possess(?:es|ed|ion|ions)?",
            "inventory",
            "belongings",
            "who has",
            "stole(?:n)?",
            # What a place holds: what was left, hidden or kept there.
            "hid(?:den|es)?",
            "stash(?:ed|es)?",
            "stored",
            "kept (?:in|at|on|inside)",
            "left (?:in|at|on|inside|behind)",
            "lying (?:in|at|on|inside|there|here)",
            "lies (?:in|at|on|inside|there|here)",
            "what(?:'s|’s| is| are| was| were| remains?| lies) (?:in|at|on|inside|there|here|left)",
            "contents",
        ),
    ),
    (
        "status",
        _words(
            "alive",
            "dead",
            "die[sd]?",
            "dying",
            "killed",
            "kill(?:s)?",
            "living",
            "death",
            "happened to",
            "fate",
            "survived?",
            "wounded",
            "injured",
            "captured",
            "imprisoned",
        ),
    ),
    (
        "relationship",
        _words(
            "trust(?:s|ed|ing)?",
            "distrust(?:s|ed)?",
            "mistrust(?:s|ed)?",
            "feels? about",
            "felt about",
            "relationship(?:s)?",
            "like[sd]?",
            "dislike[sd]?",
            "hate[sd]?",
            "love[sd]?",
            "loyal(?:ty)?",
            "all(?:y|ies|ied)",
            "enem(?:y|ies)",
            "afraid of",
            "fears?",
            "feared",
            "respect(?:s|ed)?",
            "friends?",
            "rivals?",
        ),
    ),
    (
        "presence",
        _words(
            "who was at",
            "who(?: else)?(?: is| are| were| was|'s|’s) (?:at|in|on|inside|aboard|there|here|with)",
            "(?:which|what) (?:characters|people|persons|ones|of them) (?:is|are|were|was) "
            "(?:at|in|on|inside|aboard|there|here|with)",
            "who was present",
            "who were present",
            "present",
            "witness(?:es|ed)?",
            "who else was",
            "who else were",
            "who saw",
            "who was there",
            "who was with",
        ),
    ),
    (
        "timeline",
        _words(
            "what happened",
            "before",
            "after",
            "when",
            "history",
            "earlier",
            "first",
            "last time",
            "since",
            "until",
            "previously",
            "timeline",
        ),
    ),
)

# Checked in this order at each position; the first hit names the dimension. Negative words map
# to the same dimension as positive ones: "does Maud distrust Oswin?" is a question about trust.
_DIMENSION_PATTERNS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    (
        "trust",
        _words(
            "trust(?:s|ed|ing|worthy)?",
            "distrust(?:s|ed)?",
            "mistrust(?:s|ed)?",
            "rel(?:y|ies|ied) on",
            "confidence",
        ),
    ),
    (
        "affection",
        _words(
            "like[sd]?",
            "dislike[sd]?",
            "love[sd]?",
            "hate[sd]?",
            "fond(?:ness)?",
            "affection",
            "care[sd]? (?:about|for)",
        ),
    ),
    ("fear", _words("afraid", "fears?", "feared", "scared", "frightened", "terrified")),
    ("respect", _words("respect(?:s|ed)?", "admire[sd]?", "esteem", "despise[sd]?")),
    ("loyalty", _words("loyal(?:ty)?", "disloyal(?:ty)?", "betray(?:s|ed|al)?")),
)


def _facets_and_dimensions(text: str) -> tuple[tuple[Facet, ...], tuple[str, ...]]:
    found: set[Facet] = {facet for facet, pattern in _FACET_PATTERNS if pattern.search(text)}
    firsts: list[tuple[int, int, str]] = []
    for rank, (dimension, pattern) in enumerate(_DIMENSION_PATTERNS):
        match = pattern.search(text)
        if match is not None:
            firsts.append((match.start(), rank, dimension))
    dimensions = tuple(dimension for _, _, dimension in sorted(firsts))
    if dimensions:
        # "Does Maud respect Oswin?" is a relationship question even without a listed keyword.
        found.add("relationship")
    if not found:
        found.add("general")
    return tuple(facet for facet in FACETS if facet in found), dimensions


# --------------------------------------------------------------------------------------------------
# Entity mentions
# --------------------------------------------------------------------------------------------------

# A token is a maximal run of word characters or a single other non-space character, so
# punctuation inside names ("O'Brien", "St. Ives") must line up with the text's punctuation.
_TOKEN: Final = re.compile(r"\w+|[^\w\s]")
_WORD_CHAR: Final = re.compile(r"\w")


class _Term(msgspec.Struct, frozen=True):
    """A name or alias split into case-folded tokens; ``glued[i]`` says token ``i + 1`` follows
    token ``i`` with no whitespace in between."""

    tokens: tuple[str, ...]
    glued: tuple[bool, ...]
    entity_ids: tuple[str, ...]
    ambiguous: bool


def _split(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    folded: list[str] = []
    spans: list[tuple[int, int]] = []
    for match in _TOKEN.finditer(text):
        folded.append(match.group().casefold())
        spans.append(match.span())
    return folded, spans


def _build_terms(known: Sequence[KnownEntity]) -> dict[str, list[_Term]]:
    """Index every name and alias by its first folded token, longest term first."""
    by_key: dict[str, tuple[set[str], set[str]]] = {}  # key -> (ids naming it, ids aliasing it)
    key_source: dict[str, str] = {}
    for entity in known:
        for position, label in enumerate((entity.name, *entity.aliases)):
            key = normalize_name(label)
            if not key:
                continue
            # Tokenise the label before folding, exactly as the text is: folding can change what
            # counts as a word character ("İ" folds to "i" plus a combining dot).
            key_source.setdefault(key, " ".join(label.split()))
            named, aliased = by_key.setdefault(key, (set(), set()))
            (named if position == 0 else aliased).add(entity.id)

    # Entities a term shares are listed by name, not id: the ids of a replay (chronicle-only mode)
    # are not ECS's, and "Where is Anna?" must bring Anna Brook and Anna Weiss in one order.
    names = {e.id: e.name for e in known}

    def in_order(ids: set[str]) -> tuple[str, ...]:
        return tuple(sorted(ids, key=lambda i: (names[i].casefold(), names[i], i)))

    index: dict[str, list[_Term]] = {}
    for key, (named, aliased) in by_key.items():
        tokens, spans = _split(key_source[key])
        if not tokens:
            continue
        # A label that is one entity's name refers to that entity even if it is another's alias.
        ids = named or aliased
        glued = tuple(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
        term = _Term(tuple(tokens), glued, in_order(ids), ambiguous=len(ids) > 1)
        index.setdefault(tokens[0], []).append(term)
    for word, ids in _name_words(known, exclude=index).items():
        if len(ids) <= MAX_NAME_WORD_ENTITIES:
            index.setdefault(word, []).append(_Term((word,), (), in_order(ids), ambiguous=len(ids) > 1))
    for terms in index.values():
        # Longest first, so "Lantern Cellar" wins over "Lantern"; then by tokens for determinism.
        terms.sort(key=lambda t: (-len(t.tokens), t.tokens, t.glued))
    return index


MAX_NAME_WORD_ENTITIES: Final = 3
"""A word of a name refers to the entities whose names (or aliases) contain it when at most this
many do; a word that more share ("Captain" in a whole garrison, a family name) names nobody."""
NAME_WORD_MIN_CHARS: Final = 3
# Words of names that are far more often just words of the question.
# fmt: off
NOT_NAME_WORDS: Final = frozenset({
    "the", "and", "for", "from", "with", "into", "onto", "upon", "over", "under", "about", "after",
    "before", "who", "whom", "whose", "what", "where", "when", "why", "how", "which", "are", "was",
    "were", "has", "have", "had", "does", "did", "now", "then", "this", "that", "these", "those",
    "his", "her", "hers", "him", "she", "they", "them", "their", "its", "our", "your", "you", "not",
    "all", "any", "some", "one", "two", "van", "von", "der", "den", "des", "del", "les", "los",
    "las",
})
# fmt: on


def _name_words(known: Sequence[KnownEntity], exclude: Mapping[str, list[_Term]]) -> dict[str, set[str]]:
    """Single words of multi-word names and aliases, with the entities they may refer to.

    People call characters by one name ("Silas" for Silas Crane, "the captain" for Captain
    Elara) and things by their head noun ("the spyglass" for the brass spyglass). A word that is
    a whole name or alias of its own is left to that term, which always wins; short and function
    words are never names on their own.
    """
    whole = {terms_key for terms_key, terms in exclude.items() if any(len(t.tokens) == 1 for t in terms)}
    words: dict[str, set[str]] = {}
    for entity in known:
        for label in (entity.name, *entity.aliases):
            if len(_word_tokens(label)) < 2:
                continue
            for word in name_words(label) - whole:
                words.setdefault(word, set()).add(entity.id)
    return words


def _word_tokens(text: str) -> list[str]:
    return [t for t in _split(" ".join(text.split()))[0] if _WORD_CHAR.match(t)]


def name_words(text: str) -> set[str]:
    """The case-folded words of ``text`` that can stand for a name on their own: not short, not
    digits only, not function words (``NOT_NAME_WORDS``)."""
    return {
        word
        for word in _word_tokens(text)
        if len(word) >= NAME_WORD_MIN_CHARS and not word.isdigit() and word not in NOT_NAME_WORDS
    }


_Fingerprint = tuple[tuple[str, str, tuple[str, ...]], ...]
_Index = dict[str, list[_Term]]

# Name indexes, kept between questions. Each holds every name of a chronicle (a few MB for
# thousands of entities), so they are kept per scope (a chronicle and where its names come from),
# the latest version only: a chronicle whose names change with every event being written must not
# fill the memory with the indexes of its past versions.
_BY_SCOPE: dict[Hashable, tuple[Sequence[KnownEntity], _Fingerprint, _Index]] = {}
_SCOPES_KEPT: Final = 64
# Callers without a scope (tools, tests): by content, a few entries.
_BY_FINGERPRINT: dict[int, tuple[_Fingerprint, _Index]] = {}
_FINGERPRINTS_KEPT: Final = 8


def _fingerprint(known: Sequence[KnownEntity]) -> _Fingerprint:
    return tuple((k.id, k.name, tuple(k.aliases)) for k in known)


def _terms_for(known: Sequence[KnownEntity], scope: Hashable | None) -> _Index:
    """`_build_terms`, memoized: a chronicle's entities rarely change between two questions, and
    tokenising a thousand names on every request cost more than the rest of the analysis."""
    if scope is None:
        return _terms_by_fingerprint(known)
    held = _BY_SCOPE.get(scope)
    # The same tuple as last time is recognised without even the fingerprint (a tuple of every
    # name: ~1 ms for a few thousand). Only tuples: they cannot change (their KnownEntity items
    # are frozen, and their alias lists are never changed in place).
    if held is not None and held[0] is known and isinstance(known, tuple):
        return held[2]
    fingerprint = _fingerprint(known)
    index = held[2] if held is not None and held[1] == fingerprint else _build_terms(known)
    _BY_SCOPE.pop(scope, None)
    if len(_BY_SCOPE) >= _SCOPES_KEPT:
        _BY_SCOPE.pop(next(iter(_BY_SCOPE)))  # the scope used longest ago
    _BY_SCOPE[scope] = (known, fingerprint, index)
    return index


def _terms_by_fingerprint(known: Sequence[KnownEntity]) -> _Index:
    fingerprint = _fingerprint(known)
    key = hash(fingerprint)
    cached = _BY_FINGERPRINT.get(key)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    index = _build_terms(known)
    if len(_BY_FINGERPRINT) >= _FINGERPRINTS_KEPT:
        _BY_FINGERPRINT.pop(next(iter(_BY_FINGERPRINT)))
    _BY_FINGERPRINT[key] = (fingerprint, index)
    return index


def _find_mentions(
    text: str, known: Sequence[KnownEntity], scope: Hashable | None = None
) -> list[tuple[str, tuple[int, int], bool]]:
    """``(entity_id, span, ambiguous)`` for every match, left to right, non-overlapping."""
    index = _terms_for(known, scope)
    if not index:
        return []
    folded, spans = _split(text)
    found: list[tuple[str, tuple[int, int], bool]] = []
    i = 0
    while i < len(folded):
        match: _Term | None = None
        for term in index.get(folded[i], ()):
            n = len(term.tokens)
            if i + n > len(folded) or tuple(folded[i : i + n]) != term.tokens:
                continue
            if all((spans[i + k][1] == spans[i + k + 1][0]) == term.glued[k] for k in range(n - 1)):
                match = term
                break
        if match is None:
            i += 1
            continue
        span = (spans[i][0], spans[i + len(match.tokens) - 1][1])
        found.extend((entity_id, span, match.ambiguous) for entity_id in match.entity_ids)
        i += len(match.tokens)
    return found


_ARTICLES: Final = frozenset({"the", "a", "an"})


def _resolve_focus(
    entry: str, known: Sequence[KnownEntity], by_id: dict[str, KnownEntity], index: _Index
) -> list[KnownEntity]:
    """Exact id first, then entities named ``entry``, then entities with it as an alias, then
    (a single word) the entities whose names contain it, as in the text."""
    if entry in by_id:
        return [by_id[entry]]
    key = normalize_name(entry)
    if not key:
        return []
    named = [e for e in known if normalize_name(e.name) == key]
    if named:
        return sorted(named, key=lambda e: e.id)
    aliased = [e for e in known if any(normalize_name(a) == key for a in e.aliases)]
    if aliased:
        return sorted(aliased, key=lambda e: e.id)
    article, _, rest = key.partition(" ")
    if article in _ARTICLES and rest:
        return _resolve_focus(rest, known, by_id, index)  # "the case", as a question says it
    tokens = _split(key)[0]
    if len(tokens) != 1:
        return []
    term = next((t for t in index.get(tokens[0], ()) if t.tokens == (tokens[0],)), None)
    return [] if term is None else [by_id[i] for i in term.entity_ids]


def resolve_reference(
    entry: str, known: Sequence[KnownEntity], *, scope: Hashable | None = None
) -> list[KnownEntity]:
    """The entities a client's reference to one entity means, as for a ``focus`` entry: its id,
    else its name, else an alias, else (a single word) the entities whose names contain it."""
    return _resolve_focus(entry, known, {e.id: e for e in known}, _terms_for(known, scope))


def _window(text: str) -> tuple[str, bool]:
    if len(text) <= MAX_QUERY_CHARS:
        return text, False
    window = text[:MAX_QUERY_CHARS]
    # Do not let the cut create a word: "...Oswinford" cut to "...Oswin" is not a mention.
    tail = re.search(r"\w+\Z", window)
    if tail is not None and _WORD_CHAR.match(text, MAX_QUERY_CHARS):
        window = window[: tail.start()]
    return window, True


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def analyse_query(
    text: str, known: Sequence[KnownEntity], focus: Sequence[str] = (), *, scope: Hashable | None = None
) -> QueryAnalysis:
    """Find the entities ``text`` mentions and the facets it asks about.

    Args:
        text: The client's query; only the first :data:`MAX_QUERY_CHARS` characters are analysed.
        known: The entities that may be mentioned (their names and aliases are matched
            case-insensitively, as whole words or phrases, longest match first).
        focus: Entity ids or names the client asked to focus on. They are resolved against
            ``known`` and listed first, in the order given; entries that resolve to nothing are
            reported in ``unresolved_focus`` instead of failing the request.
        scope: Where ``known`` comes from (say, a chronicle), for the index of its names kept
            between calls: one per scope, its latest version. None keeps a few by content.

    Returns:
        Mentions in a deterministic order (focus first, then by first occurrence in the text;
        ties between entities sharing one span by id), one per entity.
    """
    window, truncated = _window(text)
    facets, dimensions = _facets_and_dimensions(window)
    by_id = {entity.id: entity for entity in known}
    occurrences = _inside_id_words(window, _find_mentions(window, known, scope), by_id)
    first_seen: dict[str, tuple[tuple[int, int], bool]] = {}
    for entity_id, span, ambiguous in occurrences:
        first_seen.setdefault(entity_id, (span, ambiguous))

    mentions: list[Mention] = []
    listed: set[str] = set()
    unresolved: list[str] = []
    for entry in _dedupe(focus):
        if not entry.strip():
            continue  # a blank entry is a client-side artefact, not a request worth reporting
        resolved = _resolve_focus(entry, known, by_id, _terms_for(known, scope))
        if not resolved:
            unresolved.append(entry)
        for entity in resolved:
            if entity.id in listed:
                continue
            listed.add(entity.id)
            seen = first_seen.get(entity.id)
            mentions.append(
                Mention(
                    entity_id=entity.id,
                    name=entity.name,
                    kind=entity.kind,
                    matched=window[seen[0][0] : seen[0][1]] if seen else entry,
                    span=seen[0] if seen else None,
                    from_focus=True,
                    ambiguous=len(resolved) > 1 or (seen is not None and seen[1]),
                )
            )

    for entity_id, (span, ambiguous) in first_seen.items():
        if entity_id in listed:
            continue
        listed.add(entity_id)
        entity = by_id[entity_id]
        mentions.append(
            Mention(
                entity_id=entity.id,
                name=entity.name,
                kind=entity.kind,
                matched=window[span[0] : span[1]],
                span=span,
                ambiguous=ambiguous,
            )
        )

    return QueryAnalysis(
        mentions=tuple(mentions),
        facets=facets,
        dimensions=dimensions,
        unresolved_focus=tuple(unresolved),
        truncated=truncated,
        analysed_chars=len(window),
        events=event_references(window),
    )


def _dedupe(entries: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(entries))
