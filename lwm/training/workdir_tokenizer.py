"""The training workdir's copy of the dataset's tokenizer, so `lwm generate/needle/perplexity
--checkpoint WORKDIR` need no `--tokenizer`.

`lwm data build` stores the tokenizer's files in the dataset directory (`tokenizer.model`, or
`tokenizer.json` and the files beside it) and its path and sha256 in `metadata.json`; a run on that
dataset copies them to the workdir once. A workdir that already holds a tokenizer keeps it; a
different one is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Callable

from lwm.data.config import DataConfig
from lwm.data.hf_tokenizer import SIDE_FILES, TOKENIZER_JSON
from lwm.data.sentencepiece_tokenizer import MODEL_FILE
from lwm.data.tokenizer import TOKENIZER_FILES
from lwm.io import write_bytes


def dataset_tokenizer_files(data: DataConfig) -> dict[str, pathlib.Path]:
    """File name -> file of the tokenizer a `data.path` dataset was built with; {} when there is
    none (synthetic data, or a dataset without one)."""
    if data.source != "dataset" or not data.path:
        return {}
    root = pathlib.Path(data.path).expanduser()
    if (root / TOKENIZER_JSON).is_file():
        return {n: root / n for n in (TOKENIZER_JSON, *SIDE_FILES) if (root / n).is_file()}
    if (root / MODEL_FILE).is_file():
        return {MODEL_FILE: root / MODEL_FILE}
    try:  # datasets built before the copy: the recorded path, if it still has the same bytes
        meta = json.loads((root / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    path = pathlib.Path(str(meta.get("tokenizer", "")))
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == meta.get(
        "tokenizer_sha256"
    ):
        return {MODEL_FILE: path}
    return {}


def copy_tokenizer_to_workdir(
    data: DataConfig, workdir: pathlib.Path, log: Callable[[str], None]
) -> None:
    files = dataset_tokenizer_files(data)
    if not files:
        return
    workdir = pathlib.Path(workdir)
    present = [n for n in TOKENIZER_FILES if (workdir / n).exists()]
    if present:  # copied by an earlier run, or put there by the user: never mixed or replaced
        same = set(present) == set(files) and all(
            (workdir / n).read_bytes() == files[n].read_bytes() for n in present
        )
        if not same:
            log(
                f"lwm train: note: the tokenizer in {workdir} ({', '.join(present)}) differs "
                f"from the dataset's {files[next(iter(files))]}; kept as it is"
            )
        return
    for name, src in files.items():
        write_bytes(workdir / name, src.read_bytes())
