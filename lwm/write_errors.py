"""Failed writes the user can fix (a full disk, a quota, a permission, a read-only filesystem):
recognised in any error chain (Python's `OSError`, tensorstore's messages inside orbax's
exceptions) and reported as one line naming the path and the free space there.

Kept free of jax/orbax imports: the CLI's top-level handler uses it.
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
import shutil

from lwm.errors import LwmError

# sysexits.h EX_IOERR. Every committed checkpoint is intact (orbax commits by rename), so the
# same command, rerun once there is room, resumes from the last committed step.
EXIT_WRITE_FAILED = 74
RERUN_TO_RESUME = "rerun the same command once there is room: it resumes from the last checkpoint"

_WHY = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}
_FULL = (errno.ENOSPC, errno.EDQUOT)
# tensorstore (under orbax) reports the errno in its message: `[os_error_code='28']`.
_TS_CODE = re.compile(r"os_error_code='?(\d+)")
_TS_TEXT = {os.strerror(code): code for code in _WHY}


class WriteFailed(LwmError):
    """A write that failed for a reason outside lwm (disk full, permission, read-only);
    the CLI prints the message and exits `EXIT_WRITE_FAILED`."""

    exit_code = EXIT_WRITE_FAILED

    def __init__(self, message: str, errno_code: int):
        super().__init__(message)
        self.errno = errno_code


def write_errno(e: BaseException | None) -> int | None:
    """The errno of a disk-full / permission / read-only failure anywhere in `e`'s chain
    (causes, contexts), or None when `e` is something else."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, WriteFailed):
            return e.errno
        if isinstance(e, OSError) and e.errno in _WHY:
            return e.errno
        text = str(e)
        m = _TS_CODE.search(text)
        if m and int(m.group(1)) in _WHY:
            return int(m.group(1))
        for message, code in _TS_TEXT.items():
            if message in text:
                return code
        e = e.__cause__ or e.__context__
    return None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_space(path: str | os.PathLike) -> str:
    """`"12.0 KiB free of 400.0 KiB"` for the filesystem holding `path` (or its nearest existing
    parent), or "" when that cannot be read."""
    p = pathlib.Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return ""
    return f"{_size(usage.free)} free of {_size(usage.total)}"


def write_failed(
    e: BaseException,
    path: str | os.PathLike | None,
    what: str = "",
    then: str = "",
    *,
    verb: str = "writing",
) -> WriteFailed | None:
    """The one-line `WriteFailed` for `e` when it is a disk-full / permission / read-only failure
    (None otherwise): `<why> <verb> <what> <path> (<free space>)[; <then>]`; `path` defaults to
    the `OSError`'s file name; `verb=""` gives `<why>: <path> ...` (the operation unknown)."""
    code = write_errno(e)
    if code is None:
        return None
    if path is None:
        path = getattr(e, "filename", None)
    where = f" {what}" if what else ""
    if path is not None:
        where += f" {path}"
    # Free space only where it is the problem (a permission error is not about room).
    free = free_space(path) if path is not None and code in _FULL else ""
    free = f" ({free})" if free else ""
    tail = f"; {then}" if then else ""
    head = f"{_WHY[code]} {verb}" if verb else f"{_WHY[code]}:"
    return WriteFailed(f"{head}{where}{free}{tail}", code)
