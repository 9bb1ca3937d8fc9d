"""Guards for commands that write an `--out`: an output that is, contains or lies inside one of
the command's inputs is refused before any work (with `--overwrite` it would replace or delete
the very files it reads), and `--overwrite` replaces only what an earlier run of the same command
wrote, never a foreign file."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterable
from typing import Any

from lwm.data.json_input import loads_bounded
from lwm.errors import LwmError


def _resolved(path: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(path).expanduser().resolve()


def check_out_not_input(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike],
    *,
    flag: str = "--out",
    inside_ok: bool = False,
) -> None:
    """Refuses (LwmError) an `out` that is one of `inputs`, a directory holding one, or a path
    inside an input directory (`inside_ok`: allowed, for a single output file the command never
    reads back). Symbolic links are resolved on both sides."""
    out_r = _resolved(out)
    for item in inputs:
        in_r = _resolved(item)
        if out_r == in_r:
            raise LwmError(f"{flag} {out} is the input {item}; choose an {flag} outside the inputs")
        if out_r in in_r.parents:
            raise LwmError(
                f"{flag} {out} contains the input {item}; choose an {flag} outside the inputs"
            )
        if in_r in out_r.parents and not inside_ok:
            raise LwmError(
                f"{flag} {out} is inside the input directory {item}; choose an {flag} outside "
                "the inputs"
            )


def foreign_entries(directory: pathlib.Path, ours: Iterable[str]) -> list[pathlib.Path]:
    """The entries of `directory` not named in `ours` (subdirectories and links count as
    foreign), sorted."""
    names = set(ours)
    return sorted(
        p for p in directory.iterdir() if p.name not in names or p.is_symlink() or not p.is_file()
    )


def first_json_record(path: pathlib.Path) -> Any:
    """The first non-empty line of a jsonl file, parsed (None if absent, unreadable or not
    JSON); reads only that line."""
    try:
        with open(path, "rb") as f:
            for raw in f:
                if raw.strip():
                    return loads_bounded(raw.decode("utf-8"))
    except (OSError, ValueError):  # ValueError: not UTF-8, malformed or nested too deeply
        return None
    return None


def check_replaceable_file(
    out: pathlib.Path, looks_ours: Callable[[pathlib.Path], bool], command: str
) -> None:
    """Refuses (LwmError) to `--overwrite` an `out` that is not a plain file an earlier run of
    `command` wrote (`looks_ours`); an empty file holds nothing to lose and may be replaced."""
    if out.is_symlink() or not out.is_file():
        kind = "a symbolic link" if out.is_symlink() else "not a regular file"
        raise LwmError(f"--out {out} is {kind}; not replaced (choose another --out)")
    if out.stat().st_size and not looks_ours(out):
        raise LwmError(
            f"--out {out} was not written by `{command}`; only that command's own output is "
            "replaced (or resumed), never a foreign file: choose another --out"
        )
