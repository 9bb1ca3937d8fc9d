"""Atomic file output: a reader never sees a half-written file, an error leaves nothing new behind.

Every writer goes through `atomic_path`: the content is written to a hidden temporary file in the
target's folder (same filesystem, so the final `os.replace` is atomic), which is removed if the
write fails (a full disk or a permission error is one `WriteFailed` line naming `path` and the
free space, not a traceback). Files are created 0644 (what a user shares: safetensors,
tokenizers, JSON), not the 0600 that `tempfile.mkstemp` would give.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

from lwm.write_errors import write_failed

FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[pathlib.Path]:
    """Yields a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    `suffix` keeps the extension a writer infers the format from (e.g. ".png" for savefig).
    """
    path = pathlib.Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp"
        )
        os.close(fd)
        tmp = pathlib.Path(tmp_name)
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as e:
        err = write_failed(e, path)
        if err is None:
            raise
        raise err from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Writes `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return pathlib.Path(path)


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def jsonable(value: Any) -> Any:
    """`value` with numpy/jax scalars and arrays as Python numbers and lists, and non-finite
    floats as None: strict JSON has no NaN or Infinity."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 1) -> pathlib.Path:
    """Writes `data` as strict JSON (NaN/Infinity become null) to `path` atomically."""
    return write_text(path, json.dumps(jsonable(data), indent=indent, allow_nan=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Any) -> pathlib.Path:
    """Writes an iterable of records as JSON lines to `path` atomically."""
    lines = [json.dumps(jsonable(r), allow_nan=False) + "\n" for r in records]
    return write_text(path, "".join(lines))


def savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> pathlib.Path:
    """Saves a matplotlib figure to `path` atomically (format from `path`'s extension)."""
    path = pathlib.Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
    return path


def str_keys(tree: Any) -> Any:
    """A nested mapping with every key as a string (layer indices "0", "1", ...): the layout of
    parameter trees in checkpoints and foreign formats."""
    if isinstance(tree, Mapping):
        return {str(k): str_keys(v) for k, v in tree.items()}
    return tree
