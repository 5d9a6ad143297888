"""Seeded narrative world generator with gold answers, for benchmarks and the evaluation harness.

:func:`generate_world` simulates a small fantasy world with ``random.Random(seed)`` and writes
what happens as a stream of :class:`rag.events.EventIn` (external ids ``gen-{seed}-{i:07d}``, ``i``
counting from 0; the chronicle sequence of event ``i`` is ``i + 1``). The same arguments always give
the same events and queries; nothing here does I/O except :func:`write_jsonl`.

What the stream contains
    Setting events spawn the locations and factions; characters enter the story over the first 60%
    of the stream (first mention as an actor, ``status``/``health`` set); items are spawned carried
    by a newcomer or found lying somewhere. Then a weighted mix: moves (the most common, sometimes
    with a companion who is moved only by *presence*), meetings (an implicit move: no effect, the
    visitor is placed by presence), dialogue without effects at the speakers' shared location, gifts,
    pick-ups and drops, thefts (``transfer`` with ``from``, sometimes noticed: the victim's trust
    drops), deaths (status dead + health 0; the dead never act or move themselves again, but are
    looted - ``transfer`` from the corpse - and their bodies carried), wounds and healing (``health``
    sets, patch or bare number), knock-outs and recoveries, relate/unrelate (ally, rival, employer,
    sworn - the last two also with factions), valence changes (trust mostly; ``delta`` usually,
    sometimes an absolute ``value``), custom components (``mood``, ``oath``), aliases declared mid-story
    and then used in later summaries, actor lists and effects, and rare item destruction.
    Summaries are paraphrased from varied templates with synonyms; items are named sometimes
    exactly, sometimes by paraphrase ("the needle", "Kaelric's compass").

Gold
    Every event is folded into an :class:`ecs.reducer.WorldState` with the project's reducer as it
    is generated; the changes it reports are kept per fact (not as snapshots) in
    :attr:`GeneratedWorld.gold`, so the value of any fact after any prefix of the stream can be
    looked up. The generator also keeps its own simple bookkeeping (it decides what may happen next
    from it) with the same per-fact history in :attr:`GeneratedWorld.bookkeeping`; the two must be
    identical, and the generated stream must cause no reducer anomaly (the tests check both).

Fact keys (all names canonical, i.e. never aliases)
    ``("position", name)`` -> location name or ``None`` (removed: the item is held);
    ``("holder", item)`` -> character name or ``None``; ``("status", name)`` -> status;
    ``("health", name)`` -> ``{"hp", "max_hp", "condition"}``; ``("mood"|"oath", name)`` -> JSON;
    ``("valence", a, b, dimension)`` -> float (one entry per valence effect, even if unchanged);
    ``("relation", a, b, type)`` -> ``True``/``False``; ``("alias", name)`` -> the alias added.

Queries (:func:`generate_queries`) are asked at :attr:`GeneratedWorld.checkpoints` (``asked_after``
= number of events ingested). See :class:`Query` for the answer shape of each kind.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import msgspec

from ecs.reducer import (
    VALENCE_DIGITS,
    AliasAdded,
    Anomaly,
    ChronicleEvent,
    ComponentRemoved,
    ComponentSet,
    EntityCreated,
    EventChanges,
    RelationshipRemoved,
    RelationshipSet,
    ValenceChanged,
    WorldState,
    apply_event,
)
from rag.events import (
    ActorRef,
    AliasEffect,
    DestroyEffect,
    Effect,
    EventIn,
    MoveEffect,
    RelateEffect,
    SetEffect,
    SpawnEffect,
    StatusEffect,
    TransferEffect,
    UnrelateEffect,
    ValenceEffect,
    normalize_name,
)

__all__ = [
    "DIMENSIONS",
    "GENERATOR_NAMESPACE",
    "QUERY_KINDS",
    "RELATION_TYPES",
    "FactHistory",
    "GeneratedWorld",
    "Query",
    "default_sizes",
    "generate_queries",
    "generate_world",
    "queries",
    "write_jsonl",
]

GENERATOR_NAMESPACE: Final = uuid.UUID("0b4c3f1e-7d52-5c8e-9a61-4e2f8b7d9c10")
"""``chronicle_id = uuid5(GENERATOR_NAMESPACE, f"lorekeeper-generator-{seed}")``."""

QUERY_KINDS: Final = (
    "where_now",
    "who_holds",
    "is_alive",
    "feeling",
    "what_happened",
    "who_was_at",
    "where_before",
    "state_as_of",
)
RELATION_TYPES: Final = ("ally", "rival", "employer", "sworn")
DIMENSIONS: Final = ("trust", "fear", "respect", "affection")
DEAD: Final = frozenset({"dead", "destroyed"})
TRACKED_COMPONENTS: Final = frozenset({"position", "holder", "status", "health", "mood", "oath"})
EMPTY_HEALTH: Final[dict[str, Any]] = {"hp": None, "max_hp": None, "condition": None}
_MISSING: Final = object()
SPAWNS_PER_EVENT: Final = 40
INTRO_DEADLINE: Final = 0.6
"""Every character and item has entered the story by this fraction of the stream (if it fits)."""

# --------------------------------------------------------------------------------------------------
# Vocabulary

_CHAR_PREFIX = (
    "Ka", "Ae", "Bri", "Dor", "Eth", "Fen", "Gar", "Hal", "Isk", "Jor", "Kel", "Lor", "Mar", "Ny",
    "Or", "Pel", "Quen", "Ryn", "Sil", "Tor", "Ul", "Vel", "Wyn", "Xan", "Yr", "Zar", "Thal", "Cor",
    "Ela", "Mor", "Sev", "Tam", "Bel", "Dra", "Gwen", "Iv", "Lys", "Nor", "Ost", "Rha",
)  # fmt: skip
_CHAR_MIDDLE = ("", "", "", "a", "e", "i", "o", "an", "el", "ar", "is", "or", "yn", "ad", "il")
_CHAR_SUFFIX = (
    "ric", "wen", "dra", "mir", "thas", "vyn", "ra", "len", "dric", "sha", "mond", "wyn", "ion",
    "ara", "eth", "ius", "is", "ek", "orn", "ith", "ane", "uin", "ast", "ella", "ros", "ven", "dun",
    "ia", "ald", "ysse",
)  # fmt: skip
_LOC_ADJ = (
    "Salt", "Amber", "Crooked", "Silent", "Iron", "Willow", "Ashen", "Gilded", "Sunken", "Hollow",
    "Red", "Thorn", "Moss", "Copper", "Lantern", "Raven", "Frost", "Ember", "Bitter", "Drowned",
    "Golden", "Stone", "Weeping", "Broken",
)  # fmt: skip
_LOC_NOUN = (
    "Market", "Gate", "Mill", "Ford", "Tower", "Chapel", "Harbour", "Wharf", "Orchard", "Crossing",
    "Library", "Barracks", "Tannery", "Shrine", "Vault", "Well", "Bridge", "Inn", "Keep", "Quarry",
    "Abbey", "Archive", "Causeway", "Square",
)  # fmt: skip
_LOC_DESCRIPTIONS = (
    "a windswept place where traders gather",
    "crowded at noon and deserted at night",
    "older than anyone remembers",
    "watched closely by the city guard",
    "a haunt of smugglers and gossips",
    "quiet, damp and smelling of tar",
    "where pilgrims stop to rest",
    "half in ruins since the last war",
)
_MATERIALS = (
    "brass", "silver", "iron", "bone", "jade", "copper", "obsidian", "oak", "ivory", "gold",
    "pewter", "glass", "amber", "bronze", "ebony", "crystal", "leather", "tin", "coral", "onyx",
    "steel", "willow", "ashwood", "garnet",
)  # fmt: skip
_OBJECTS: dict[str, tuple[str, str]] = {
    "compass": ("needle", "pathfinder"),
    "dagger": ("blade", "knife"),
    "amulet": ("pendant", "charm"),
    "ring": ("band", "signet"),
    "key": ("key", "opener"),
    "lantern": ("lamp", "light"),
    "flask": ("bottle", "vial"),
    "map": ("chart", "map"),
    "ledger": ("book of accounts", "record book"),
    "crown": ("circlet", "diadem"),
    "horn": ("bugle", "horn"),
    "mirror": ("looking glass", "glass"),
    "chalice": ("cup", "goblet"),
    "spyglass": ("telescope", "glass"),
    "seal": ("stamp", "signet"),
    "bell": ("chime", "bell"),
    "box": ("casket", "case"),
    "coin": ("piece", "token"),
    "staff": ("rod", "stave"),
    "bow": ("longbow", "bow"),
    "sword": ("blade", "sword"),
    "helm": ("helmet", "casque"),
    "locket": ("pendant", "keepsake"),
    "scroll": ("parchment", "roll"),
    "idol": ("figurine", "statuette"),
    "brooch": ("pin", "clasp"),
    "hourglass": ("sand-glass", "timer"),
    "pipe": ("pipe", "smoking pipe"),
    "lute": ("instrument", "lute"),
    "gauntlet": ("glove", "gauntlet"),
}
_FACTION_WORDS = (
    "Salt",
    "Lantern",
    "Ember",
    "Tide",
    "Veiled",
    "Silver",
    "Ashen",
    "Crimson",
    "Harrow",
    "Gull",
)
_FACTION_EMBLEMS = ("Thorn", "Lamp", "Crescent", "Chalice", "Key", "Oak", "Black Sail", "Seventh Bell")
_FACTION_FORMS = ("the {w} Guild", "the {w} Company", "the {w} Covenant", "the {w} Syndicate")
_FACTION_ORDERS = ("the Order of the {e}", "the Brotherhood of the {e}", "the Keepers of the {e}")
_ALIAS_ADJ = (
    "Grey", "Silent", "Laughing", "One-Eyed", "Pale", "Crooked", "Little", "Old", "Black", "Quiet",
    "Lucky", "Limping", "Smiling", "Barefoot", "Red-Handed", "Sleepless", "Ragged", "Gentle",
    "Iron-Jawed", "Whispering",
)  # fmt: skip
_ALIAS_NOUN = (
    "Fox", "Heron", "Wolf", "Crow", "Hound", "Magpie", "Owl", "Viper", "Stag", "Hare", "Moth",
    "Ferryman", "Tinker", "Scribe", "Widow", "Piper", "Sparrow", "Mule", "Pilgrim", "Candle",
)  # fmt: skip
_TRADES = (
    "smuggler", "scribe", "sellsword", "herbalist", "ferryman", "cartographer", "priest", "tinker",
    "courier", "hunter", "minstrel", "alchemist", "guard", "fence", "sailor", "weaver",
)  # fmt: skip
_TRAITS = ("cautious", "proud", "greedy", "loyal", "curious", "vengeful", "kind", "sly", "brave", "pious")
_MOODS = ("wary", "cheerful", "grim", "restless", "hopeful", "sullen", "anxious", "elated", "bitter", "calm")
_VOWS = (
    "to guard its secrets",
    "to repay an old debt",
    "to serve until death",
    "to find the lost heir",
    "never to draw steel against its members",
)
_TOPICS = (
    "the rising tolls",
    "the missing shipment",
    "an old debt",
    "the coming storm",
    "the price of grain",
    "a strange dream",
    "the road north",
    "the harvest festival",
)
_OPENERS = (
    "At dawn,",
    "Late that evening,",
    "Before the bells rang,",
    "Under a grey sky,",
    "Some hours later,",
    "On a cold morning,",
    "Around midday,",
    "That night,",
    "Without telling anyone,",
)
_TAILS = (
    "It had started to rain.",
    "Nobody else seemed to notice.",
    "Word of it would reach {f} soon enough.",
    "The bells of the city rang out the hour.",
    "It was a bad omen, some said.",
    "A cold wind blew in from the sea.",
)
_PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his"), "they": ("they", "them", "their")}

# Templates. Fields: a, b (characters as referenced in this event), sa/oa/pa (a's pronouns:
# subject/object/possessive), sb/ob/pb, loc, origin, item, f (faction), topic, alias, mood, trade.
T_MOVE = (
    "{a} walked to {loc}.",
    "{a} made {pa} way to {loc}.",
    "{a} set off for {loc}.",
    "{a} arrived at {loc}.",
    "{a} headed over to {loc}.",
    "{a} slipped away to {loc}.",
    "{a} rode out to {loc}.",
    "{a} took the long road to {loc}.",
    "{a} turned up at {loc} unannounced.",
    "{a} left {origin} for {loc}.",
    "After leaving {origin}, {a} reached {loc}.",
    "{a} hurried to {loc} before the gates closed.",
    "{a} wandered down to {loc}.",
    "{a} relocated to {loc}, leaving {origin} behind.",
)
T_MOVE_WITH = (
    "{a} and {b} set off together for {loc}.",
    "{a} travelled to {loc}, {b} at {pa} side.",
    "{a} led {b} to {loc}.",
    "{a} and {b} made their way to {loc}.",
    "{b} followed {a} from {origin} to {loc}.",
)
T_MEET = (
    "{a} sought out {b} at {loc}.",
    "{a} went looking for {b} and found {ob} at {loc}.",
    "{a} joined {b} at {loc}.",
    "{a} caught up with {b} at {loc}.",
    "{a} paid {b} a visit at {loc}.",
)
T_DIALOGUE = (
    "{a} and {b} talked quietly about {topic}.",
    "{a} told {b} about {topic}.",
    "{a} argued with {b} over {topic}.",
    "{a} asked {b} about {topic}.",
    "Over a shared meal at {loc}, {a} and {b} discussed {topic}.",
    "{a} and {b} traded stories about {topic} at {loc}.",
    "{a} confided in {b} about {topic}.",
    "{b} listened while {a} complained about {topic}.",
)
T_GIVE = (
    "{a} handed {item} to {b}.",
    "{a} gave {b} {item}.",
    "{b} received {item} from {a}.",
    "{a} entrusted {item} to {b}.",
    "{a} passed {item} over to {b} without a word.",
    "{a} sold {item} to {b} for a handful of coins.",
)
T_PICKUP = (
    "{a} picked up {item} at {loc}.",
    "{a} found {item} lying at {loc} and pocketed it.",
    "{a} claimed {item} from its hiding place at {loc}.",
    "At {loc}, {a} spotted {item} and took it.",
)
T_PICKUP_TRAVEL = (
    "{a} went to {loc} and retrieved {item}.",
    "{a} made {pa} way to {loc} to collect {item}.",
    "{a} travelled to {loc}, where {sa} took {item}.",
)
T_DROP = (
    "{a} left {item} at {loc}.",
    "{a} hid {item} somewhere in {loc}.",
    "{a} set {item} down at {loc} and walked off without it.",
    "{a} stashed {item} at {loc}.",
    "{a} abandoned {item} at {loc}.",
)
T_LOOT = (
    "{a} searched the body of {b} and took {item}.",
    "{a} pried {item} from {b}'s cold hands.",
    "{a} looted {item} from the corpse of {b}.",
    "{a} found {b} dead at {loc} and took {item}.",
)
T_THEFT = (
    "{a} stole {item} from {b}.",
    "{a} lifted {item} from {b}'s belt while {sb} wasn't looking.",
    "{a} pickpocketed {b}, making off with {item}.",
    "{a} quietly relieved {b} of {item}.",
    "While {b} slept, {a} took {item}.",
)
T_THEFT_NOTICED = (
    "{b} caught {a} stealing {item} but could not stop {oa}.",
    "{a} snatched {item} from {b}, who saw everything.",
    "{a} robbed {b} of {item} in broad daylight.",
)
T_KILL = (
    "{b} killed {a} at {loc}.",
    "{b} struck down {a}.",
    "{a} fell to {b}'s blade at {loc}.",
    "{b} ambushed and slew {a}.",
    "{a} was murdered by {b}.",
)
T_DIE = (
    "{a} died of {pa} wounds at {loc}.",
    "{a} succumbed to a fever.",
    "{a} was found dead at {loc}.",
    "{a} drowned near {loc}.",
    "{a} breathed {pa} last at {loc}.",
)
T_CARRY = (
    "{a} carried {b}'s body to {loc}.",
    "{a} brought the remains of {b} to {loc} for burial.",
    "{a} dragged the corpse of {b} to {loc}.",
)
T_WOUND = (
    "{a} was hurt in a brawl.",
    "{a} took a nasty cut to the arm.",
    "{a} twisted {pa} ankle on the stairs.",
    "{a} was injured in a fall.",
)
T_WOUND_BY = (
    "{b} wounded {a} in a scuffle.",
    "{b} and {a} came to blows; {a} got the worst of it.",
    "{b} stabbed {a}, though not fatally.",
)
T_HEAL = (
    "{a} rested and recovered {pa} strength.",
    "A healer tended {a}'s wounds.",
    "{a}'s wounds began to close.",
    "{a} felt much better after a night's sleep.",
)
T_KNOCKOUT = ("{a} was knocked senseless.", "{a} fainted.", "{a} collapsed from exhaustion.")
T_RECOVER = ("{a} came to, groggy.", "{a} woke up at last.", "{a} regained consciousness.")
T_RELATE: dict[str, tuple[str, ...]] = {
    "ally": ("{a} pledged to help {b}.", "{a} offered {b} an alliance.", "{a} sided with {b}."),
    "ally2": ("{a} and {b} agreed to stand together.", "{a} and {b} became allies."),
    "rival": ("{a} began to see {b} as a rival.", "{a} swore to outdo {b}.", "{a} resented {b}'s success."),
    "employer": ("{a} hired {b}.", "{a} took {b} into {pa} service.", "{b} went to work for {a}."),
    "employer_f": ("{f} took {b} into its employ.", "{b} signed on with {f}.", "{f} hired {b}."),
    "sworn": ("{a} swore an oath to {f}.", "{a} pledged {pa} loyalty to {f}.", "{a} joined {f}."),
}
T_UNRELATE: dict[str, tuple[str, ...]] = {
    "ally": ("{a} broke with {b}.", "{a} withdrew {pa} support from {b}.", "{a} abandoned {b}."),
    "rival": ("{a} made peace with {b}.", "{a} stopped competing with {b}.", "{a} let go of the rivalry."),
    "employer": ("{a} dismissed {b}.", "{b} quit {a}'s service.", "{a} let {b} go."),
    "employer_f": ("{f} dismissed {b}.", "{b} left the service of {f}.", "{b} quit {f}."),
    "sworn": ("{a} renounced {pa} oath to {f}.", "{a} turned {pa} back on {f}.", "{a} left {f}."),
}
T_VALENCE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "trust": (
        ("{a} came to trust {b} a little more.", "{b}'s honesty impressed {a}.", "{a}'s faith in {b} grew.",
         "{b} kept a promise, and {a} noticed."),
        ("{a} began to doubt {b}.", "{a} caught {b} in a lie.", "{a} grew wary of {b}.",
         "{a} no longer believed a word {b} said."),
    ),
    "fear": (
        ("{a} became afraid of {b}.", "{b}'s temper frightened {a}."),
        ("{a} stopped fearing {b}.", "{a} found {b} less menacing than before."),
    ),
    "respect": (
        ("{a} gained respect for {b}.", "{b}'s courage earned {a}'s admiration."),
        ("{a} lost respect for {b}.", "{a} thought less of {b} after that."),
    ),
    "affection": (
        ("{a} grew fond of {b}.", "{a} found {pa} thoughts drifting to {b}."),
        ("{a} cooled towards {b}.", "{a}'s affection for {b} faded."),
    ),
}  # fmt: skip
T_VALENCE_ABS: dict[str, tuple[str, ...]] = {
    "high": ("{a} now trusted {b} completely.", "{a} would trust {b} with {pa} life."),
    "low": ("{a} would never trust {b} again.", "{a} decided {b} was a traitor."),
    "zero": ("{a} resolved to treat {b} as a stranger, neither trusted nor distrusted.",),
}
T_ALIAS = (
    "{a} became known around {loc} as {alias}.",
    "The locals took to calling {a} {alias}.",
    "{a} started going by the name {alias}.",
    "From then on, {a} was known as {alias}.",
)
T_MOOD = ("{a} was feeling {mood}.", "{a} seemed {mood} all day.", "{a} felt {mood}.", "{a} woke up {mood}.")
T_DESTROY = ("{a} smashed {item}.", "{a} threw {item} into the fire.", "{a} broke {item} beyond repair.")
T_INTRO = (
    "{a}, a {trade}, arrived at {loc}.",
    "A {trade} called {a} turned up at {loc}.",
    "{a} came to {loc} for the first time, looking for work as a {trade}.",
    "Nobody at {loc} had seen {a} before; {sa} said {sa} was a {trade}.",
)
T_DISCOVER = (
    "{a} noticed {item} lying at {loc}.",
    "{a} spotted {item} half-buried at {loc} but left it there.",
    "At {loc}, {a} saw {item} on a windowsill.",
)
T_DISCOVER_TAKE = ("{a} found {item} at {loc} and kept it.", "{a} dug up {item} at {loc}.")
T_INTERLUDE = ("The hours passed quietly at {loc}.", "Nothing of note happened at {loc} that day.")


# --------------------------------------------------------------------------------------------------
# Public types


class Query(msgspec.Struct, frozen=True, kw_only=True):
    """A question with its gold answer, asked after ``asked_after`` events were ingested.

    ``answer`` by kind: ``where_now`` / ``where_before`` / ``state_as_of``: location name;
    ``who_holds``: holder name or ``None``; ``is_alive``: ``"yes"`` / ``"no"``; ``feeling``:
    ``{"dimension": "trust", "value": float, "sign": "positive"|"negative"|"neutral"}``;
    ``what_happened``: ``{"status": str, "location": str}``; ``who_was_at``: sorted names.
    ``subjects`` are canonical names, ``subject_refs`` the references (names or aliases) the text
    uses, ``evidence`` the external ids of the events establishing the answer (in stream order),
    ``stale_values`` answers a careless system would give (outdated values, most recent first).
    ``params``: ``dimension`` (feeling), ``event`` (who_was_at), ``as_of_sequence`` / ``as_of_event``
    (state_as_of).
    """

    id: str
    kind: str
    text: str
    asked_after: int
    subjects: list[str]
    subject_refs: list[str]
    answer: Any
    evidence: list[str]
    stale_values: list[Any] = []
    params: dict[str, Any] = {}


class FactHistory:
    """Per-fact change history: ``key -> [(event index, value after that event), ...]``.

    Several changes of one fact in one event collapse into the last. "After ``n`` events" means
    after the events with index ``0 .. n-1`` (sequences ``1 .. n``).
    """

    __slots__ = ("facts",)

    def __init__(self) -> None:
        self.facts: dict[tuple[Any, ...], list[tuple[int, Any]]] = {}

    def record(self, index: int, key: tuple[Any, ...], value: Any) -> None:
        log = self.facts.get(key)
        if log is None:
            self.facts[key] = [(index, value)]
        elif log[-1][0] == index:
            log[-1] = (index, value)
        else:
            log.append((index, value))

    def upto(self, key: tuple[Any, ...], after: int | None = None) -> list[tuple[int, Any]]:
        """The changes of ``key`` made by the first ``after`` events (all when ``None``)."""
        log = self.facts.get(key, [])
        if after is None:
            return list(log)
        return log[: bisect.bisect_left(log, after, key=lambda entry: entry[0])]

    def last(self, key: tuple[Any, ...], after: int) -> tuple[int, Any] | None:
        """The latest change of ``key`` among the first ``after`` events."""
        log = self.facts.get(key)
        if not log:
            return None
        k = bisect.bisect_left(log, after, key=lambda entry: entry[0])
        return log[k - 1] if k else None

    def value_at(self, key: tuple[Any, ...], after: int, default: Any = None) -> Any:
        entry = self.last(key, after)
        return default if entry is None else entry[1]

    def keys(self) -> list[tuple[Any, ...]]:
        return list(self.facts)

    def differences(self, other: FactHistory, limit: int = 10) -> list[str]:
        """Human-readable differences to ``other`` (empty when identical)."""
        out: list[str] = []
        for key in sorted(set(self.facts) | set(other.facts), key=repr):
            mine, theirs = self.facts.get(key), other.facts.get(key)
            if mine != theirs:
                out.append(f"{key}: {mine} != {theirs}")
                if len(out) >= limit:
                    break
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FactHistory) and self.facts == other.facts

    def __len__(self) -> int:
        return sum(len(log) for log in self.facts.values())


@dataclasses.dataclass(eq=False)
class GeneratedWorld:
    """A generated stream of events with the per-fact truth after every event.

    ``characters`` / ``items`` are the introduced ones, in order of introduction; ``introduced``
    maps every entity to the index of the event that created it; ``aliases`` maps an alias to its
    canonical name and ``alias_declared`` to the index of the event that declared it.
    ``anomalies`` are reducer anomalies the stream caused (the generator aims for none).
    """

    seed: int
    chronicle_id: str
    events: list[EventIn]
    characters: list[str]
    locations: list[str]
    items: list[str]
    factions: list[str]
    kinds: dict[str, str]
    introduced: dict[str, int]
    aliases: dict[str, str]
    alias_declared: dict[str, int]
    gold: FactHistory
    bookkeeping: FactHistory
    anomalies: list[str]
    checkpoints: list[int]
    sizes: dict[str, int]
    queries: list[Query] = dataclasses.field(default_factory=list)
    _canon: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    def event_id(self, index: int) -> str:
        return f"gen-{self.seed}-{index:07d}"

    def index_of(self, external_id: str) -> int:
        """The 0-based index of an event id of this world (its sequence is ``index + 1``)."""
        prefix = f"gen-{self.seed}-"
        if not external_id.startswith(prefix):
            raise KeyError(external_id)
        index = int(external_id[len(prefix) :])
        if not 0 <= index < len(self.events):
            raise KeyError(external_id)
        return index

    def canonical(self, ref: str) -> str | None:
        """The canonical name a name or alias denotes (case- and whitespace-insensitive)."""
        return self._canon.get(normalize_name(ref))

    def aliases_of(self, name: str, after: int | None = None) -> list[str]:
        """Aliases of ``name`` declared by the first ``after`` events (all when ``None``)."""
        return [
            alias
            for alias, owner in self.aliases.items()
            if owner == name and (after is None or self.alias_declared[alias] < after)
        ]

    def chronicle_events(self, start: int = 0, stop: int | None = None) -> Iterator[ChronicleEvent]:
        """Events ``start .. stop-1`` as the reducer reads them (ids = external ids)."""
        for index in range(start, len(self.events) if stop is None else stop):
            yield ChronicleEvent.from_event_in(
                self.events[index],
                event_id=self.event_id(index),
                sequence=index + 1,
                chronicle_id=self.chronicle_id,
            )

    # Convenience lookups into the gold history (``after`` = number of events ingested).

    def location_at(self, name: str, after: int) -> str | None:
        """Own position (characters, lying items); ``None`` when held or never placed."""
        value: str | None = self.gold.value_at(("position", name), after)
        return value

    def holder_at(self, item: str, after: int) -> str | None:
        value: str | None = self.gold.value_at(("holder", item), after)
        return value

    def status_at(self, name: str, after: int) -> str | None:
        value: str | None = self.gold.value_at(("status", name), after)
        return value

    def valence_at(self, a: str, b: str, after: int, dimension: str = "trust") -> float:
        return float(self.gold.value_at(("valence", a, b, dimension), after, 0.0))


# --------------------------------------------------------------------------------------------------
# Generation


def default_sizes(n_events: int) -> dict[str, int]:
    """Entity counts scaled to the stream length."""

    def clamp(x: float, lo: int, hi: int) -> int:
        return max(lo, min(hi, round(x)))

    return {
        "characters": clamp(n_events / 40, 6, 1000),
        "locations": clamp(n_events / 150, 4, 200),
        "items": clamp(n_events / 80, 4, 500),
        "factions": clamp(3 + n_events / 2000, 3, 20),
    }


def generate_world(
    n_events: int,
    seed: int = 0,
    *,
    characters: int | None = None,
    locations: int | None = None,
    items: int | None = None,
    factions: int | None = None,
    queries_per_kind: int = 20,
) -> GeneratedWorld:
    """Generate ``n_events`` events and ``queries_per_kind`` queries of every kind (fewer when the
    stream offers no valid subject). Deterministic in all arguments."""
    sizes = default_sizes(n_events)
    for key, value in (
        ("characters", characters),
        ("locations", locations),
        ("items", items),
        ("factions", factions),
    ):
        if value is not None:
            sizes[key] = value
    if sizes["characters"] < 3 or sizes["locations"] < 2 or sizes["items"] < 1 or sizes["factions"] < 1:
        raise ValueError("need at least 3 characters, 2 locations, 1 item and 1 faction")
    builder = _Builder(n_events, seed, sizes)
    world = builder.run()
    if queries_per_kind > 0:
        world.queries = generate_queries(world, per_kind=queries_per_kind, seed=seed)
    return world


class _Pool:
    """An insertion-ordered set with O(1) add, remove and random choice (deterministic)."""

    __slots__ = ("index", "items")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.index: dict[str, int] = {}

    def add(self, x: str) -> None:
        if x not in self.index:
            self.index[x] = len(self.items)
            self.items.append(x)

    def discard(self, x: str) -> None:
        i = self.index.pop(x, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.index[last] = i

    def choice(self, rng: random.Random) -> str:
        return self.items[rng.randrange(len(self.items))]

    def __contains__(self, x: object) -> bool:
        return x in self.index

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)


@dataclasses.dataclass(slots=True)
class _Draft:
    kind: str
    summary: str
    actors: list[ActorRef]
    location: str | None
    effects: list[Effect]
    tags: list[str]
    importance: float


_ACTIONS: Final = (
    ("move", 28.0),
    ("dialogue", 13.0),
    ("meet", 4.0),
    ("give", 6.0),
    ("pickup", 4.0),
    ("drop", 3.0),
    ("loot", 3.0),
    ("theft", 4.0),
    ("death", 1.3),
    ("carry_body", 0.6),
    ("wound", 3.0),
    ("heal", 2.0),
    ("knockout", 0.6),
    ("relate", 4.0),
    ("unrelate", 2.0),
    ("valence_change", 9.0),
    ("alias", 1.2),
    ("mood", 3.0),
    ("destroy", 0.3),
)
_ACTION_NAMES: Final = tuple(name for name, _ in _ACTIONS)
_ACTION_CUM: Final = tuple(sum(w for _, w in _ACTIONS[: i + 1]) for i in range(len(_ACTIONS)))


class _Builder:
    def __init__(self, n_events: int, seed: int, sizes: dict[str, int]) -> None:
        self.n = n_events
        self.seed = seed
        self.sizes = sizes
        self.rng = random.Random(seed)
        self.chronicle_id = str(uuid.uuid5(GENERATOR_NAMESPACE, f"lorekeeper-generator-{seed}"))
        self.events: list[EventIn] = []
        self.clock = dt.datetime(self.rng.randint(1100, 1700), 3, 1, 8, 0, tzinfo=dt.UTC)
        # Reducer (gold).
        self.state = WorldState(chronicle_id=self.chronicle_id)
        self.gold = FactHistory()
        self.id_names: dict[str, str] = {}
        self.anomalies: list[str] = []
        # Own bookkeeping.
        self.book = FactHistory()
        self.canon: dict[str, str] = {}
        self.kind: dict[str, str] = {}
        self.introduced: dict[str, int] = {}
        self.pos: dict[str, str | None] = {}
        self.holder: dict[str, str | None] = {}
        self.status: dict[str, str] = {}
        self.health: dict[str, dict[str, Any]] = {}
        self.custom: dict[tuple[str, str], Any] = {}
        self.valence: dict[tuple[str, str, str], float] = {}
        self.relations: dict[tuple[str, str, str], Any] = {}
        self.rel_pool: list[tuple[str, str, str]] = []
        self.rel_index: dict[tuple[str, str, str], int] = {}
        self.aliases: dict[str, str] = {}
        self.alias_declared: dict[str, int] = {}
        self.aliases_by: dict[str, list[str]] = {}
        # Decision indexes derived from the bookkeeping.
        self.active = _Pool()  # alive and conscious characters
        self.dead = _Pool()
        self.unconscious = _Pool()
        self.occupants: dict[str, _Pool] = {}  # location -> characters positioned there
        self.inventory: dict[str, _Pool] = {}  # character -> items held
        self.lying = _Pool()  # usable items with a position
        self.usable = _Pool()  # items not destroyed
        self.partners: dict[str, _Pool] = {}
        self.protagonists: list[str] = []
        self.refs: dict[str, str] = {}
        self._names()

    # -- names

    def _names(self) -> None:
        rng, sizes = self.rng, self.sizes
        used: set[str] = set()

        def take(pool: list[str], count: int, fallback: Any) -> list[str]:
            rng.shuffle(pool)
            out: list[str] = []
            for name in pool:
                if len(out) == count:
                    break
                if normalize_name(name) not in used:
                    used.add(normalize_name(name))
                    out.append(name)
            while len(out) < count:
                name = fallback()
                if normalize_name(name) not in used:
                    used.add(normalize_name(name))
                    out.append(name)
            return out

        def syllables() -> str:
            return rng.choice(_CHAR_PREFIX) + rng.choice(_CHAR_MIDDLE) + rng.choice(_CHAR_SUFFIX)

        chars: list[str] = []
        misses = 0
        while len(chars) < sizes["characters"]:
            name = syllables() if misses < 200 else f"{syllables()} {syllables()}"
            key = normalize_name(name)
            if key in used:
                misses += 1
                continue
            used.add(key)
            chars.append(name)
        self.pending_chars = chars[::-1]  # popped from the end: introduced in generation order
        self.gender = {c: rng.choices(("she", "he", "they"), (45, 45, 10))[0] for c in chars}

        self.locations = take(
            [f"the {a} {n}" for a in _LOC_ADJ for n in _LOC_NOUN],
            sizes["locations"],
            lambda: f"the {rng.choice(_LOC_ADJ)} {rng.choice(_LOC_NOUN)} of {syllables()}",
        )
        objects = list(_OBJECTS)
        item_names = take(
            [f"{m} {o}" for m in _MATERIALS for o in objects],
            sizes["items"],
            lambda: f"{rng.choice(_MATERIALS)} {rng.choice(objects)} of {syllables()}",
        )
        self.item_parts = {}
        for item in item_names:
            material, obj = item.split(" ")[:2]
            self.item_parts[item] = (material, obj)
        self.pending_items = item_names[::-1]
        self.factions = take(
            [f.format(w=w) for f in _FACTION_FORMS for w in _FACTION_WORDS]
            + [f.format(e=e) for f in _FACTION_ORDERS for e in _FACTION_EMBLEMS],
            sizes["factions"],
            lambda: f"the House of {syllables()}",
        )
        alias_pool = [f"the {a} {n}" for a in _ALIAS_ADJ for n in _ALIAS_NOUN]
        rng.shuffle(alias_pool)
        self.alias_pool = [a for a in alias_pool if normalize_name(a) not in used]
        self.max_aliases = max(2, sizes["characters"] // 3)
        self.max_dead = max(1, int(sizes["characters"] * 0.3))
        self.max_destroyed = max(1, sizes["items"] // 10)
        self.destroyed = 0
        self.n_protagonists = max(3, sizes["characters"] // 10)

    # -- helpers

    def ref(self, name: str) -> str:
        """How this event refers to a character: its name or, sometimes, a declared alias."""
        found = self.refs.get(name)
        if found is None:
            aliases = self.aliases_by.get(name)
            found = self.rng.choice(aliases) if aliases and self.rng.random() < 0.4 else name
            self.refs[name] = found
        return found

    def pron(self, name: str) -> tuple[str, str, str]:
        return _PRONOUNS[self.gender.get(name, "they")]

    def fields(self, a: str | None = None, b: str | None = None, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if a is not None:
            out["a"] = self.ref(a)
            out["sa"], out["oa"], out["pa"] = self.pron(a)
        if b is not None:
            out["b"] = self.ref(b)
            out["sb"], out["ob"], out["pb"] = self.pron(b)
        out.update(extra)
        return out

    def say(self, templates: tuple[str, ...], fields: dict[str, Any]) -> str:
        rng = self.rng
        template = rng.choice(templates)
        text = template.format(**fields)
        if template.startswith("{") and rng.random() < 0.2:
            text = f"{rng.choice(_OPENERS)} {text}"
        text = text[:1].upper() + text[1:]
        if rng.random() < 0.12:
            text += " " + rng.choice(_TAILS).format(f=rng.choice(self.factions))
        return text

    def item_text(self, item: str, owner: str | None = None) -> str:
        rng = self.rng
        material, obj = self.item_parts[item]
        r = rng.random()
        if r < 0.5:
            return f"the {item}"
        if r < 0.7:
            return f"the {obj}"
        if r < 0.88 or owner is None:
            return f"the {material} {rng.choice(_OBJECTS[obj])}"
        return f"{self.ref(owner)}'s {obj}"

    def importance(self, lo: float, hi: float) -> float:
        return round(self.rng.uniform(lo, hi), 2)

    def pick_active(self) -> str | None:
        if not self.active:
            return None
        rng = self.rng
        if self.protagonists and rng.random() < 0.35:
            for _ in range(3):
                c = rng.choice(self.protagonists)
                if c in self.active:
                    return c
        return self.active.choice(rng)

    def colocated(self, who: str) -> list[str]:
        here = self.pos.get(who)
        if here is None:
            return []
        return [c for c in self.occupants[here] if c != who and c in self.active]

    def other_location(self, here: str | None) -> str:
        while True:
            loc = self.rng.choice(self.locations)
            if loc != here:
                return loc

    def held_items(self, who: str) -> list[str]:
        pool = self.inventory.get(who)
        return [] if pool is None else [i for i in pool if i in self.usable]

    # -- the run

    def run(self) -> GeneratedWorld:
        spawns = [("location", loc) for loc in self.locations] + [("faction", f) for f in self.factions]
        setting_events = -(-len(spawns) // SPAWNS_PER_EVENT)
        warmup = min(len(self.pending_chars), self.n_protagonists)
        if self.n < setting_events + min(3, warmup) + 1:
            raise ValueError(f"n_events={self.n} is too small for this many locations and factions")
        for start in range(0, len(spawns), SPAWNS_PER_EVENT):
            self.emit(self.setting(spawns[start : start + SPAWNS_PER_EVENT]))
        for _ in range(warmup):
            if len(self.events) >= self.n - 1:
                break
            self.emit(self.intro_character())
        self.warm_end = len(self.events)
        self.deadline = max(len(self.events) + 1, int(self.n * INTRO_DEADLINE))
        while len(self.events) < self.n:
            self.emit(self.step())
        return self.world()

    def step(self) -> _Draft:
        rng, i = self.rng, len(self.events)
        window = max(1, self.deadline - i)
        if self.pending_chars and (i >= self.deadline or rng.random() < len(self.pending_chars) / window):
            return self.intro_character()
        if self.pending_items and (i >= self.deadline or rng.random() < len(self.pending_items) / window):
            draft = self.discover_item()
            if draft is not None:
                return draft
        if self.unconscious and rng.random() < 0.15:
            return self.recover() or self.interlude()
        action = _ACTION_NAMES[bisect.bisect_right(_ACTION_CUM, rng.random() * _ACTION_CUM[-1])]
        draft = getattr(self, action)()
        if draft is None:
            draft = self.move()
        if draft is None and self.unconscious:
            draft = self.recover()
        if draft is None and self.pending_chars:
            draft = self.intro_character()
        return draft or self.interlude()

    def emit(self, draft: _Draft) -> None:
        i = len(self.events)
        external_id = f"gen-{self.seed}-{i:07d}"
        self.clock += dt.timedelta(minutes=self.rng.randint(10, 600))
        event = EventIn(
            summary=draft.summary,
            external_id=external_id,
            kind=draft.kind,
            actors=list(draft.actors),
            location=draft.location,
            effects=draft.effects,
            occurred_at=self.clock,
            tags=draft.tags,
            importance=draft.importance,
        )
        self.events.append(event)
        chronicle_event = ChronicleEvent.from_event_in(
            event, event_id=external_id, sequence=i + 1, chronicle_id=self.chronicle_id
        )
        self.record_gold(i, apply_event(self.state, chronicle_event))
        self.shadow(i, draft)
        self.refs = {}

    def world(self) -> GeneratedWorld:
        n = len(self.events)
        # Ask nothing before the warm-up (setting + first introductions) is over.
        checkpoints = sorted({min(n, max(self.warm_end + 5, round(n * k / 8))) for k in range(1, 9)})
        by_intro = sorted(self.introduced, key=lambda name: self.introduced[name])
        return GeneratedWorld(
            seed=self.seed,
            chronicle_id=self.chronicle_id,
            events=self.events,
            characters=[x for x in by_intro if self.kind[x] == "character"],
            locations=list(self.locations),
            items=[x for x in by_intro if self.kind[x] == "item"],
            factions=list(self.factions),
            kinds=dict(self.kind),
            introduced=dict(self.introduced),
            aliases=dict(self.aliases),
            alias_declared=dict(self.alias_declared),
            gold=self.gold,
            bookkeeping=self.book,
            anomalies=self.anomalies,
            checkpoints=checkpoints,
            sizes=dict(self.sizes),
            _canon=dict(self.canon),
        )

    # -- gold: the reducer's changes, per fact

    def record_gold(self, i: int, event_changes: EventChanges) -> None:
        names, gold = self.id_names, self.gold
        for ch in event_changes.changes:
            if isinstance(ch, EntityCreated):
                names[ch.entity_id] = ch.name
            elif isinstance(ch, ComponentSet):
                if ch.component not in TRACKED_COMPONENTS:
                    continue
                value = ch.value
                if ch.component == "position":
                    value = names[value["location"]]
                elif ch.component == "holder":
                    value = names[value["holder"]]
                elif ch.component == "status":
                    value = value["value"]
                gold.record(i, (ch.component, names[ch.entity_id]), value)
            elif isinstance(ch, ComponentRemoved):
                if ch.component in TRACKED_COMPONENTS:
                    gold.record(i, (ch.component, names[ch.entity_id]), None)
            elif isinstance(ch, AliasAdded):
                gold.record(i, ("alias", names[ch.entity_id]), ch.alias)
            elif isinstance(ch, RelationshipSet | RelationshipRemoved):
                key = ("relation", names[ch.from_id], names[ch.to_id], ch.type)
                gold.record(i, key, isinstance(ch, RelationshipSet))
            elif isinstance(ch, ValenceChanged):
                gold.record(i, ("valence", names[ch.from_id], names[ch.to_id], ch.dimension), ch.value)
            elif isinstance(ch, Anomaly):
                self.anomalies.append(f"{ch.event_id}: {ch.code}: {ch.message}")

    # -- own bookkeeping: a minimal interpreter of the effects this generator emits

    def canonical(self, ref: str) -> str:
        return self.canon[normalize_name(ref)]

    def register(self, name: str, kind: str, i: int) -> None:
        self.canon[normalize_name(name)] = name
        self.kind[name] = kind
        self.introduced[name] = i
        if kind == "character":
            self.inventory[name] = _Pool()
            self.partners[name] = _Pool()
            if len(self.protagonists) < self.n_protagonists:
                self.protagonists.append(name)
        elif kind == "item":
            self.usable.add(name)

    def shadow(self, i: int, draft: _Draft) -> None:
        actors: list[str] = []
        for actor_ref in draft.actors:
            key = normalize_name(actor_ref.name)
            if key not in self.canon:
                self.register(" ".join(actor_ref.name.split()), "character", i)
            name = self.canon[key]
            if name not in actors:
                actors.append(name)
        location = None if draft.location is None else self.canonical(draft.location)
        dead_before = {a for a in actors if self.status.get(a) in DEAD}
        placed: set[str] = set()
        for effect in draft.effects:
            match effect:
                case SpawnEffect(entity=ref, kind=kind, components=components):
                    assert normalize_name(ref) not in self.canon, f"spawn of existing {ref!r}"
                    self.register(ref, kind, i)
                    for component, value in components.items():
                        if component in ("position", "holder"):
                            placed.add(ref)
                        self.set_component(i, ref, component, value)
                case MoveEffect(entity=ref, to=to):
                    entity = self.canonical(ref)
                    placed.add(entity)
                    self.set_position(i, entity, self.canonical(to))
                case TransferEffect(item=ref, to=to):
                    item = self.canonical(ref)
                    placed.add(item)
                    self.set_holder(i, item, self.canonical(to))
                case SetEffect(entity=ref, component=component, value=value):
                    assert component not in ("position", "holder")
                    self.set_component(i, self.canonical(ref), component, value)
                case StatusEffect(entity=ref, status=status):
                    self.set_status(i, self.canonical(ref), status)
                case DestroyEffect(entity=ref):
                    thing = self.canonical(ref)
                    self.set_status(i, thing, "destroyed")
                    holder = self.holder.get(thing)
                    if holder is not None:  # no longer carried: it lies where its holder was
                        place = self.place_of(holder)
                        if place is not None:
                            self.set_position(i, thing, place)
                        else:
                            self.holder[thing] = None
                            self.inventory[holder].discard(thing)
                            self.book.record(i, ("holder", thing), None)
                case AliasEffect(entity=ref, alias=alias):
                    owner = self.canonical(ref)
                    assert normalize_name(alias) not in self.canon, f"alias {alias!r} is taken"
                    self.canon[normalize_name(alias)] = owner
                    self.aliases[alias] = owner
                    self.alias_declared[alias] = i
                    self.aliases_by.setdefault(owner, []).append(alias)
                    self.book.record(i, ("alias", owner), alias)
                case RelateEffect(from_=a, to=b, type=rtype, data=data):
                    key3 = (self.canonical(a), self.canonical(b), rtype)
                    if key3 not in self.relations or self.relations[key3] != data:
                        if key3 not in self.relations:
                            self.rel_index[key3] = len(self.rel_pool)
                            self.rel_pool.append(key3)
                        self.relations[key3] = data
                        self.book.record(i, ("relation", *key3), True)
                case UnrelateEffect(from_=a, to=b, type=rtype):
                    key3 = (self.canonical(a), self.canonical(b), rtype)
                    assert key3 in self.relations, f"unrelate of missing {key3}"
                    del self.relations[key3]
                    k = self.rel_index.pop(key3)
                    last = self.rel_pool.pop()
                    if k < len(self.rel_pool):
                        self.rel_pool[k] = last
                        self.rel_index[last] = k
                    self.book.record(i, ("relation", *key3), False)
                case ValenceEffect(from_=a, to=b, dimension=dim, delta=delta, value=value):
                    key3 = (self.canonical(a), self.canonical(b), dim)
                    previous = self.valence.get(key3, 0.0)
                    raw = value if value is not None else round(previous + (delta or 0.0), VALENCE_DIGITS)
                    new = min(1.0, max(-1.0, raw)) + 0.0
                    self.valence[key3] = new
                    self.book.record(i, ("valence", *key3), new)
                    self.partners[key3[0]].add(key3[1])
                case _:
                    raise AssertionError(f"the generator does not emit {effect!r}")
        if location is None:
            return
        for actor in actors:
            if (
                actor == location
                or actor in placed
                or (actor in dead_before and self.status.get(actor) in DEAD)
                or self.holder.get(actor) is not None
            ):
                continue
            self.set_position(i, actor, location)

    def set_component(self, i: int, entity: str, component: str, value: Any) -> None:
        if component == "position":
            self.set_position(i, entity, self.canonical(value))
        elif component == "holder":
            self.set_holder(i, entity, self.canonical(value))
        elif component == "status":
            self.set_status(i, entity, value)
        elif component == "health":
            patch = value if isinstance(value, dict) else {"hp": value}
            patch = {
                k: (float(v) if k in ("hp", "max_hp") and v is not None else v) for k, v in patch.items()
            }
            merged = {**self.health.get(entity, EMPTY_HEALTH), **patch}
            if merged != self.health.get(entity):
                self.health[entity] = merged
                self.book.record(i, ("health", entity), merged)
        elif component in TRACKED_COMPONENTS and self.custom.get((entity, component), _MISSING) != value:
            self.custom[(entity, component)] = value
            self.book.record(i, (component, entity), value)

    def place_of(self, entity: str) -> str | None:
        """Where an entity is: its own position, or its holder's (the chain followed)."""
        seen: set[str] = set()
        current: str | None = entity
        while current is not None and current not in seen:
            seen.add(current)
            if self.pos.get(current) is not None:
                return self.pos[current]
            current = self.holder.get(current)
        return None

    def set_position(self, i: int, entity: str, location: str) -> None:
        if self.pos.get(entity) == location:
            return
        old = self.pos.get(entity)
        self.pos[entity] = location
        self.book.record(i, ("position", entity), location)
        if self.kind[entity] == "character":
            if old is not None:
                self.occupants[old].discard(entity)
            self.occupants.setdefault(location, _Pool()).add(entity)
        else:
            if entity in self.usable:
                self.lying.add(entity)
            holder = self.holder.get(entity)
            if holder is not None:
                self.holder[entity] = None
                self.inventory[holder].discard(entity)
                self.book.record(i, ("holder", entity), None)

    def set_holder(self, i: int, item: str, holder: str) -> None:
        old = self.holder.get(item)
        if old == holder:
            return
        self.holder[item] = holder
        self.book.record(i, ("holder", item), holder)
        if old is not None:
            self.inventory[old].discard(item)
        self.inventory[holder].add(item)
        if self.pos.get(item) is not None:
            self.pos[item] = None
            self.lying.discard(item)
            self.book.record(i, ("position", item), None)

    def set_status(self, i: int, entity: str, status: str) -> None:
        if self.status.get(entity) == status:
            return
        self.status[entity] = status
        self.book.record(i, ("status", entity), status)
        if self.kind[entity] == "character":
            for pool in (self.active, self.dead, self.unconscious):
                pool.discard(entity)
            if status in DEAD:
                self.dead.add(entity)
            elif status == "unconscious":
                self.unconscious.add(entity)
            else:
                self.active.add(entity)
        elif status in DEAD:
            self.usable.discard(entity)
            self.lying.discard(entity)

    # -- actions: each returns a draft, or None when its preconditions do not hold

    def setting(self, spawns: list[tuple[str, str]]) -> _Draft:
        effects: list[Effect] = []
        for kind, name in spawns:
            description = (
                self.rng.choice(_LOC_DESCRIPTIONS) if kind == "location" else "a faction of the city"
            )
            effects.append(SpawnEffect(entity=name, kind=kind, components={"description": description}))
        places = ", ".join(name for kind, name in spawns[:4])
        more = f" and {len(spawns) - 4} more" if len(spawns) > 4 else ""
        summary = f"The chronicle opens on a city of many places and powers: {places}{more}."
        return _Draft("setting", summary, [], None, effects, ["setting"], 0.3)

    def intro_character(self) -> _Draft:
        rng = self.rng
        name = self.pending_chars.pop()
        greeter = self.pick_active() if self.active and rng.random() < 0.3 else None
        loc = self.pos[greeter] if greeter is not None else rng.choice(self.locations)
        assert loc is not None
        hp = float(rng.randint(12, 30))
        effects: list[Effect] = [
            SetEffect(entity=name, component="status", value="alive"),
            SetEffect(entity=name, component="health", value={"hp": hp, "max_hp": hp}),
        ]
        if rng.random() < 0.5:
            effects.append(SetEffect(entity=name, component="traits", value=[rng.choice(_TRAITS)]))
        fields = {"a": name, "loc": loc, "trade": rng.choice(_TRADES)}
        fields["sa"], fields["oa"], fields["pa"] = self.pron(name)
        summary = self.say(T_INTRO, fields)
        if self.pending_items and rng.random() < 0.5:
            item = self.pending_items.pop()
            effects.append(SpawnEffect(entity=item, kind="item", components={"holder": name}))
            summary += f" {fields['pa'].capitalize()} pack held the {item}."
        actors = [ActorRef(name=name, role="agent")]
        if greeter is not None:
            actors.append(ActorRef(name=self.ref(greeter), role="witness"))
            summary += f" {self.ref(greeter)} greeted {fields['oa']}."
        return _Draft(
            "introduction", summary, actors, loc, effects, ["introduction"], self.importance(0.4, 0.7)
        )

    def discover_item(self) -> _Draft | None:
        a = self.pick_active()
        if a is None:
            return None
        item = self.pending_items.pop()
        loc = self.pos[a]
        assert loc is not None
        take = self.rng.random() < 0.4
        components: dict[str, Any] = {"holder": self.ref(a)} if take else {"position": loc}
        fields = self.fields(a, loc=loc, item=f"the {item}")
        summary = self.say(T_DISCOVER_TAKE if take else T_DISCOVER, fields)
        effects: list[Effect] = [SpawnEffect(entity=item, kind="item", components=components)]
        actors = [ActorRef(name=self.ref(a), role="agent")]
        return _Draft(
            "discovery", summary, actors, loc, effects, ["discovery", "item"], self.importance(0.3, 0.6)
        )

    def move(self) -> _Draft | None:
        a = self.pick_active()
        if a is None:
            return None
        here = self.pos[a]
        dest = self.other_location(here)
        companion = None
        if self.rng.random() < 0.2:
            near = self.colocated(a)
            companion = self.rng.choice(near) if near else None
        fields = self.fields(a, companion, loc=dest, origin=here)
        actors = [ActorRef(name=self.ref(a), role="agent")]
        if companion is None:
            summary = self.say(T_MOVE, fields)
        else:
            summary = self.say(T_MOVE_WITH, fields)
            actors.append(ActorRef(name=self.ref(companion), role="companion"))
        effects: list[Effect] = [MoveEffect(entity=self.ref(a), to=dest)]
        return _Draft("travel", summary, actors, dest, effects, ["travel"], self.importance(0.15, 0.4))

    def meet(self) -> _Draft | None:
        a = self.pick_active()
        if a is None or len(self.active) < 2:
            return None
        for _ in range(5):
            b = self.active.choice(self.rng)
            if b != a and self.pos[b] != self.pos[a]:
                break
        else:
            return None
        loc = self.pos[b]
        fields = self.fields(a, b, loc=loc)
        actors = [ActorRef(name=self.ref(a), role="visitor"), ActorRef(name=self.ref(b), role="host")]
        return _Draft(
            "meeting", self.say(T_MEET, fields), actors, loc, [], ["meeting"], self.importance(0.2, 0.5)
        )

    def topic(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            return rng.choice(_TOPICS)
        if r < 0.65:
            return rng.choice(self.factions)
        if r < 0.8 and self.usable:
            return self.item_text(self.usable.choice(rng))
        pool = self.dead if self.dead and rng.random() < 0.3 else self.active
        if pool:
            return f"rumours about {self.ref(pool.choice(rng))}"
        return rng.choice(_TOPICS)

    def dialogue(self) -> _Draft | None:
        a = self.pick_active()
        if a is None:
            return None
        near = self.colocated(a)
        if not near:
            return self.meet()
        b = self.rng.choice(near)
        loc = self.pos[a]
        # The topic may name a third character who is not there: a distractor for who_was_at.
        fields = self.fields(a, b, loc=loc, topic=self.topic())
        summary = self.say(T_DIALOGUE, fields)
        actors = [ActorRef(name=self.ref(a), role="speaker"), ActorRef(name=self.ref(b), role="listener")]
        rest = [c for c in near if c != b]
        if rest and self.rng.random() < 0.25:
            c = self.rng.choice(rest)
            actors.append(ActorRef(name=self.ref(c), role="listener"))
            summary += f" {self.ref(c)} listened in."
        return _Draft("dialogue", summary, actors, loc, [], ["dialogue"], self.importance(0.1, 0.4))

    def holder_with_items(self, pool: _Pool, tries: int = 6) -> tuple[str, list[str]] | None:
        if not pool:
            return None
        for _ in range(tries):
            who = pool.choice(self.rng)
            held = self.held_items(who)
            if held:
                return who, held
        return None

    def give(self) -> _Draft | None:
        found = self.holder_with_items(self.active)
        if found is None:
            return None
        a, held = found
        near = self.colocated(a)
        if not near:
            return None
        b = self.rng.choice(near)
        item = self.rng.choice(held)
        fields = self.fields(a, b, item=self.item_text(item, a))
        effects: list[Effect] = [TransferEffect(item=item, to=self.ref(b), from_=self.ref(a))]
        actors = [ActorRef(name=self.ref(a), role="giver"), ActorRef(name=self.ref(b), role="recipient")]
        loc = self.pos[a]
        return _Draft(
            "trade",
            self.say(T_GIVE, fields),
            actors,
            loc,
            effects,
            ["trade", "item"],
            self.importance(0.3, 0.6),
        )

    def pickup(self) -> _Draft | None:
        if not self.lying:
            return None
        item = self.lying.choice(self.rng)
        loc = self.pos[item]
        assert loc is not None
        there = [c for c in self.occupants.get(loc, ()) if c in self.active]
        effects: list[Effect]
        templates: tuple[str, ...]
        if there:
            a = self.rng.choice(there)
            templates = T_PICKUP
            effects = [TransferEffect(item=item, to=self.ref(a))]
        else:
            found = self.pick_active()
            if found is None:
                return None
            a = found
            templates = T_PICKUP_TRAVEL
            effects = [MoveEffect(entity=self.ref(a), to=loc), TransferEffect(item=item, to=self.ref(a))]
        fields = self.fields(a, loc=loc, item=self.item_text(item))
        actors = [ActorRef(name=self.ref(a), role="agent")]
        return _Draft(
            "pickup", self.say(templates, fields), actors, loc, effects, ["item"], self.importance(0.2, 0.5)
        )

    def drop(self) -> _Draft | None:
        found = self.holder_with_items(self.active)
        if found is None:
            return None
        a, held = found
        item = self.rng.choice(held)
        loc = self.pos[a]
        fields = self.fields(a, loc=loc, item=self.item_text(item, a))
        assert loc is not None
        effects: list[Effect] = [MoveEffect(entity=item, to=loc)]
        actors = [ActorRef(name=self.ref(a), role="agent")]
        return _Draft(
            "drop", self.say(T_DROP, fields), actors, loc, effects, ["item"], self.importance(0.2, 0.5)
        )

    def loot(self) -> _Draft | None:
        found = self.holder_with_items(self.dead)
        if found is None:
            return None
        corpse, held = found
        loc = self.pos[corpse]
        there = [c for c in self.occupants.get(loc, ()) if c in self.active] if loc else []
        looter = self.rng.choice(there) if there else self.pick_active()
        if looter is None:
            return None
        taken = self.rng.sample(held, min(len(held), self.rng.choice((1, 1, 2))))
        fields = self.fields(looter, corpse, loc=loc, item=self.item_text(taken[0], corpse))
        summary = self.say(T_LOOT, fields)
        if len(taken) > 1:
            summary += f" {fields['sa'].capitalize()} also took {self.item_text(taken[1])}."
        effects: list[Effect] = [
            TransferEffect(item=item, to=self.ref(looter), from_=self.ref(corpse)) for item in taken
        ]
        actors = [
            ActorRef(name=self.ref(looter), role="agent"),
            ActorRef(name=self.ref(corpse), role="patient"),
        ]
        return _Draft("loot", summary, actors, loc, effects, ["loot", "item"], self.importance(0.5, 0.8))

    def theft(self) -> _Draft | None:
        found = self.holder_with_items(self.active)
        if found is None:
            return None
        victim, held = found
        near = self.colocated(victim)
        if near and self.rng.random() < 0.7:
            thief = self.rng.choice(near)
        else:
            thief = self.active.choice(self.rng)
            if thief == victim:
                return None
        item = self.rng.choice(held)
        noticed = self.rng.random() < 0.4
        fields = self.fields(thief, victim, item=self.item_text(item, victim))
        effects: list[Effect] = [TransferEffect(item=item, to=self.ref(thief), from_=self.ref(victim))]
        if noticed:
            delta = -round(self.rng.uniform(0.2, 0.5), 2)
            effects.append(
                ValenceEffect(from_=self.ref(victim), to=self.ref(thief), dimension="trust", delta=delta)
            )
        summary = self.say(T_THEFT_NOTICED if noticed else T_THEFT, fields)
        actors = [
            ActorRef(name=self.ref(thief), role="agent"),
            ActorRef(name=self.ref(victim), role="patient"),
        ]
        loc = self.pos[victim]
        return _Draft(
            "theft", summary, actors, loc, effects, ["theft", "crime", "item"], self.importance(0.5, 0.8)
        )

    def death(self) -> _Draft | None:
        if len(self.dead) >= self.max_dead or len(self.active) <= 3:
            return None
        victim = self.active.choice(self.rng)
        loc = self.pos[victim]
        killer = None
        if self.rng.random() < 0.6:
            near = self.colocated(victim)
            killer = self.rng.choice(near) if near else None
        fields = self.fields(victim, killer, loc=loc)
        actors = [ActorRef(name=self.ref(victim), role="patient")]
        if killer is not None:
            actors.append(ActorRef(name=self.ref(killer), role="agent"))
        summary = self.say(T_KILL if killer else T_DIE, fields)
        effects: list[Effect] = [
            StatusEffect(entity=self.ref(victim), status="dead"),
            SetEffect(entity=self.ref(victim), component="health", value={"hp": 0.0, "condition": "dead"}),
        ]
        return _Draft(
            "death", summary, actors, loc, effects, ["death", "violence"], self.importance(0.8, 1.0)
        )

    def carry_body(self) -> _Draft | None:
        if not self.dead:
            return None
        corpse = self.dead.choice(self.rng)
        here = self.pos[corpse]
        carriers = [c for c in self.occupants.get(here, ()) if c in self.active] if here else []
        if not carriers:
            return None
        carrier = self.rng.choice(carriers)
        dest = self.other_location(here)
        fields = self.fields(carrier, corpse, loc=dest, origin=here)
        effects: list[Effect] = [MoveEffect(entity=self.ref(corpse), to=dest)]
        actors = [
            ActorRef(name=self.ref(carrier), role="agent"),
            ActorRef(name=self.ref(corpse), role="patient"),
        ]
        return _Draft("burial", self.say(T_CARRY, fields), actors, dest, effects, ["death", "travel"], 0.6)

    def wound(self) -> _Draft | None:
        a = self.pick_active()
        if a is None:
            return None
        hp = self.health.get(a, EMPTY_HEALTH)["hp"] or 10.0
        new = max(1.0, hp - self.rng.randint(2, 8))
        near = self.colocated(a)
        attacker = self.rng.choice(near) if near and self.rng.random() < 0.4 else None
        fields = self.fields(a, attacker)
        actors = [ActorRef(name=self.ref(a), role="patient")]
        if attacker is not None:
            actors.append(ActorRef(name=self.ref(attacker), role="agent"))
        value: Any = {"hp": new, "condition": "wounded"} if self.rng.random() < 0.8 else new
        effects: list[Effect] = [SetEffect(entity=self.ref(a), component="health", value=value)]
        summary = self.say(T_WOUND_BY if attacker else T_WOUND, fields)
        loc = self.pos[a]
        return _Draft(
            "injury", summary, actors, loc, effects, ["health", "violence"], self.importance(0.3, 0.6)
        )

    def heal(self) -> _Draft | None:
        for _ in range(4):
            a = self.pick_active()
            if a is None:
                return None
            health = self.health.get(a, EMPTY_HEALTH)
            if health["hp"] is not None and health["max_hp"] is not None and health["hp"] < health["max_hp"]:
                break
        else:
            return None
        value: Any = {"hp": health["max_hp"], "condition": "healthy"}
        if self.rng.random() < 0.3:
            value = min(health["max_hp"], health["hp"] + self.rng.randint(1, 6))
        effects: list[Effect] = [SetEffect(entity=self.ref(a), component="health", value=value)]
        actors = [ActorRef(name=self.ref(a), role="patient")]
        location = self.pos[a] if self.rng.random() < 0.5 else None
        return _Draft(
            "recovery", self.say(T_HEAL, self.fields(a)), actors, location, effects, ["health"], 0.3
        )

    def knockout(self) -> _Draft | None:
        if len(self.active) <= 3 or len(self.unconscious) >= 2:
            return None
        a = self.active.choice(self.rng)
        effects: list[Effect] = [StatusEffect(entity=self.ref(a), status="unconscious")]
        actors = [ActorRef(name=self.ref(a), role="patient")]
        summary = self.say(T_KNOCKOUT, self.fields(a))
        return _Draft("injury", summary, actors, self.pos[a], effects, ["health"], self.importance(0.4, 0.6))

    def recover(self) -> _Draft | None:
        if not self.unconscious:
            return None
        a = self.unconscious.choice(self.rng)
        effects: list[Effect] = [StatusEffect(entity=self.ref(a), status="alive")]
        actors = [ActorRef(name=self.ref(a), role="patient")]
        return _Draft(
            "recovery", self.say(T_RECOVER, self.fields(a)), actors, self.pos[a], effects, ["health"], 0.4
        )

    def counterpart(self, a: str) -> str | None:
        """Someone ``a`` has feelings about: a known partner, someone nearby, or anyone alive."""
        rng = self.rng
        partners = self.partners[a]
        if partners and rng.random() < 0.5:
            b = partners.choice(rng)
            if b in self.active:
                return b
        near = self.colocated(a)
        if near and rng.random() < 0.7:
            return rng.choice(near)
        for _ in range(4):
            b = self.active.choice(rng)
            if b != a:
                return b
        return None

    def relate(self) -> _Draft | None:
        rng = self.rng
        a = self.pick_active()
        if a is None:
            return None
        rtype = rng.choice(RELATION_TYPES)
        effects: list[Effect]
        if rtype == "sworn" or (rtype == "employer" and rng.random() < 0.4):
            f = rng.choice(self.factions)
            if rtype == "sworn":
                key, templates = (a, f, rtype), T_RELATE["sworn"]
            else:
                key, templates = (f, a, rtype), T_RELATE["employer_f"]
            if key in self.relations:
                return None
            if rtype == "sworn":
                fields = self.fields(a, f=f)
                effects = [RelateEffect(from_=self.ref(a), to=f, type=rtype)]
            else:
                fields = self.fields(None, a, f=f)
                effects = [RelateEffect(from_=f, to=self.ref(a), type=rtype)]
            if rtype == "sworn" and rng.random() < 0.6:
                oath = {"to": f, "vow": rng.choice(_VOWS)}
                effects.append(SetEffect(entity=self.ref(a), component="oath", value=oath))
            actors = [ActorRef(name=self.ref(a), role="agent")]
            location = self.pos[a] if rng.random() < 0.5 else None
            return _Draft(
                "relationship",
                self.say(templates, fields),
                actors,
                location,
                effects,
                ["relationship", "faction"],
                self.importance(0.4, 0.7),
            )
        b = self.counterpart(a)
        if b is None or (a, b, rtype) in self.relations:
            return None
        both = rtype == "ally" and (b, a, rtype) not in self.relations and rng.random() < 0.5
        fields = self.fields(a, b)
        data = {"since": self.clock.date().isoformat()} if rng.random() < 0.3 else None
        effects = [RelateEffect(from_=self.ref(a), to=self.ref(b), type=rtype, data=data)]
        if both:
            effects.append(RelateEffect(from_=self.ref(b), to=self.ref(a), type=rtype, data=data))
        summary = self.say(T_RELATE["ally2" if both else rtype], fields)
        together = self.pos[a] == self.pos[b]
        actors = [ActorRef(name=self.ref(a), role="agent"), ActorRef(name=self.ref(b), role="patient")]
        return _Draft(
            "relationship",
            summary,
            actors,
            self.pos[a] if together else None,
            effects,
            ["relationship"],
            self.importance(0.4, 0.7),
        )

    def unrelate(self) -> _Draft | None:
        rng = self.rng
        if not self.rel_pool:
            return None
        for _ in range(5):
            a, b, rtype = self.rel_pool[rng.randrange(len(self.rel_pool))]
            # The one who ends it must be able to act.
            actor = b if self.kind[a] == "faction" else a
            if actor in self.active:
                break
        else:
            return None
        effects: list[Effect] = []
        if self.kind[b] == "faction":  # sworn a -> faction
            fields = self.fields(a, f=b)
            templates = T_UNRELATE["sworn"]
            effects.append(UnrelateEffect(from_=self.ref(a), to=b, type=rtype))
            actors = [ActorRef(name=self.ref(a), role="agent")]
        elif self.kind[a] == "faction":  # faction employs b
            fields = self.fields(None, b, f=a)
            templates = T_UNRELATE["employer_f"]
            effects.append(UnrelateEffect(from_=a, to=self.ref(b), type=rtype))
            actors = [ActorRef(name=self.ref(b), role="agent")]
        else:
            fields = self.fields(a, b)
            templates = T_UNRELATE[rtype]
            effects.append(UnrelateEffect(from_=self.ref(a), to=self.ref(b), type=rtype))
            if rtype == "ally" and (b, a, rtype) in self.relations:
                effects.append(UnrelateEffect(from_=self.ref(b), to=self.ref(a), type=rtype))
            actors = [ActorRef(name=self.ref(a), role="agent"), ActorRef(name=self.ref(b), role="patient")]
        summary = self.say(templates, fields)
        return _Draft(
            "relationship", summary, actors, None, effects, ["relationship"], self.importance(0.3, 0.6)
        )

    def valence_change(self) -> _Draft | None:
        rng = self.rng
        a = self.pick_active()
        if a is None:
            return None
        b = self.counterpart(a)
        if b is None:
            return None
        dim = "trust" if rng.random() < 0.6 else rng.choice(DIMENSIONS[1:])
        fields = self.fields(a, b)
        if dim == "trust" and rng.random() < 0.15:
            value = rng.choice((-1.0, -0.8, -0.6, 0.0, 0.6, 0.8, 1.0))
            band = "high" if value > 0 else "low" if value < 0 else "zero"
            effect = ValenceEffect(from_=self.ref(a), to=self.ref(b), dimension=dim, value=value)
            summary = self.say(T_VALENCE_ABS[band], fields)
        else:
            delta = round(rng.uniform(0.05, 0.45), 2) * rng.choice((1, -1))
            effect = ValenceEffect(from_=self.ref(a), to=self.ref(b), dimension=dim, delta=delta)
            summary = self.say(T_VALENCE[dim][0 if delta > 0 else 1], fields)
        together = self.pos[a] == self.pos[b]
        actors = [ActorRef(name=self.ref(a), role="agent"), ActorRef(name=self.ref(b), role="patient")]
        return _Draft(
            "feeling",
            summary,
            actors,
            self.pos[a] if together else None,
            [effect],
            ["feeling", dim],
            self.importance(0.2, 0.6),
        )

    def alias(self) -> _Draft | None:
        if len(self.aliases) >= self.max_aliases or not self.alias_pool:
            return None
        for _ in range(4):
            a = self.pick_active()
            if a is not None and len(self.aliases_by.get(a, ())) < 2:
                break
        else:
            return None
        alias = self.alias_pool.pop()
        loc = self.pos[a]
        fields = self.fields(a, loc=loc, alias=alias)
        fields["a"] = a  # the declaration names the character plainly
        effects: list[Effect] = [AliasEffect(entity=a, alias=alias)]
        actors = [ActorRef(name=a, role="agent")]
        return _Draft(
            "identity",
            self.say(T_ALIAS, fields),
            actors,
            loc,
            effects,
            ["identity", "alias"],
            self.importance(0.5, 0.8),
        )

    def mood(self) -> _Draft | None:
        a = self.pick_active()
        if a is None:
            return None
        current = self.custom.get((a, "mood"))
        mood = self.rng.choice([m for m in _MOODS if m != current])
        effects: list[Effect] = [SetEffect(entity=self.ref(a), component="mood", value=mood)]
        actors = [ActorRef(name=self.ref(a), role="agent")]
        location = self.pos[a] if self.rng.random() < 0.5 else None
        return _Draft(
            "mood", self.say(T_MOOD, self.fields(a, mood=mood)), actors, location, effects, ["mood"], 0.2
        )

    def destroy(self) -> _Draft | None:
        if self.destroyed >= self.max_destroyed:
            return None
        found = self.holder_with_items(self.active)
        if found is None:
            return None
        a, held = found
        item = self.rng.choice(held)
        self.destroyed += 1
        fields = self.fields(a, item=self.item_text(item, a))
        effects: list[Effect] = [DestroyEffect(entity=item)]
        actors = [ActorRef(name=self.ref(a), role="agent")]
        return _Draft("destruction", self.say(T_DESTROY, fields), actors, self.pos[a], effects, ["item"], 0.6)

    def interlude(self) -> _Draft:
        loc = self.rng.choice(self.locations)
        return _Draft("interlude", self.say(T_INTERLUDE, {"loc": loc}), [], loc, [], ["interlude"], 0.05)


# --------------------------------------------------------------------------------------------------
# Queries


def generate_queries(world: GeneratedWorld, per_kind: int = 20, seed: int = 0) -> list[Query]:
    """Up to ``per_kind`` queries of every kind in :data:`QUERY_KINDS`, spread over the
    checkpoints, sorted by ``(asked_after, id)``. Deterministic in ``(world, per_kind, seed)``."""
    return _QueryMaker(world, seed).make(per_kind)


queries = generate_queries


class _QueryMaker:
    def __init__(self, world: GeneratedWorld, seed: int) -> None:
        self.w = world
        self.rng = random.Random(f"lorekeeper-queries:{world.seed}:{seed}")
        intro = world.introduced
        self.aliased = set(world.aliases.values())
        self.char_intro = [intro[c] for c in world.characters]
        self.item_intro = [intro[x] for x in world.items]
        self.meetings: list[int] = []  # events with a location and >= 2 character actors
        self.meetings_aliased: list[int] = []
        for index, event in enumerate(world.events):
            if event.location is None or len(event.actors) < 2:
                continue
            names = {world.canonical(a.name if isinstance(a, ActorRef) else a) for a in event.actors}
            if len(names) >= 2:
                self.meetings.append(index)
                refs = [a.name if isinstance(a, ActorRef) else a for a in event.actors]
                if any(r not in world.kinds for r in refs):
                    self.meetings_aliased.append(index)

    def make(self, per_kind: int) -> list[Query]:
        out: list[Query] = []
        checkpoints = self.w.checkpoints
        seen: set[tuple[Any, ...]] = set()
        for kind in QUERY_KINDS:
            maker = getattr(self, kind)
            made = failures = 0
            while made < per_kind and failures < 2 * per_kind:
                # Round-robin over the checkpoints; when the assigned one offers no subject, try
                # the later ones (more history), then the earlier ones.
                start = (made + failures) % len(checkpoints)
                found = None
                for after in checkpoints[start:] + checkpoints[:start]:
                    found = maker(f"q-{self.w.seed}-{kind}-{made:04d}", after)
                    if found is not None:
                        break
                if found is None:
                    failures += 1
                    continue
                key = (kind, found.asked_after, *found.subjects, *found.evidence)
                if key in seen:
                    failures += 1
                    continue
                seen.add(key)
                out.append(found)
                made += 1
        out.sort(key=lambda q: (q.asked_after, q.id))
        return out

    # -- helpers

    def characters_at(self, after: int) -> list[str]:
        return self.w.characters[: bisect.bisect_left(self.char_intro, after)]

    def items_at(self, after: int) -> list[str]:
        return self.w.items[: bisect.bisect_left(self.item_intro, after)]

    def ref(self, name: str, after: int) -> str:
        """The name, or (half the time, when one was declared by then) an alias."""
        aliases = self.w.aliases_of(name, after) if name in self.aliased else []
        return self.rng.choice(aliases) if aliases and self.rng.random() < 0.5 else name

    def eid(self, index: int) -> str:
        return self.w.event_id(index)

    @staticmethod
    def distinct_previous(log: list[tuple[int, Any]], current: Any) -> list[Any]:
        out: list[Any] = []
        for _, value in reversed(log[:-1]):
            if value is not None and value != current and value not in out:
                out.append(value)
        return out[:5]

    def pick(self, pool: list[str], ok: Callable[[str], Query | None], tries: int = 40) -> Query | None:
        if not pool:
            return None
        for _ in range(tries):
            result = ok(self.rng.choice(pool))
            if result is not None:
                return result
        return None

    def query(
        self,
        qid: str,
        kind: str,
        text: str,
        after: int,
        subjects: list[str],
        refs: list[str],
        answer: Any,
        evidence: list[int],
        stale: list[Any],
        **params: Any,
    ) -> Query:
        return Query(
            id=qid,
            kind=kind,
            text=text,
            asked_after=after,
            subjects=subjects,
            subject_refs=refs,
            answer=answer,
            evidence=[self.eid(i) for i in sorted(set(evidence))],
            stale_values=stale,
            params=params,
        )

    # -- kinds

    def where_now(self, qid: str, after: int) -> Query | None:
        gold = self.w.gold

        def ok(name: str, need_stale: bool) -> Query | None:
            log = gold.upto(("position", name), after)
            if not log or log[-1][1] is None:
                return None
            current = log[-1][1]
            stale = self.distinct_previous(log, current)
            if need_stale and not stale:
                return None
            ref = self.ref(name, after)
            text = self.rng.choice(
                (
                    f"Where is {ref} now?",
                    f"Where can {ref} be found at this point?",
                    f"What is {ref}'s current location?",
                )
            )
            return self.query(qid, "where_now", text, after, [name], [ref], current, [log[-1][0]], stale)

        pool = self.characters_at(after)
        return self.pick(pool, lambda n: ok(n, True)) or (
            self.pick(pool, lambda n: ok(n, False), 5) if after == self.w.checkpoints[-1] else None
        )

    def who_holds(self, qid: str, after: int) -> Query | None:
        gold = self.w.gold

        def ok(item: str) -> Query | None:
            if self.w.status_at(item, after) in DEAD:
                return None
            log = gold.upto(("holder", item), after)
            if log:
                index, current = log[-1]
                stale = self.distinct_previous(log, current)
            else:
                placed = gold.last(("position", item), after)
                if placed is None:
                    return None
                index, current, stale = placed[0], None, []
            if len(log) < 2 and self.rng.random() < 0.7:
                return None  # prefer items that changed hands
            text = self.rng.choice(
                (f"Who holds the {item} now?", f"Who has the {item}?", f"Who is carrying the {item}?")
            )
            return self.query(qid, "who_holds", text, after, [item], [item], current, [index], stale)

        return self.pick(self.items_at(after), ok)

    def is_alive(self, qid: str, after: int) -> Query | None:
        gold = self.w.gold
        want_dead = self.rng.random() < 0.5

        def ok(name: str) -> Query | None:
            log = gold.upto(("status", name), after)
            if not log:
                return None
            dead = log[-1][1] in DEAD
            if dead != want_dead:
                return None
            answer = "no" if dead else "yes"
            stale = []
            if any((value in DEAD) != dead for _, value in log[:-1]):
                stale = ["yes" if dead else "no"]
            ref = self.ref(name, after)
            text = self.rng.choice(
                (f"Is {ref} still alive?", f"Is {ref} alive?", f"Is {ref} still among the living?")
            )
            return self.query(qid, "is_alive", text, after, [name], [ref], answer, [log[-1][0]], stale)

        pool = self.characters_at(after)
        found = self.pick(pool, ok)
        if found is None:
            want_dead = not want_dead
            found = self.pick(pool, ok)
        return found

    def feeling(self, qid: str, after: int) -> Query | None:
        w = self.w
        pairs = getattr(self, "_trust_pairs", None)
        if pairs is None:
            pairs = sorted(
                (log[0][0], key[1], key[2])
                for key, log in w.gold.facts.items()
                if key[0] == "valence" and key[3] == "trust"
            )
            self._trust_pairs = pairs
        eligible = pairs[: bisect.bisect_left(pairs, (after,))]
        if not eligible:
            return None
        # Prefer pairs with several changes.
        best = None
        for _ in range(8):
            _, a, b = self.rng.choice(eligible)
            log = w.gold.upto(("valence", a, b, "trust"), after)
            if best is None or len(log) > len(best[2]):
                best = (a, b, log)
        assert best is not None
        a, b, log = best
        value = log[-1][1]
        # Evidence: every trust change of the pair since the last absolute set (inclusive).
        evidence: list[int] = []
        for index, _ in reversed(log):
            evidence.append(index)
            if self._sets_absolute(index, a, b):
                break
        sign = "positive" if value > 0 else "negative" if value < 0 else "neutral"
        stale = self.distinct_previous(log, value)[:3]
        ra, rb = self.ref(a, after), self.ref(b, after)
        text = self.rng.choice(
            (f"How does {ra} feel about {rb}?", f"How much does {ra} trust {rb}?", f"Does {ra} trust {rb}?")
        )
        answer = {"dimension": "trust", "value": value, "sign": sign}
        return self.query(
            qid, "feeling", text, after, [a, b], [ra, rb], answer, evidence, stale, dimension="trust"
        )

    def _sets_absolute(self, index: int, a: str, b: str) -> bool:
        w = self.w
        for effect in w.events[index].effects:
            if (
                isinstance(effect, ValenceEffect)
                and effect.value is not None
                and normalize_name(effect.dimension) == "trust"
                and w.canonical(effect.from_) == a
                and w.canonical(effect.to) == b
            ):
                return True
        return False

    def what_happened(self, qid: str, after: int) -> Query | None:
        gold = self.w.gold
        want_change = self.rng.random() < 0.6

        def ok(name: str) -> Query | None:
            status_log = gold.upto(("status", name), after)
            pos_log = gold.upto(("position", name), after)
            if not status_log or not pos_log:
                return None
            if want_change and len(status_log) < 2:
                return None
            status, location = status_log[-1][1], pos_log[-1][1]
            stale = self.distinct_previous(pos_log, location) + [
                s for s in self.distinct_previous(status_log, status) if s
            ]
            ref = self.ref(name, after)
            text = self.rng.choice(
                (f"What happened to {ref}?", f"What became of {ref}?", f"What is the latest on {ref}?")
            )
            answer = {"status": status, "location": location}
            evidence = [status_log[-1][0], pos_log[-1][0]]
            return self.query(qid, "what_happened", text, after, [name], [ref], answer, evidence, stale)

        pool = self.characters_at(after)
        return self.pick(pool, ok) or self.pick(pool, ok, 10)

    def who_was_at(self, qid: str, after: int) -> Query | None:
        w = self.w
        source = self.meetings_aliased if self.meetings_aliased and self.rng.random() < 0.5 else self.meetings
        eligible = source[: bisect.bisect_left(source, after)]
        if not eligible:
            return None
        index = self.rng.choice(eligible)
        event = w.events[index]
        names = sorted(
            {
                n
                for a in event.actor_refs()
                if (n := w.canonical(a.name)) is not None and w.kinds.get(n) == "character"
            }
        )
        if len(names) < 2:
            return None
        location = w.canonical(event.location or "")
        # A careless system answers with whoever is there now.
        now_there = [
            c for c in self.characters_at(after) if c not in names and w.location_at(c, after) == location
        ]
        stale = sorted(now_there)[:5]
        text = f"Who was present at event {self.eid(index)} ({event.kind} at {location})?"
        return self.query(
            qid,
            "who_was_at",
            text,
            after,
            names,
            [self.eid(index)],
            names,
            [index],
            stale,
            event=self.eid(index),
        )

    def where_before(self, qid: str, after: int) -> Query | None:
        gold = self.w.gold

        def ok(name: str) -> Query | None:
            log = gold.upto(("position", name), after)
            if len(log) < 2 or log[-2][1] is None or log[-1][1] is None:
                return None
            previous, current = log[-2][1], log[-1][1]
            stale = [current] + [v for v in self.distinct_previous(log[:-1], previous) if v != current]
            ref = self.ref(name, after)
            pa = "their"
            text = self.rng.choice(
                (
                    f"Where was {ref} before {pa} last move?",
                    f"Where had {ref} been before going to {current}?",
                )
            )
            evidence = [log[-2][0], log[-1][0]]
            return self.query(qid, "where_before", text, after, [name], [ref], previous, evidence, stale[:5])

        return self.pick(self.characters_at(after), ok)

    def state_as_of(self, qid: str, after: int) -> Query | None:
        gold = self.w.gold

        def ok(name: str) -> Query | None:
            log = gold.upto(("position", name), after)
            if len(log) < 2:
                return None
            k = self.rng.randrange(len(log) - 1)
            (start, value), (end, _) = log[k], log[k + 1]
            if value is None:
                return None
            # After ``s`` events (sequence s), entry k holds for s in [start + 1, end].
            s = self.rng.randint(start + 1, end)
            later = [v for _, v in reversed(log[k + 1 :]) if v is not None and v != value]
            stale = list(dict.fromkeys(later))[:5]
            ref = self.ref(name, after)
            as_of = self.eid(s - 1)
            text = self.rng.choice(
                (
                    f"Where was {ref} right after event {as_of} (sequence {s})?",
                    f"As of sequence {s} (event {as_of}), where was {ref}?",
                )
            )
            return self.query(
                qid,
                "state_as_of",
                text,
                after,
                [name],
                [ref],
                value,
                [start],
                stale,
                as_of_sequence=s,
                as_of_event=as_of,
            )

        return self.pick(self.characters_at(after), ok)


# --------------------------------------------------------------------------------------------------
# Output


def write_jsonl(world: GeneratedWorld, path: str | Path) -> tuple[Path, Path]:
    """Write the events (one ``EventIn`` JSON per line) to ``path`` and the queries to
    ``queries.jsonl`` in the same directory. Returns both paths."""
    events_path = Path(path)
    queries_path = events_path.with_name("queries.jsonl")
    encoder = msgspec.json.Encoder()
    events_path.parent.mkdir(parents=True, exist_ok=True)
    with events_path.open("wb") as out:
        for start in range(0, len(world.events), 10_000):
            out.write(encoder.encode_lines(world.events[start : start + 10_000]))
    queries_path.write_bytes(encoder.encode_lines(world.queries))
    return events_path, queries_path
