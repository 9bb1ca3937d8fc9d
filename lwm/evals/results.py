"""The resumable results folder shared by the needle evals (text and video).

`results.jsonl` holds one record per answered sample, appended and flushed as soon as it exists,
so an interrupted run loses nothing it answered; `<eval>_config.json` holds what the results were
computed with, so a rerun into the same folder resumes only the same eval and refuses another.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from lwm.errors import LwmError

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "needle_config.json"


def read_results(out_dir: str | os.PathLike) -> list[dict]:
    """Records of `results.jsonl` (a torn last line from an interrupted run is ignored)."""
    path = pathlib.Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def record_key(r: dict) -> tuple[int, float, int]:
    """The grid cell and sample a record answers: (length, depth, sample)."""
    return (int(r["length"]), round(float(r["depth"]), 6), int(r["sample"]))


def open_results_dir(out_dir: str | os.PathLike, identity: dict, *, what: str) -> dict:
    """Creates `out_dir` (or checks that its earlier results come from the same eval, named
    `what` in the refusal), drops a torn last line of `results.jsonl` so appends start on a
    fresh line, and returns the records already there keyed by `record_key`."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    identity = json.loads(json.dumps(identity))  # compared as stored (JSON types)
    cfg = out / CONFIG_FILE
    if cfg.is_file():
        old = json.loads(cfg.read_text())
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        if diff:
            k = diff[0]
            raise LwmError(
                f"{out} holds {what} results of a different eval ({k}: {old.get(k)!r} there, "
                f"{identity.get(k)!r} now); use a new --out"
            )
    elif (out / RESULTS_FILE).exists():
        raise LwmError(f"{out} holds {RESULTS_FILE} without {CONFIG_FILE}; use a new --out")
    else:
        tmp = cfg.with_name(cfg.name + ".tmp")
        tmp.write_text(json.dumps(identity, indent=1, sort_keys=True))
        os.replace(tmp, cfg)
    path = out / RESULTS_FILE
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return {record_key(r): r for r in read_results(out)}


def log_records(f, done: dict, records: Sequence[dict], jobs: Sequence[Any], bar) -> None:
    """Appends a batch's records to the open results file (flushed: a crash loses nothing
    answered) and shows the running accuracy over `jobs` (anything with a `.key`) on the bar."""
    for rec in records:
        done[record_key(rec)] = rec
        f.write(json.dumps(rec) + "\n")
    f.flush()
    if bar is not None:
        bar.update(len(records))
        acc = [done[j.key]["correct"] for j in jobs if j.key in done]
        bar.set_postfix(acc=f"{sum(acc) / len(acc):.0%}")
