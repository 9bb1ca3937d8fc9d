"""The output-directory rule of every eval command, and the needle evals' resumable results.

One rule (`claim_output_dir`): an `--out` whose stored spec equals this run's is resumed; a
different spec is refused (one line naming the first difference) unless `--overwrite`, which
removes only the files that eval writes; an error before any result leaves nothing new behind
(the spec file is written only once the checks have passed).

`results.jsonl` holds one record per answered sample, appended and flushed as soon as it exists,
so an interrupted run loses nothing it answered; `needle_config.json` holds what the results were
computed with (the grid included: two grids never mix in one file).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

from lwm.errors import LwmError
from lwm.io import write_json
from lwm.workdir_lock import LOCK_FILE

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


NEEDLE_OUTPUTS = (RESULTS_FILE, "summary.json", "heatmap.png")


def _first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            d = _first_difference(old.get(k), new.get(k), f"{prefix}{k}.")
            if d is not None:
                return d
        return None
    if old != new:
        return f"{prefix.rstrip('.')}: {old!r} there, {new!r} now"
    return None


def claim_output_dir(
    out_dir: str | os.PathLike,
    spec: dict,
    *,
    config_file: str,
    outputs: Sequence[str],
    overwrite: bool = False,
    what: str,
    write: bool = True,
) -> bool:
    """Applies the output-directory rule to `out_dir` for a run described by `spec` (JSON).

    Returns True when `out_dir` holds results of the same spec (resume), False when the run
    starts fresh (`config_file` then holds `spec`). A different spec, or `outputs` without a
    `config_file`, is refused unless `overwrite` (then `outputs` and `config_file` are removed;
    other files are never touched). `write=False` only checks (the caller writes `config_file`
    with its outputs, so a run that fails leaves nothing behind)."""
    out = pathlib.Path(out_dir)
    spec = json.loads(json.dumps(spec))  # compared as stored (JSON types)
    cfg = out / config_file
    present = [n for n in outputs if (out / n).exists()]
    if cfg.is_file():
        try:
            old = json.loads(cfg.read_text())
        except json.JSONDecodeError:
            old = {"<unreadable>": str(cfg)}
        diff = _first_difference(old, spec)
        if diff is None:
            return True
        problem = f"{out} holds {what} results of a different eval ({diff})"
    elif present:
        problem = f"{out} holds {present[0]} without {config_file} (not from this command?)"
    else:
        problem = None
    if problem is not None:
        if not overwrite:
            raise LwmError(f"{problem}; use a new --out or pass --overwrite to replace them")
        if write:
            for n in (*present, config_file):
                if (out / n).is_file():
                    (out / n).unlink()
    if write:
        write_json(cfg, spec)
    return False


def _extended_grid(cfg: pathlib.Path, identity: dict) -> dict:
    """A grid that contains the stored one (more lengths, depths or samples of the same eval)
    extends it: the stored spec is updated to the new grid and only the new cells are asked.
    Any other grid is a different run (refused unless --overwrite): a report always covers
    every record of `results.jsonl`."""
    if "grid" not in identity or not cfg.is_file():
        return identity
    try:
        old = json.loads(cfg.read_text())
    except json.JSONDecodeError:
        return identity
    og, ng = old.get("grid"), identity["grid"]
    same_eval = {k: v for k, v in old.items() if k != "grid"} == {
        k: v for k, v in identity.items() if k != "grid"
    }
    if same_eval and isinstance(og, dict) and og != ng:
        grows = (
            set(og.get("lengths", [])) <= set(ng["lengths"])
            and set(og.get("depths", [])) <= set(ng["depths"])
            and int(og.get("samples", 0)) <= ng["samples"]
        )
        if grows:
            write_json(cfg, identity)
    return identity


def open_results_dir(
    out_dir: str | os.PathLike, identity: dict, *, what: str, overwrite: bool = False
) -> dict:
    """Claims `out_dir` for the eval `identity` (`claim_output_dir`; `what` names it in the
    refusal), drops a torn last line of `results.jsonl` so appends start on a fresh line, and
    returns the records already there keyed by `record_key`."""
    out = pathlib.Path(out_dir)
    identity = _extended_grid(out / CONFIG_FILE, json.loads(json.dumps(identity)))
    claim_output_dir(
        out,
        identity,
        config_file=CONFIG_FILE,
        outputs=NEEDLE_OUTPUTS,
        overwrite=overwrite,
        what=what,
    )
    path = out / RESULTS_FILE
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return {record_key(r): r for r in read_results(out)}


def grid_identity(lengths: Sequence[int], depths: Sequence[float], samples: int) -> dict:
    """The grid as stored in the spec file: a rerun with other lengths is another run."""
    return {
        "lengths": [int(n) for n in lengths],
        "depths": [round(float(d), 6) for d in depths],
        "samples": int(samples),
    }


def holds_files(out_dir: str | os.PathLike) -> bool:
    """Whether `out_dir` exists holding anything but the lock file of the command now running
    (`lwm.workdir_lock`, which creates the directory): a results folder that is not new."""
    out = pathlib.Path(out_dir)
    return out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir())


@contextlib.contextmanager
def undo_new_dir_on_error(out_dir: str | os.PathLike, existed: bool) -> Iterator[None]:
    """An error before the first result leaves nothing behind: a results folder this run
    created is removed again if `results.jsonl` is still empty (answers written are kept, for
    a resume)."""
    out = pathlib.Path(out_dir)
    try:
        yield
    except BaseException:
        results = out / RESULTS_FILE
        if not existed and (not results.exists() or results.stat().st_size == 0):
            for name in (RESULTS_FILE, CONFIG_FILE):
                (out / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()  # only if nothing else is in it
        raise


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
