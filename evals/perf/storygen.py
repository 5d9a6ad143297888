"""Seeded generator of plausible chronicle events for benchmarks.

Summaries are 15-40 words of varied narrative prose built from a small vocabulary of names,
places, items and verbs; each event names two or three actors, a location and two effects. The
same seed always gives the same events, so runs on different machines ingest identical text.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

__all__ = ["MAX_WORDS", "MIN_WORDS", "StoryGenerator"]

MIN_WORDS = 15
MAX_WORDS = 40

NAMES = [
    "Aldric",
    "Brenna",
    "Caius",
    "Delphine",
    "Edrin",
    "Fenna",
    "Garrick",
    "Helka",
    "Ilsabet",
    "Joren",
    "Kestrel",
    "Liora",
    "Mattias",
    "Nerys",
    "Orrin",
    "Perrin",
    "Quilla",
    "Rowan",
    "Sabine",
    "Tamsin",
    "Ulric",
    "Vesna",
    "Wendel",
    "Ysolde",
    "Zarek",
    "Old Maud",
    "Captain Harrow",
    "Sister Anwen",
]
PLACES = [
    "salt market",
    "harbour wall",
    "Gilded Lantern inn",
    "old watchtower",
    "chapel of Saint Orla",
    "river ford",
    "smugglers' cave",
    "guildhall",
    "northern gate",
    "ruined mill",
    "caravan camp",
    "lighthouse",
    "duke's library",
    "fish market",
    "crossroads shrine",
    "mountain pass",
    "abandoned mine",
    "tannery yard",
    "moonlit orchard",
    "customs house",
]
ITEMS = [
    "brass key",
    "sealed letter",
    "silver dagger",
    "ledger of debts",
    "map of the marshes",
    "signet ring",
    "vial of nightshade",
    "bundle of salt",
    "forged writ",
    "lantern",
    "old coin",
    "healer's satchel",
    "bloodied cloak",
    "ship's manifest",
    "iron amulet",
]
FACTIONS = ["Salt Guild", "city watch", "river pirates", "temple wardens", "Harrow company", "duke's men"]
TIMES = [
    "At dawn,",
    "Late in the evening,",
    "During the storm,",
    "Before the bells rang,",
    "Under a pale moon,",
    "While the market emptied,",
    "On the third day,",
    "Shortly after midnight,",
    "In the heat of noon,",
]
VERBS = [
    "confronted",
    "met",
    "bargained with",
    "followed",
    "betrayed",
    "rescued",
    "questioned",
    "warned",
    "argued bitterly with",
    "shared a quiet meal with",
    "challenged",
    "sheltered",
    "ambushed",
    "bribed",
    "comforted",
    "accused",
    "tricked",
    "pleaded with",
]
ITEM_ACTIONS = [
    "handed over the {item}",
    "stole the {item}",
    "hid the {item} beneath a loose stone",
    "traded the {item} for passage",
    "found the {item} among the crates",
    "burned the {item}",
    "demanded the {item}",
    "returned the {item} without a word",
]
REASONS = [
    "after hearing rumours about {c}",
    "because the {faction} had raised the tolls again",
    "to settle an old debt",
    "fearing that {c} had talked",
    "on the orders of the {faction}",
    "hoping to learn where {c} had gone",
    "to keep a promise made years ago",
]
AFTERMATHS = [
    "{b} swore to repay the insult.",
    "The {faction} will not forget it.",
    "Nobody noticed {c} watching from the shadows.",
    "{a} left before anyone could ask questions.",
    "It started to rain as they parted.",
    "{b} was left wounded and shaken.",
    "Word of it reached the {faction} by nightfall.",
    "{a} laughed, but {b} did not.",
    "The innkeeper pretended to have seen nothing.",
    "{c} began to suspect {a} of lying.",
]
KINDS = ["dialogue", "combat", "travel", "discovery", "trade", "intrigue", "event"]
TAGS = ["politics", "mystery", "violence", "romance", "commerce", "religion", "secret", "journey"]
ROLES = ["agent", "patient", "witness"]
STATUSES = ["wounded", "suspicious", "in hiding", "grieving", "indebted", "exhausted"]
RELATIONS = ["ally", "rival", "creditor", "confidant", "enemy"]
DIMENSIONS = ["trust", "fear", "affection", "respect"]


class StoryGenerator:
    """Deterministic for a given seed; `event(i)` draws the next event (the index only labels it)."""

    def __init__(self, seed: int = 1234, *, prefix: str = "bench") -> None:
        self._rng = random.Random(seed)
        self._prefix = prefix
        self._clock = dt.datetime(1312, 3, 1, 8, 0, tzinfo=dt.UTC)

    def summary(self, a: str, b: str, c: str, place: str) -> str:
        rng = self._rng
        target = rng.randint(MIN_WORDS, MAX_WORDS)
        for _ in range(50):
            parts = []
            if rng.random() < 0.45:
                parts.append(rng.choice(TIMES))
            parts.append(f"{a} {rng.choice(VERBS)} {b} at the {place}")
            if rng.random() < 0.6:
                parts.append("and " + rng.choice(ITEM_ACTIONS).format(item=rng.choice(ITEMS)))
            if rng.random() < 0.6:
                parts.append(rng.choice(REASONS).format(c=c, faction=rng.choice(FACTIONS)))
            text = " ".join(parts) + "."
            # Add aftermath sentences until the drawn length is reached, never beyond MAX_WORDS.
            fills = rng.sample(AFTERMATHS, len(AFTERMATHS))
            for sentence in fills:
                candidate = text + " " + sentence.format(a=a, b=b, c=c, faction=rng.choice(FACTIONS))
                if len(text.split()) >= target or len(candidate.split()) > MAX_WORDS:
                    break
                text = candidate
            if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
                return text
        raise AssertionError("could not draw a summary of the required length")  # pragma: no cover

    def event(self, index: int) -> dict[str, Any]:
        rng = self._rng
        a, b, c = rng.sample(NAMES, 3)
        place = rng.choice(PLACES)
        self._clock += dt.timedelta(minutes=rng.randint(5, 600))
        actors: list[dict[str, str]] = [{"name": a, "role": "agent"}, {"name": b, "role": "patient"}]
        if rng.random() < 0.5:
            actors.append({"name": c, "role": rng.choice(ROLES)})
        effect_pool: list[dict[str, Any]] = [
            {"op": "move", "entity": a, "to": place},
            {"op": "status", "entity": b, "status": rng.choice(STATUSES)},
            {"op": "relate", "from": a, "to": b, "type": rng.choice(RELATIONS)},
            {"op": "valence", "from": b, "to": a, "dimension": rng.choice(DIMENSIONS),
             "delta": round(rng.uniform(-0.5, 0.5), 2)},
            {"op": "transfer", "item": rng.choice(ITEMS), "to": a},
        ]  # fmt: skip
        return {
            "external_id": f"{self._prefix}-{index:07d}",
            "kind": rng.choice(KINDS),
            "summary": self.summary(a, b, c, place),
            "actors": actors,
            "location": place,
            "effects": rng.sample(effect_pool, 2),
            "occurred_at": self._clock.isoformat(),
            "tags": rng.sample(TAGS, rng.randint(1, 2)),
            "importance": round(rng.uniform(0.1, 0.9), 2),
        }

    def events(self, count: int, start: int = 0) -> list[dict[str, Any]]:
        return [self.event(start + i) for i in range(count)]
