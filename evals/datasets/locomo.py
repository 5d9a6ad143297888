"""LoCoMo (Snap Research, long-term conversational memory) from a user-supplied ``locomo10.json``.

The data is licensed for non-commercial use only, so it is neither shipped nor committed; pass the
path of your copy (``locomo:/path/to/locomo10.json``).

Input: a JSON list of samples, each with ``sample_id``, ``conversation`` (``speaker_a``,
``speaker_b``, ``session_N``: a list of turns ``{"speaker", "dia_id" ("D1:3"), "text",
optional "blip_caption" / "img_url"}``, ``session_N_date_time``: "1:56 pm on 8 May, 2023") and
``qa`` (``question``, ``answer``, ``evidence``: dia_ids, ``category``; the adversarial category 5
has ``adversarial_answer`` instead of ``answer``).

Conversion: one stream per sample; sessions in numeric order, each turn one event: kind
``dialogue``, summary ``"{speaker}: {text}"`` (plus ``" [shares a photo: {caption}]"`` when the
turn carries an image caption), actors [speaker], no location, no effects, external id
``locomo-{sample_id}-{dia_id}``, ``occurred_at`` = the session's date and time when it parses (taken
as UTC; every turn of a session gets the session's time), otherwise unset.

Queries: every qa item becomes one query of kind ``recall`` - a kind outside the state-query table
of ``base.py``, emitted only by this adapter: it is scored on evidence retrieval only (did the
context include the events listed in ``evidence``?); the gold ``answer`` is kept as text for
reports (``None`` for adversarial questions, whose ``adversarial_answer`` goes to ``params``).
``asked_after`` = all turns of the sample; ``params``: ``category``, and ``unresolved_evidence``
for evidence references that name no turn of the conversation.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from evals.datasets.base import EvalQuery, EvalStream
from evals.datasets.common import DatasetNotFoundError, event_json
from rag.events import MAX_SUMMARY_CHARS, EventIn

__all__ = ["RECALL", "LocomoDataset", "parse_session_time", "sample_stream"]

RECALL: Final = "recall"
_SESSION = re.compile(r"^session_(\d+)$")
_TIME = re.compile(
    r"^\s*(\d{1,2}):(\d{2})\s*([ap]\.?m\.?)\s+on\s+(\d{1,2})\s+([A-Za-z]+),?\s+(\d{4})\s*$", re.IGNORECASE
)
_MONTH_NAMES: Final = (
    ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",), ("june", "jun"),
    ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"), ("october", "oct"),
    ("november", "nov"), ("december", "dec"),
)  # fmt: skip
_MONTHS: Final = {name: month for month, names in enumerate(_MONTH_NAMES, 1) for name in names}


def parse_session_time(text: Any) -> dt.datetime | None:
    """``"1:56 pm on 8 May, 2023"`` -> 2023-05-08T13:56Z; ``None`` when it does not parse."""
    if not isinstance(text, str):
        return None
    m = _TIME.match(text)
    if m is None:
        return None
    hour, minute, ampm, day, month_name, year = m.groups()
    month = _MONTHS.get(month_name.casefold())
    if month is None:
        return None
    h = int(hour) % 12 + (12 if ampm.lower().startswith("p") else 0)
    try:
        return dt.datetime(int(year), month, int(day), h, int(minute), tzinfo=dt.UTC)
    except ValueError:
        return None


def _summary(turn: dict[str, Any]) -> str:
    speaker = str(turn.get("speaker") or "unknown").strip() or "unknown"
    text = " ".join(str(turn.get("text") or "").split())
    summary = f"{speaker}: {text}".strip()
    caption = turn.get("blip_caption")
    if isinstance(caption, str) and caption.strip():
        summary += f" [shares a photo: {' '.join(caption.split())}]"
    return summary[:MAX_SUMMARY_CHARS]


def sample_stream(sample: dict[str, Any], index: int = 0) -> EvalStream:
    sample_id = str(sample.get("sample_id") or f"sample{index + 1}")
    conversation = sample.get("conversation") or {}
    sessions = sorted(
        (int(m.group(1)), key)
        for key, value in conversation.items()
        if (m := _SESSION.match(key)) and isinstance(value, list)
    )
    events: list[dict[str, Any]] = []
    by_dia: dict[str, str] = {}
    for number, key in sessions:
        when = parse_session_time(conversation.get(f"{key}_date_time"))
        for position, turn in enumerate(conversation[key], 1):
            dia_id = "".join(str(turn.get("dia_id") or f"D{number}:{position}").split())
            external_id = f"locomo-{sample_id}-{dia_id}"
            if dia_id in by_dia:  # a repeated dia_id: keep ids unique
                external_id = f"{external_id}-{len(events)}"
            else:
                by_dia[dia_id] = external_id
            speaker = str(turn.get("speaker") or "").strip()
            event = EventIn(
                summary=_summary(turn),
                external_id=external_id[:200],
                kind="dialogue",
                actors=[speaker] if speaker else [],
                occurred_at=when,
            )
            events.append(event_json(event))

    queries: list[EvalQuery] = []
    for n, qa in enumerate(sample.get("qa") or [], 1):
        refs = qa.get("evidence") or []
        refs = [refs] if isinstance(refs, str) else refs
        evidence: list[str] = []
        unresolved: list[str] = []
        for ref in refs:
            for part in re.split(r"[;,\s]+", str(ref)):
                if not part:
                    continue
                target = by_dia.get(part)
                if target is None:
                    unresolved.append(part)
                elif target not in evidence:
                    evidence.append(target)
        params: dict[str, Any] = {"category": qa.get("category")}
        if "adversarial_answer" in qa:
            params["adversarial_answer"] = qa["adversarial_answer"]
        if unresolved:
            params["unresolved_evidence"] = unresolved
        answer = qa.get("answer")
        queries.append(
            EvalQuery(
                id=f"locomo-{sample_id}-q{n:03d}",
                kind=RECALL,
                text=str(qa.get("question") or ""),
                asked_after=len(events),
                answer=None if answer is None else str(answer),
                evidence=evidence,
                params=params,
            )
        )
    return EvalStream(name=f"locomo-{sample_id}", events=events, queries=queries)


class LocomoDataset:
    """One stream per conversation of a LoCoMo file (``locomo10.json``: 10)."""

    def __init__(self, path: str | Path, *, limit: int | None = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise DatasetNotFoundError(
                f"LoCoMo: file {self.path} not found (LoCoMo is not shipped; pass the path of your "
                f"copy of locomo10.json)"
            )
        self.limit = limit
        self.name = "locomo"

    def samples(self) -> list[dict[str, Any]]:
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(s, dict) for s in data):
            raise ValueError(f"LoCoMo: {self.path} is not a list of samples")
        return data if self.limit is None else data[: self.limit]

    def streams(self) -> Iterator[EvalStream]:
        for index, sample in enumerate(self.samples()):
            yield sample_stream(sample, index)
