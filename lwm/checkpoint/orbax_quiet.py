"""Quiet failures in orbax: what a failed checkpoint write or read leaves behind that is not
the error itself (reported once, as one line, by `Checkpointer`) but tracebacks printed by
orbax's threads, tensorstore's late callbacks and abandoned coroutines."""

from __future__ import annotations

import gc
import inspect
import logging
import pathlib
import shutil
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

from lwm.write_errors import write_errno


class _QuietWriteFailures(logging.Filter):
    """Drops orbax's (absl) log records of a disk-full / permission failure: every thread it
    passes through logs its own traceback, and `Checkpointer` reports it once itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and write_errno(exc) is not None:
            return False
        return write_errno(Exception(record.getMessage())) is None


def _from_orbax(e: BaseException | None) -> bool:
    """Whether `e` (or an exception it was raised from) came out of orbax or tensorstore."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if " in OCDBT database at " in str(e):  # tensorstore's own message
            return True
        for frame in traceback.extract_tb(e.__traceback__):
            parts = pathlib.PurePath(frame.filename).parts
            if "orbax" in parts or "tensorstore" in parts:
                return True
        e = e.__cause__ or e.__context__
    return False


class _QuietOrbaxLeftovers(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for orbax's reads: when one read of
    a restore fails, orbax reports it and closes its event loop; the reads that failed beside it
    are never awaited, and each logged a traceback when garbage-collected."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in record.getMessage():
            return True
        if "/orbax/" in record.getMessage():  # a task's repr names its coroutine's file
            return False
        return not _from_orbax(record.exc_info[1] if record.exc_info else None)


def _is_late_callback(unraisable: Any) -> bool:
    """tensorstore completing a write after orbax's event loop has closed: the loop ended early
    because another write failed (reported by orbax), so each late write is one
    "Event loop is closed" traceback (asyncio's `call_soon_threadsafe`) of pure noise."""
    exc = unraisable.exc_value
    if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed":
        return False
    tb = unraisable.exc_traceback
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
            return True
        tb = tb.tb_next
    return False


class _QuietUnraisableHook:
    """`sys.unraisablehook` that drops `_is_late_callback` reports and passes the rest on."""

    def __init__(self, previous: Callable[[Any], None]):
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        if not _is_late_callback(unraisable):
            self.previous(unraisable)


def install_quiet_handlers() -> None:
    """Installs (once per process) the log filters and the unraisable hook above."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _QuietWriteFailures) for f in logger.filters):
        logger.addFilter(_QuietWriteFailures())
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _QuietOrbaxLeftovers) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_QuietOrbaxLeftovers())
    if not isinstance(sys.unraisablehook, _QuietUnraisableHook):
        sys.unraisablehook = _QuietUnraisableHook(sys.unraisablehook)


# orbax's per-shard read: it turns any BaseException, GeneratorExit included, into an Exception.
_READ_COROUTINE = "_read_array_index_and_device_put"


def close_abandoned_reads() -> None:
    """Closes the shard reads a failed restore left behind.

    orbax runs a restore on a fresh event loop and closes the loop as soon as one read fails,
    leaving the other reads suspended (or never started). Whenever such a coroutine was later
    garbage-collected, Python closed it, orbax's `except BaseException` turned the GeneratorExit
    into an Exception, and "Exception ignored in: <coroutine _read_array_index_and_device_put>"
    printed a traceback at a random later moment. Closing them here, now, swallows that.
    Restores are synchronous (`run_sync`), so no read of another restore can be in flight."""
    for obj in gc.get_objects():
        # `type() is`, not isinstance: that reads `__class__`, which some proxies (torch's
        # deprecated names) answer with a warning.
        if type(obj) is not types.CoroutineType or obj.cr_code.co_name != _READ_COROUTINE:
            continue
        if inspect.getcoroutinestate(obj) in (inspect.CORO_CREATED, inspect.CORO_SUSPENDED):
            try:
                obj.close()
            except Exception:  # noqa: BLE001, S110 - orbax's re-raised GeneratorExit
                pass


def drain(manager: Any) -> None:
    """Waits for orbax's background threads after a failure (each raises it once)."""
    for _ in range(3):
        try:
            manager.wait_until_finished()
            break
        except Exception:  # noqa: BLE001, S112 - the failure is reported by the caller
            continue
    try:
        manager.reload()
    except Exception:  # noqa: BLE001, S110 - best effort: the step list is only reported
        pass


def close_quietly(manager: Any) -> None:
    """Releases orbax's threads after a reported failure (each may raise it once more)."""
    drain(manager)
    try:
        manager.close()
    except Exception:  # noqa: BLE001, S110 - already reported
        pass


def remove_unfinished(directory: pathlib.Path) -> None:
    """Removes orbax's temporary step directories (`<step>.orbax-checkpoint-tmp*`) after a
    failed save: a rerun would remove them too, but a full disk needs the room now."""
    for tmp in directory.glob("*.orbax-checkpoint-tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)
