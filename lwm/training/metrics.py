"""Training metrics on disk: `metrics.jsonl` (one JSON object per logged step) and loss curves."""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

from lwm.io import savefig, write_jsonl
from lwm.write_errors import RERUN_TO_RESUME, write_failed


class MetricsWriter:
    """Appends records to `<workdir>/metrics.jsonl`; only the writing process should create one.

    On resume, records after the restored step are dropped (`truncate_after`) so the file holds
    each step once, as if the run had never stopped.
    """

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Keeps only records with `step <= step` (atomically rewritten)."""
        records = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= step]
        write_jsonl(self.path, records)

    def write(self, record: Mapping[str, Any]) -> None:
        clean = {k: _jsonable(v) for k, v in record.items()}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(clean) + "\n")
                f.flush()
        except OSError as e:  # a torn last line is ignored by readers and dropped on resume
            err = write_failed(e, self.path, then=RERUN_TO_RESUME)
            if err is None:
                raise
            raise err from None


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (empty if missing); a torn last line is ignored."""
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_loss_curve(records: list[Mapping[str, Any]], path: str | pathlib.Path) -> pathlib.Path:
    """Loss (and text/vision terms when present, and the held-out `eval_loss` as markers) against
    step, stage boundaries as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in records]
    for key, style in (("loss", "-"), ("text_loss", "--"), ("vision_loss", ":")):
        ys = [r.get(key) for r in records]
        if any(isinstance(y, (int, float)) and y > 0 for y in ys):
            ax.plot(steps, ys, style, label=key)
    evals = [(r["step"], r["eval_loss"]) for r in records if _is_number(r.get("eval_loss"))]
    if evals:
        ax.plot(*zip(*evals), "o-", markersize=3, label="eval_loss")
    prev = None
    for r in records:
        if prev is not None and r.get("stage") != prev:
            ax.axvline(r["step"] - 0.5, color="gray", alpha=0.5)
        prev = r.get("stage")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)
