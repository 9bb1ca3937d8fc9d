"""The workdir guard: a run directory is resumed only if it holds this model's checkpoint, and a
directory holding anything else is refused before the trainer writes to it."""

from __future__ import annotations

import errno
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from lwm.checkpoint import Checkpointer
from lwm.data.tokenizer import TOKENIZER_FILES
from lwm.errors import LwmError
from lwm.workdir_lock import LOCK_FILE
from lwm.write_errors import WriteFailed

OWN_FILES = {
    "config.json",
    "metrics.jsonl",
    "metrics.jsonl.tmp",  # left by versions that wrote metrics without lwm.io
    "loss_curve.png",
    "checkpoints",
    "tensorboard",
    "wandb",
    LOCK_FILE,  # lwm.workdir_lock: one process per workdir
    # the dataset's tokenizer files, copied so later commands need no --tokenizer
    *TOKENIZER_FILES,
}
"""What the trainer writes in a workdir; anything else there (and no checkpoint) is foreign."""


def refuse_foreign(workdir: pathlib.Path) -> None:
    """A workdir holding files that are not ours and no checkpoint is not touched."""
    if not workdir.is_dir():
        return
    foreign = [p.name for p in workdir.iterdir() if p.name not in OWN_FILES and not _leftover(p)]
    if foreign:
        raise LwmError(
            f"workdir {workdir} is not empty and holds no lwm checkpoint "
            f"(found {sorted(foreign)[:3]}); use a new directory"
        )


def check_workdir_usable(workdir: str | os.PathLike, flag: str = "--workdir") -> None:
    """A one-line error, before anything is created, for a workdir that is a file (or under
    one) or that cannot be written (a read-only filesystem, no permission)."""
    path = pathlib.Path(workdir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise LwmError(f"{flag} {path} is not a directory (it is a file)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LwmError(f"{flag} {path}: {existing} is not a directory")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        code = errno.EROFS
    elif not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EACCES
    else:
        return
    what = "" if existing == path else f" (its folder {existing})"
    raise WriteFailed(
        f"{os.strerror(code).lower()}: {flag} {path}{what} cannot be written; "
        "use a writable directory",
        code,
    )


def _leftover(p: pathlib.Path) -> bool:
    """A temporary file of `lwm.io.atomic_path` that a killed process left behind."""
    return p.name.startswith(".") and p.name.endswith(".tmp")


def resume_metadata(
    workdir: pathlib.Path, ckpt: Checkpointer, fingerprint: str, num_stages: int
) -> dict[str, Any] | None:
    """The latest checkpoint's metadata, or None for a fresh start; refuses a checkpoint of a
    different model or of a stage the config does not have, and a foreign directory."""
    step = ckpt.latest_step()
    if step is None:
        refuse_foreign(workdir)
        return None
    meta = ckpt.metadata(step)
    if meta.get("param_fingerprint") != fingerprint:
        saved = meta.get("model_config", {})
        raise LwmError(
            f"workdir {workdir} holds a checkpoint (step {step}) of a different model "
            f"(hidden_size {saved.get('hidden_size')}, layers {saved.get('num_layers')}, "
            f"vocab {saved.get('vocab_size')}); use a new workdir or the matching config"
        )
    if int(meta.get("stage", 0)) >= num_stages:
        raise LwmError(
            f"workdir {workdir}: checkpoint is in stage {meta.get('stage')} but the config "
            f"has only {num_stages} stages"
        )
    return meta


def check_resume_seq_len(meta: Mapping[str, Any], stages: Sequence, workdir: pathlib.Path) -> None:
    """A stage resumed midway must keep its sequence length (its data and schedule depend on
    it); a finished stage may be followed by a longer one."""
    st = stages[int(meta.get("stage", 0))]
    saved = meta.get("seq_len")
    if saved is not None and int(meta.get("stage_step", 0)) < st.steps and saved != st.seq_len:
        raise LwmError(
            f"workdir {workdir}: checkpoint step {meta.get('step')} is inside stage "
            f"{st.index} trained at seq_len {saved}, the config now says seq_len {st.seq_len}; "
            f"keep seq_len {saved} to resume, or use a new workdir"
        )
