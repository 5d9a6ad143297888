"""Dataset specs -> adapters.

=============================  ==================================================================
spec                           dataset
=============================  ==================================================================
``generator:N`` /              :class:`~evals.datasets.generated.GeneratedDataset`: one world of N
``generator:N:SEED``           events (seed 0 by default); ``SEED`` may list several, ``1,2,3``
``babi:T``                     :class:`~evals.datasets.babi.BabiDataset`, task T in 1, 2, 5, 6: one
                               stream per story
``babi-long:T``                the same, all stories of task T in ONE stream
``propara``                    :class:`~evals.datasets.propara.ProParaDataset`: one stream per
                               paragraph
``locomo:PATH``                :class:`~evals.datasets.locomo.LocomoDataset` on a user-supplied
                               ``locomo10.json``
=============================  ==================================================================

``data_dir`` (bAbI, ProPara) defaults to ``../shared/datasets`` next to the repository; a missing
folder raises :class:`~evals.datasets.common.DatasetNotFoundError`. ``limit`` caps the number of
streams (quick runs). A malformed spec raises :class:`DatasetSpecError` saying what is accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from evals.datasets.babi import TASKS, BabiDataset
from evals.datasets.base import Dataset
from evals.datasets.generated import GeneratedDataset
from evals.datasets.locomo import LocomoDataset
from evals.datasets.propara import ProParaDataset

__all__ = ["SPEC_HELP", "DatasetSpecError", "get_dataset"]

SPEC_HELP: Final = (
    "generator:N[:SEED[,SEED...]], babi:T, babi-long:T (T in 1, 2, 5, 6), propara, "
    "locomo:/path/to/locomo10.json"
)


class DatasetSpecError(ValueError):
    """A dataset spec that names no dataset."""


def _int(text: str, what: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DatasetSpecError(f"dataset spec {spec!r}: {what} must be an integer, got {text!r}") from None


def get_dataset(spec: str, data_dir: Path | str | None = None, *, limit: int | None = None) -> Dataset:
    """The dataset a spec names (see the module docstring); ``limit`` caps its streams."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    name, sep, arg = spec.strip().partition(":")
    name = name.strip().lower()
    if name == "generator":
        parts = arg.split(":") if sep else []
        if not parts or not parts[0] or len(parts) > 2:
            raise DatasetSpecError(f"dataset spec {spec!r}: expected generator:N or generator:N:SEED")
        n_events = _int(parts[0], "the number of events", spec)
        if n_events < 1:
            raise DatasetSpecError(f"dataset spec {spec!r}: the number of events must be positive")
        seeds = [0]
        if len(parts) == 2:
            seeds = [_int(s, "a seed", spec) for s in parts[1].split(",")]
        return GeneratedDataset(n_events, seeds, limit=limit)
    if name in ("babi", "babi-long"):
        task = _int(arg, "the bAbI task", spec) if sep and arg else None
        if task is None or task not in TASKS:
            raise DatasetSpecError(
                f"dataset spec {spec!r}: expected {name}:T with T one of {', '.join(map(str, TASKS))}"
            )
        return BabiDataset(task, data_dir, long=name == "babi-long", limit=limit)
    if name == "propara":
        if sep:
            raise DatasetSpecError(f"dataset spec {spec!r}: propara takes no argument")
        return ProParaDataset(data_dir, limit=limit)
    if name == "locomo":
        if not arg.strip():
            raise DatasetSpecError(f"dataset spec {spec!r}: expected locomo:/path/to/locomo10.json")
        return LocomoDataset(arg.strip(), limit=limit)
    raise DatasetSpecError(f"unknown dataset spec {spec!r}; expected one of: {SPEC_HELP}")
