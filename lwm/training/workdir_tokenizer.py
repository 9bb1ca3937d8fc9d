"""The training workdir's copy of the dataset's tokenizer, so `lwm generate/needle/perplexity
--checkpoint WORKDIR` need no `--tokenizer`.

`lwm data build` stores `tokenizer.model` in the dataset directory (and its path and sha256 in
`metadata.json`); a run on that dataset copies it to `WORKDIR/tokenizer.model` once. A workdir
that already holds one keeps it; a different one is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Callable

from lwm.data.config import DataConfig
from lwm.io import write_bytes

TOKENIZER_FILE = "tokenizer.model"


def dataset_tokenizer(data: DataConfig) -> pathlib.Path | None:
    """The tokenizer a `data.path` dataset was built with, or None (synthetic data, or none)."""
    if data.source != "dataset" or not data.path:
        return None
    root = pathlib.Path(data.path).expanduser()
    if (root / TOKENIZER_FILE).is_file():
        return root / TOKENIZER_FILE
    try:  # datasets built before the copy: the recorded path, if it still has the same bytes
        meta = json.loads((root / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    path = pathlib.Path(str(meta.get("tokenizer", "")))
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == meta.get(
        "tokenizer_sha256"
    ):
        return path
    return None


def copy_tokenizer_to_workdir(
    data: DataConfig, workdir: pathlib.Path, log: Callable[[str], None]
) -> None:
    src = dataset_tokenizer(data)
    dst = pathlib.Path(workdir) / TOKENIZER_FILE
    if src is None:
        return
    if dst.is_file():
        if dst.read_bytes() != src.read_bytes():
            log(f"lwm train: note: {dst} differs from the dataset's {src}; kept as it is")
        return
    write_bytes(dst, src.read_bytes())
