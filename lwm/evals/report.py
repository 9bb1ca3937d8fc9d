"""Needle results as a depth x length accuracy grid: summary numbers, a text table, a heatmap."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class NeedleSummary:
    lengths: list[int]
    depths: list[float]
    accuracy: np.ndarray
    """`[len(depths), len(lengths)]` fraction of samples with every asked number found (NaN where
    a cell has no results)."""
    recall: np.ndarray
    """Same shape: mean fraction of asked numbers found (RULER's string-match-all)."""
    counts: np.ndarray
    """Same shape: samples per cell."""

    def accuracy_per_length(self) -> list[float]:
        return [
            _mean_weighted(self.accuracy[:, j], self.counts[:, j]) for j in range(len(self.lengths))
        ]

    @property
    def overall(self) -> float:
        return _mean_weighted(self.accuracy.ravel(), self.counts.ravel())

    def to_dict(self) -> dict:
        return {
            "lengths": self.lengths,
            "depths": self.depths,
            "accuracy": _nan_to_none(self.accuracy),
            "recall": _nan_to_none(self.recall),
            "counts": self.counts.tolist(),
            "accuracy_per_length": dict(zip(map(str, self.lengths), self.accuracy_per_length())),
            "overall": self.overall,
        }


def _mean_weighted(values: np.ndarray, weights: np.ndarray) -> float:
    ok = weights > 0
    if not ok.any():
        return float("nan")
    return float((values[ok] * weights[ok]).sum() / weights[ok].sum())


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if np.isnan(x) else float(x) for x in row] for row in a]


def summarize(records: Sequence[dict], lengths: Sequence[int], depths: Sequence[float]):
    """Cell means over the records whose (length, depth) is on the grid."""
    li = {int(n): j for j, n in enumerate(lengths)}
    di = {round(float(d), 6): i for i, d in enumerate(depths)}
    shape = (len(depths), len(lengths))
    correct, recall, counts = np.zeros(shape), np.zeros(shape), np.zeros(shape, np.int64)
    for r in records:
        j, i = li.get(int(r["length"])), di.get(round(float(r["depth"]), 6))
        if i is None or j is None:
            continue
        correct[i, j] += bool(r["correct"])
        recall[i, j] += float(r["score"])
        counts[i, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(counts > 0, correct / np.maximum(counts, 1), np.nan)
        rec = np.where(counts > 0, recall / np.maximum(counts, 1), np.nan)
    return NeedleSummary([int(n) for n in lengths], [float(d) for d in depths], acc, rec, counts)


def format_length(n: int) -> str:
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def format_table(summary: NeedleSummary, title: str = "") -> str:
    """Accuracy (%) per depth (rows) and length (columns), a per-length line and the overall."""
    heads = [format_length(n) for n in summary.lengths]
    width = max(6, *(len(h) + 1 for h in heads))
    lines = [title] if title else []
    lines.append("depth \\ len".ljust(12) + "".join(h.rjust(width) for h in heads))
    for i, d in enumerate(summary.depths):
        cells = [_pct(summary.accuracy[i, j]) for j in range(len(heads))]
        lines.append(f"{d:<12.3g}" + "".join(c.rjust(width) for c in cells))
    lines.append(
        "all depths".ljust(12)
        + "".join(_pct(a).rjust(width) for a in summary.accuracy_per_length())
    )
    n = int(summary.counts.sum())
    lines.append(f"overall {_pct(summary.overall)} over {n} samples")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "-" if np.isnan(x) else f"{100 * x:.0f}%"


def plot_heatmap(
    summary: NeedleSummary,
    path: str | os.PathLike,
    *,
    title: str = "Needle in a haystack",
    xlabel: str = "context length (tokens)",
    length_labels: Sequence[str] | None = None,
) -> pathlib.Path:
    """Depth (rows, 0 at the top) x length (columns) heatmap, red (0%) to green (100%), each cell
    labelled with its accuracy; written atomically. `xlabel` / `length_labels` (one per length)
    relabel the length axis (e.g. video frames)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    path = pathlib.Path(path)
    cmap = LinearSegmentedColormap.from_list(
        "needle", ["#d7263d", "#f4d35e", "#2a9d8f"]
    ).with_extremes(bad="#dddddd")
    n_rows, n_cols = summary.accuracy.shape
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.9 * n_cols), max(3.0, 0.8 + 0.38 * n_rows)))
    data = np.ma.masked_invalid(summary.accuracy * 100)
    im = ax.imshow(data, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            v = summary.accuracy[i, j]
            if not np.isnan(v):
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=8)
    ticks = list(length_labels or [format_length(n) for n in summary.lengths])
    ax.set_xticks(range(n_cols), ticks)
    ax.set_yticks(range(n_rows), [f"{100 * d:.0f}%" for d in summary.depths])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("needle depth")
    ax.set_title(f"{title}: {_pct(summary.overall)} overall", fontsize=10)
    fig.colorbar(im, ax=ax, label="accuracy (%)", fraction=0.05, pad=0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return path
