"""A start that fails leaves nothing: what a command added to its directory before its first
real work (a training step, the demo's first phase) is removed again when it fails.

Only entries that were not there when the command started are removed; a directory or file
that existed before is never touched. The directory itself, when new, is removed by
`lwm.workdir_lock.workdir_lock` once it is empty (the lock file is the last thing in it).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
from collections.abc import Iterator


class NewEntries:
    """The entries of `root` present now; `remove_new()` deletes the ones added since, unless
    `keep()` was called (the command got past its checks)."""

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)
        self.before = set(os.listdir(self.root)) if self.root.is_dir() else set()
        self.kept = False

    def keep(self) -> None:
        """The run has done real work: a later failure keeps its files (for a resume)."""
        self.kept = True

    def remove_new(self) -> None:
        if self.kept or not self.root.is_dir():
            return
        for name in sorted(set(os.listdir(self.root)) - self.before):
            p = self.root / name
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()


@contextlib.contextmanager
def undo_failed_start(root: str | os.PathLike, *, enabled: bool = True) -> Iterator[NewEntries]:
    """Yields a `NewEntries` of `root`; an exception out of the body before its `keep()`
    removes what the body added to `root` (`enabled=False`: processes other than 0 of a job,
    which leave the shared directory to process 0)."""
    entries = NewEntries(root)
    try:
        yield entries
    except BaseException:
        if enabled:
            entries.remove_new()
        raise
