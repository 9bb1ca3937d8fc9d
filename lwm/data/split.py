"""The validation split of a dataset: `data.eval_fraction` of its records held out of training.

Which records are held out depends only on the number of records (a fixed permutation, not the
run's seed), so every run, stage and restart over the same dataset holds out the same ones, and
the training stream never reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from lwm.errors import LwmError

Subset = Literal["train", "eval"]
SPLIT_SEED = 0x5EED_E7A1
"""Seed of the record permutation that picks the held-out records (fixed: the split must not
move with the run's seed)."""


def held_out_indices(num_records: int, fraction: float) -> np.ndarray:
    """Sorted indices of the `round(fraction * num_records)` (at least 1) held-out records."""
    if not 0.0 < fraction < 1.0:
        raise LwmError(f"data.eval_fraction must be in (0, 1), got {fraction}")
    count = max(1, int(round(fraction * num_records)))
    if count >= num_records:
        raise LwmError(
            f"data.eval_fraction {fraction} holds out {count} of {num_records} records, "
            f"leaving none to train on"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(num_records)
    return np.sort(order[:count])


class RecordSubset(Sequence):
    """A random-access view of `source` at `indices` (what grain's MapDataset reads)."""

    def __init__(self, source: Any, indices: np.ndarray):
        self._source = source
        self._indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> Any:
        return self._source[int(self._indices[i])]


def select_records(source: Any, fraction: float, subset: Subset) -> Any:
    """The records of `subset` of `source`: all of them when `fraction` is 0 (only "train"),
    else the held-out ones ("eval") or the rest ("train")."""
    if not fraction:
        if subset == "eval":
            raise LwmError("no validation split: set data.eval_fraction or data.eval_path")
        return source
    held = held_out_indices(len(source), fraction)
    if subset == "eval":
        return RecordSubset(source, held)
    keep = np.setdiff1d(np.arange(len(source)), held, assume_unique=True)
    return RecordSubset(source, keep)
