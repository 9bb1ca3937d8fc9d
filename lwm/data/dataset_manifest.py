"""Which files a `lwm data build` wrote: the list kept in the dataset's `metadata.json`
(`files`), so that `--overwrite` replaces a dataset an earlier build wrote and never a foreign
file. Datasets built before the list existed are recognised by their fixed names."""

from __future__ import annotations

import fnmatch
import json
import os
import pathlib
from typing import Any

from lwm.data.json_input import loads_bounded
from lwm.data.output_guard import foreign_entries
from lwm.data.tokenizer import TOKENIZER_FILES
from lwm.errors import LwmError
from lwm.io import write_text

DATASET_NAME = "lwm_tokens"
METADATA_FILE = "metadata.json"
FILES_KEY = "files"
LEGACY_FILES = ("dataset_info.json", "features.json", METADATA_FILE, *TOKENIZER_FILES)
LEGACY_SHARDS = f"{DATASET_NAME}-*.array_record-*"
"""Names of a dataset built before `metadata.json` listed its files."""


def write_manifest(built: pathlib.Path, meta: dict[str, Any]) -> None:
    """Adds to `built`/metadata.json (and to `meta`) the names of every file in `built`."""
    if any(not p.is_file() for p in built.iterdir()):
        raise LwmError(f"{built}: unexpected subdirectory in a built dataset")
    meta[FILES_KEY] = sorted({p.name for p in built.iterdir()} | {METADATA_FILE})
    write_text(built / METADATA_FILE, json.dumps(meta))


def _names_written(out: pathlib.Path) -> list[str] | None:
    """The names an earlier build wrote into `out`, or None when `out` is no dataset of ours."""
    try:
        meta = loads_bounded((out / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable, not UTF-8, malformed or too deep
        return None
    if not isinstance(meta, dict) or "num_examples" not in meta:
        return None
    files = meta.get(FILES_KEY)
    if isinstance(files, list) and all(isinstance(f, str) and "/" not in f for f in files):
        return files
    if not (out / "dataset_info.json").is_file():
        return None
    shards = [p.name for p in out.iterdir() if fnmatch.fnmatch(p.name, LEGACY_SHARDS)]
    return [*LEGACY_FILES, *shards]


def check_replaceable(out: pathlib.Path) -> None:
    """Refuses (LwmError) to replace `out` unless it is an empty directory or holds only files an
    earlier `lwm data build` wrote (its metadata.json lists them)."""
    if out.is_symlink():
        raise LwmError(f"--out {out} is a symbolic link; not replaced (choose another --out)")
    if not out.is_dir():
        raise LwmError(
            f"--out {out} is a file, not a dataset written by `lwm data build`; not overwritten"
        )
    if not any(out.iterdir()):
        return
    ours = _names_written(out)
    foreign = foreign_entries(out, ours or [])
    if foreign:
        what = "is not a dataset written by" if ours is None else "holds files not written by"
        raise LwmError(
            f"--out {out} {what} `lwm data build` (e.g. {foreign[0].name}, {len(foreign)} in "
            "all); --overwrite replaces only a dataset, never foreign files: choose another --out"
        )


def replace_dataset(built: pathlib.Path, out: pathlib.Path, work: pathlib.Path) -> None:
    """Moves `built` to `out`; an existing `out` (checked by `check_replaceable`) is first moved
    aside into `work` (removed with it), and put back if the move fails."""
    if not (out.exists() or out.is_symlink()):
        os.replace(built, out)
        return
    old = work / "replaced"
    os.replace(out, old)
    try:
        os.replace(built, out)
    except BaseException:
        os.replace(old, out)
        raise
