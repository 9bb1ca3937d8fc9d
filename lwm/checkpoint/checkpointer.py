"""`Checkpointer`: orbax `CheckpointManager` behind a small, JSON-only interface.

A checkpoint at step `s` is a directory `<dir>/<s>/` with three items:
  - `state`: a pytree (nested dicts) of arrays, written by orbax's PyTree handler (tensorstore);
  - `metadata`: a JSON object (config fingerprint, stage index, anything the caller wants);
  - `data_state`: a JSON object (the data iterator's position) or null.
Orbax writes into a temporary directory and renames it when complete, so a killed process never
leaves a half-written step behind that `latest_step()` would pick. Nothing is pickled.

Restoring takes an optional `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with shardings, or
of arrays whose shardings are reused): the arrays are read directly onto those shardings, which may
belong to a different mesh than the one that saved. Without it, leaves come back as numpy arrays.
`subtree=` restores only part of the state (e.g. `"params"` out of a full train state).

Damaged steps (a truncated data file, a deleted `metadata`, `state/` or `state/_METADATA`): when
no step is named, the newest *readable* step is used and the skipped one is reported in one line
(`step 6 unreadable (...); using step 3`); `strict=True` makes that an error. Nothing is deleted:
re-saving a step found unreadable first moves it aside to `<step>.unreadable`.

A write that fails for want of room or permission (in `save`, or later in orbax's background
threads, surfacing in the next `save`/`wait`/`close`) is one `WriteFailed` line naming the
directory, the free space and the last committed step (intact: the rerun resumes from it); the
unfinished `<step>.orbax-checkpoint-tmp` is removed and orbax's own log of the failure (its
threads log a traceback each) is silenced.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lwm.checkpoint.orbax_quiet import (
    close_abandoned_reads,
    close_quietly,
    drain,
    install_quiet_handlers,
    remove_unfinished,
)
from lwm.checkpoint.tree_paths import abstract_like, nest_under, read_failure_reason, subtree_keys
from lwm.errors import LwmError
from lwm.pytree import key_path_str
from lwm.write_errors import WriteFailed, write_errno, write_failed

_STATE, _METADATA, _DATA = "state", "metadata", "data_state"


class CheckpointError(LwmError):
    """A checkpoint that is missing, unreadable, or does not match what the caller expects."""


class UnreadableStepError(CheckpointError):
    """A step whose files fail to read (`step` names it); callers that pinned the step can
    fall back to `Checkpointer.latest_step()`, which now skips it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def _get_path(tree: Any, keys: tuple[str, ...], what: str) -> Any:
    node = tree
    for i, k in enumerate(keys):
        if not isinstance(node, Mapping) or k not in node:
            raise CheckpointError(f"{what} has no subtree {'/'.join(keys[: i + 1])!r}")
        node = node[k]
    return node


class Checkpointer:
    """Saves and restores train states under `directory`, keeping the newest `keep` steps (and
    any `preserve_steps`).

    Every process of a multi-process job must make the same calls (orbax coordinates the writes;
    JSON items are written by the primary process only).
    """

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        keep: int | None = 3,
        save_every: int | None = None,
        async_save: bool = True,
        preserve_steps: Sequence[int] = (),
        strict: bool = False,
        log: Callable[[str], None] | None = None,
        readonly: bool = False,
    ):
        """`keep`: newest steps kept (None = all); `save_every`: `save()` without `force` writes
        only steps divisible by it (None = every call); `async_save`: write in the background;
        `preserve_steps`: steps never pruned by `keep` (e.g. the ends of training stages, the
        starting points of later stages and of ablations); `strict`: an unreadable newest step
        is an error instead of a fallback to the previous readable one (the CLI's `--strict`,
        passed down by each command); `log`: where the one-line fallback
        notes go (default: stderr); `readonly`: for loading only: neither creates the directory
        nor removes unfinished temporary steps, and refuses `save`."""
        self.directory = pathlib.Path(directory).expanduser().resolve()
        self.strict = bool(strict)
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._unreadable: dict[int, str] = {}  # step -> why, found in this session
        self._checked: set[int] = set()  # steps whose small files read fine
        self.readonly = readonly
        if readonly and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {self.directory}")
        if keep is not None and keep < 1:
            raise CheckpointError(f"keep must be >= 1 or None, got {keep}")
        if save_every is not None and save_every < 1:
            raise CheckpointError(f"save_every must be >= 1 or None, got {save_every}")
        self.keep = keep
        self.save_every = save_every
        self.preserve_steps = tuple(sorted({int(x) for x in preserve_steps}))
        # LatestN(None) keeps everything.
        policies = [
            ocp.checkpoint_managers.LatestN(n=keep),
            ocp.checkpoint_managers.CustomSteps(self.preserve_steps),
        ]
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=not readonly,
            cleanup_tmp_directories=not readonly,
            # `save()` decides itself (below); orbax must not skip a step while a save is running.
            enable_should_save_is_saving_in_progress_check=False,
        )
        install_quiet_handlers()
        self._pending: int | None = None  # the step of the newest save started
        self._failed: WriteFailed | None = None  # a write failure already reported
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=options,
                item_handlers={
                    _STATE: ocp.PyTreeCheckpointHandler(),
                    _METADATA: ocp.JsonCheckpointHandler(),
                    _DATA: ocp.JsonCheckpointHandler(),
                },
            )
        except Exception as e:
            err = write_failed(e, self.directory, "checkpoint directory")
            if err is None:
                raise
            raise err from None

    # -- saving ------------------------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` without `force` would write."""
        if step in self.all_steps() and step not in self._unreadable:
            return False
        return self.should_save_ignoring_existing(step)

    def should_save_ignoring_existing(self, step: int) -> bool:
        return self.save_every is None or step % self.save_every == 0

    def _move_aside(self, step: int) -> None:
        """Keeps the files of an unreadable step (renamed, never deleted) so it can be rewritten."""
        src = self.directory / str(step)
        dst = self.directory / f"{step}.unreadable"
        n = 1
        while dst.exists():
            n += 1
            dst = self.directory / f"{step}.unreadable{n}"
        if jax.process_index() == 0 and src.exists():
            src.rename(dst)
            self._log(f"checkpoint step {step} was unreadable; moved it to {dst.name}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"lwm_ckpt_move_aside_{step}")
        self._manager.reload()
        self._unreadable.pop(step, None)
        self._checked.discard(step)

    def save(
        self,
        step: int,
        state: Any,
        *,
        metadata: Mapping[str, Any],
        data_state: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Writes `state` (pytree of arrays) with JSON `metadata` and `data_state` at `step`.

        Returns whether a checkpoint was started: False when the cadence says no (and not
        `force`) or when `step` is already saved (existing checkpoints are never overwritten).
        With async saving the write completes in the background; call `wait()` to block.
        """
        if self.readonly:
            raise CheckpointError(f"{self.directory} was opened read-only")
        step = int(step)
        if step in self._unreadable and (force or self.should_save_ignoring_existing(step)):
            self._move_aside(step)
        if step in self.all_steps() or (not force and not self.should_save(step)):
            return False
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.PyTreeSave(state),
                _METADATA: ocp.args.JsonSave(dict(metadata)),
                _DATA: ocp.args.JsonSave(
                    {"value": None if data_state is None else dict(data_state)}
                ),
            }
        )
        try:
            started = bool(self._manager.save(step, args=args, force=True))
        except Exception as e:  # this save, or the previous one's background write
            err = self._write_failure(e, step)
            if err is e:
                raise
            raise err from None
        self._pending = step
        return started

    def _write_failure(self, e: BaseException, step: int | None) -> BaseException:
        """`e` itself, or for a disk-full / permission failure the one-line `WriteFailed`, after
        waiting out orbax's threads and removing the unfinished step's temporary directory."""
        if self._failed is not None:
            return self._failed
        if write_errno(e) is None:
            return e
        # The failed step: the pending background save if it did not commit, else this one.
        drain(self._manager)
        committed = self.all_steps()
        if self._pending is not None and self._pending not in committed:
            step = self._pending
        if jax.process_index() == 0:
            remove_unfinished(self.directory)
        then = (
            f"last committed step {committed[-1]} is intact: rerun the same command once there "
            "is room to resume from it"
            if committed
            else "no step committed yet: rerun the same command once there is room"
        )
        what = f"checkpoint step {step} to" if step is not None else "checkpoints to"
        self._failed = write_failed(e, self.directory, what, then)
        return self._failed

    # -- reading -----------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Finished checkpoint steps, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest finished step whose files read, or None for an empty directory.

        Unreadable newer steps are reported in one line and skipped (an error when `strict`);
        a directory whose steps are all unreadable is an error."""
        steps = self.all_steps()
        for step in reversed(steps):
            if step in self._unreadable:
                continue
            try:
                self._probe(step)
                return step
            except UnreadableStepError:
                continue
        if steps:
            bad = ", ".join(f"step {s}: {r}" for s, r in sorted(self._unreadable.items()))
            raise CheckpointError(f"no readable checkpoint in {self.directory} ({bad})")
        return None

    def mark_unreadable(self, step: int, why: str) -> None:
        """Records `step` as unreadable: one line naming the fallback, or an error if `strict`."""
        self._unreadable[step] = why
        self._checked.discard(step)
        older = [s for s in self.all_steps() if s < step and s not in self._unreadable]
        using = f"using step {older[-1]}" if older else "no older step"
        newest = f"newest readable: step {older[-1]}" if older else "no older step"
        if self.strict:  # a plain CheckpointError: nothing above may fall back
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} unreadable ({why}); not falling "
                f"back under --strict ({newest})"
            )
        if jax.process_index() == 0:
            self._log(f"checkpoint step {step} unreadable ({why}); {using}")

    def _probe(self, step: int) -> None:
        """Reads the small files of `step` (JSON items, the array metadata); arrays are read by
        `restore`, which reports a truncated data file the same way."""
        if step in self._checked:
            return
        path = self.directory / str(step)
        why = None
        if not (path / _STATE).is_dir():
            why = f"{_STATE}/ missing"
        elif not (path / _STATE / "_METADATA").is_file():
            why = f"{_STATE}/_METADATA missing"
        elif not (path / _METADATA).is_dir():
            why = f"{_METADATA} missing"
        else:
            try:
                self._read_json(step, _METADATA)
                self._read_json(step, _DATA)
                if not jax.tree_util.tree_leaves(self.saved_tree(step)):
                    why = f"{_STATE} holds no arrays"
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                why = read_failure_reason(e)
        if why is not None:
            self.mark_unreadable(step, why)
            raise UnreadableStepError(f"checkpoint step {step} unreadable ({why})", step)
        self._checked.add(step)

    def _read_json(self, step: int, item: str) -> Any:
        out = self._manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
        return out[item]

    def _resolve_step(self, step: int | None) -> int:
        if step is None:
            latest = self.latest_step()
            if latest is None:
                raise CheckpointError(f"no checkpoint in {self.directory}")
            return latest
        steps = self.all_steps()
        if int(step) not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory}; have {steps}"
            )
        step = int(step)
        if step in self._unreadable:
            raise UnreadableStepError(
                f"checkpoint step {step} unreadable ({self._unreadable[step]})", step
            )
        self._probe(step)
        return step

    def metadata(self, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata of `step` (default: the newest readable) without reading arrays."""
        step = self._resolve_step(step)
        return dict(self._read_json(step, _METADATA))

    def restore(
        self,
        step: int | None = None,
        *,
        abstract_state: Any = None,
        subtree: str | Sequence[str] | None = None,
    ) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
        """Reads `(state, metadata, data_state)` of `step` (default: the newest readable).

        A step whose arrays fail to read is marked unreadable: with `step=None` the next older
        readable step is tried; a named step raises `UnreadableStepError` (so a caller that
        planned around that step's metadata can start over from `latest_step()`).

        `abstract_state`: the target structure with shapes, dtypes and shardings (of the subtree
        if `subtree` is given); None restores numpy arrays on the host. `subtree`: a key path like
        `"params"` or `("opt_state", "mu")` to read only that part of the saved state.
        """
        if step is not None:
            return self._restore_step(self._resolve_step(step), abstract_state, subtree)
        while True:
            resolved = self._resolve_step(None)
            try:
                return self._restore_step(resolved, abstract_state, subtree)
            except UnreadableStepError:
                continue

    def _restore_step(
        self, step: int, abstract_state: Any, subtree: str | Sequence[str] | None
    ) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
        keys = subtree_keys(subtree)
        if abstract_state is None:
            saved = self.saved_tree(step)
            target = _get_path(saved, keys, f"checkpoint step {step}")
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), target)
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        else:
            target = abstract_like(abstract_state)
            self._check_structure(step, keys, target)
            restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        state_args = ocp.args.PyTreeRestore(
            item=nest_under(keys, target),
            restore_args=nest_under(keys, restore_args),
            partial_restore=bool(keys),
        )
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        _STATE: state_args,
                        _METADATA: ocp.args.JsonRestore(),
                        _DATA: ocp.args.JsonRestore(),
                    }
                ),
            )
        except Exception as e:  # a truncated or corrupt data file: tensorstore/orbax errors
            why = read_failure_reason(e)
            close_abandoned_reads()
            self.mark_unreadable(step, why)
            raise UnreadableStepError(f"checkpoint step {step} unreadable ({why})", step) from None
        state = _get_path(out[_STATE], keys, f"checkpoint step {step}")
        data = out[_DATA]
        data_state = data.get("value") if isinstance(data, Mapping) else None
        return state, dict(out[_METADATA]), data_state

    def saved_tree(self, step: int) -> Any:
        """The saved state's structure (leaves are orbax value metadata)."""
        meta = self._manager.item_metadata(step)[_STATE]
        return meta.tree if hasattr(meta, "tree") else meta

    def _check_structure(self, step: int, keys: tuple[str, ...], target: Any) -> None:
        """One-line error when the requested structure or shapes differ from the saved ones."""
        saved = _get_path(self.saved_tree(step), keys, f"checkpoint step {step}")
        saved_paths = {key_path_str(p): m for p, m in jax.tree_util.tree_leaves_with_path(saved)}
        want_paths = {key_path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(target)}
        missing = sorted(set(want_paths) - set(saved_paths))
        if missing:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} lacks {len(missing)} arrays "
                f"(e.g. {missing[0]}); it was saved from a different model or state layout"
            )
        for path, want in want_paths.items():
            shape = tuple(getattr(saved_paths[path], "shape", ()) or ())
            if shape != tuple(want.shape):
                raise CheckpointError(
                    f"checkpoint step {step}: {path} has shape {shape}, "
                    f"expected {tuple(want.shape)}"
                )

    # -- lifecycle ---------------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until background saves have finished (and old steps are pruned)."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            err = self._write_failure(e, self._pending)
            if err is e:
                raise
            raise err from None

    def close(self) -> None:
        """Waits for pending saves (and the start-up clean-up of unfinished steps, which would
        otherwise fail at interpreter shutdown) and releases orbax's threads. A write failure
        not yet reported is raised (`WriteFailed`); one already reported is not raised again."""
        cleanup = getattr(self._manager, "_cleanup_tmp_directory_future", None)
        if cleanup is not None:
            cleanup.result()
        reported = self._failed is not None
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            err = self._write_failure(e, self._pending)
            if err is e:
                raise
            if not reported:
                close_quietly(self._manager)
                raise err from None
        if self._failed is None:
            self._manager.close()
        else:  # orbax's threads may raise the reported failure once more
            close_quietly(self._manager)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_checkpoint_metadata(directory: str | pathlib.Path) -> dict[str, Any] | None:
    """The latest checkpoint's JSON metadata in `directory`, or None if it holds no checkpoint."""
    path = pathlib.Path(directory)
    if not path.is_dir():
        return None
    ckpt = Checkpointer(path, async_save=False, readonly=True)
    try:
        return ckpt.metadata() if ckpt.latest_step() is not None else None
    finally:
        ckpt.close()
