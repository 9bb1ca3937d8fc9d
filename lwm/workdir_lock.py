"""One lwm process per run directory: an advisory lock file, `DIR/.lwm.lock`.

`lwm train`, `lwm vqgan train`, `lwm demo` and the resumable evals (`lwm needle`,
`lwm video-needle`, `lwm perplexity`) hold it for as long as they run. It is an `flock` on an
open file, so the kernel releases it when the process ends in any way (kill -9 included): a crash
never needs a manual unlock. The holder writes its host, pid and command into the file, and a
second command on the same directory refuses in one line naming them, before it writes anything.

Where the filesystem cannot lock (some NFS / FUSE mounts: ENOLCK, EOPNOTSUPP, ...) the command
says so in one warning line and goes on unlocked. In a multi-process job only process 0 locks
(the others pass `enabled=False`).

The file is removed on a clean release (so a results folder keeps only results); a file left by a
killed process is stale and harmless: the next command locks it and writes itself in.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
from collections.abc import Callable, Iterator

from lwm.errors import LwmError

LOCK_FILE = ".lwm.lock"

# sysexits.h EX_CANTCREAT: the output directory cannot be taken (another process holds it).
EXIT_BUSY = 73

# This process's held locks, by directory: a command that locks a directory and then calls code
# that locks it again (the demo's trainer, an API caller) shares the lock instead of refusing
# itself (flock locks are per open file, so a second open in the same process would conflict).
_held: dict[pathlib.Path, list[int]] = {}


class WorkdirBusy(LwmError):
    """Another process holds the directory's lock; the CLI exits `EXIT_BUSY`."""

    exit_code = EXIT_BUSY


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def holder_text(raw: str) -> str:
    """`"lwm train (pid 123 on host h, since 2024-01-01T00:00:00)"` from a lock file's content."""
    try:
        rec = json.loads(raw)
        cmd, pid, host = rec["command"], int(rec["pid"]), rec["host"]
    except (ValueError, KeyError, TypeError):
        return "another process (its host and pid are not written yet)"
    since = f", since {rec['since']}" if rec.get("since") else ""
    return f"{cmd} (pid {pid} on host {host}{since})"


def _same_file(fd: int, path: pathlib.Path) -> bool:
    """Whether `path` still names the open file `fd` (a releasing holder may have removed it
    between our open and our lock: then the lock we got guards nothing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _acquire(path: pathlib.Path, command: str, warn: Callable[[str], None]) -> int | None:
    """The locked fd of `path` (holder info written), or None where the filesystem cannot lock;
    raises `WorkdirBusy` when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            os.close(fd)
            raise WorkdirBusy(
                f"{path.parent} is in use by {holder_text(raw)}; wait for it to end or use "
                "another directory (the lock is released when that process exits)"
            ) from None
        except OSError as e:  # ENOLCK, EOPNOTSUPP, ENOSYS, EINVAL: the filesystem cannot lock
            os.close(fd)
            warn(
                f"warning: cannot lock {path.parent} ({os.strerror(e.errno or errno.ENOLCK)}): "
                "going on unlocked; make sure no other lwm command uses this directory"
            )
            return None
        if _same_file(fd, path):
            break
        os.close(fd)  # locked a file its holder had just removed: lock the new one
    rec = {
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    # Written in place: replacing the file (as lwm.io does) would change the inode we locked.
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(rec) + "\n").encode(), 0)
    return fd


def _release(fd: int, path: pathlib.Path) -> None:
    # Remove before unlocking: a process that opened the file meanwhile then sees, once it has
    # the lock, that the path no longer names it (`_same_file`) and starts over.
    with contextlib.suppress(OSError):
        if _same_file(fd, path):
            path.unlink()
    os.close(fd)  # releases the lock


def _missing_parents(directory: pathlib.Path) -> list[pathlib.Path]:
    """`directory` and its ancestors that do not exist yet, deepest first."""
    out = []
    p = directory
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


@contextlib.contextmanager
def workdir_lock(
    directory: str | os.PathLike,
    command: str,
    *,
    enabled: bool = True,
    warn: Callable[[str], None] = _warn,
) -> Iterator[pathlib.Path]:
    """Holds `directory`'s lock (creating the directory) for the `with` body; yields the
    resolved directory. `command` ("lwm train") names this process in a refusal. Directories
    this call created are removed again at the end when they are left empty (a failed start).
    `enabled=False` (processes other than 0 of a job) only creates the directory."""
    root = pathlib.Path(directory).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise LwmError(f"{root} is not a directory")
    created = _missing_parents(root)
    root.mkdir(parents=True, exist_ok=True)
    fd = None
    try:
        if enabled and root not in _held:
            fd = _acquire(root / LOCK_FILE, command, warn)
            if fd is not None:
                _held[root] = [fd, 0]
        if root in _held:
            _held[root][1] += 1
        yield root
    finally:
        if root in _held:
            _held[root][1] -= 1
            if _held[root][1] == 0:
                fd = _held.pop(root)[0]
                _release(fd, root / LOCK_FILE)
        for d in created:  # deepest first; stops at the first that is not empty
            try:
                d.rmdir()
            except OSError:
                break
