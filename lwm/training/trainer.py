"""The trainer: walks the configured stages, checkpointing and resuming exactly.

Workdir layout: `config.json` (the run's config at first start), `checkpoints/<step>/` (orbax),
`metrics.jsonl`, `loss_curve.png` (and `tensorboard/`, `wandb/` when asked for). A restart finds
the latest checkpoint and continues inside the stage it names (a finished stage moves on to the
next one); a workdir that holds a different model or foreign files is refused before any compute.
One process per workdir (`lwm.workdir_lock`, `.lwm.lock`); a run that fails before its first step
(a bad `init_from`, ...) removes what it created (`lwm.failed_start`).

The loop itself (`lwm.training.loop`, shared with the VQGAN trainer) only steps; everything else
happens in hooks (`lwm.training.hooks`): the stage log lines, progress bar, eval, metric records,
checkpoints, preemption and the loss curve are attached when the run starts, and callers add
their own with `Trainer.add_hook`. The loss is a seam too: `Trainer(spec, workdir,
loss_fn=...)` takes any `lwm.training.loss.LossFn` (default `lm_loss`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from lwm.checkpoint import Checkpointer, UnreadableStepError
from lwm.failed_start import undo_failed_start
from lwm.io import write_text
from lwm.training import callbacks
from lwm.training.data_source import make_data_iterator
from lwm.training.hooks import Event, Hooks, StageInfo, make_hook
from lwm.training.loop import run_loop
from lwm.training.loss import LossFn, lm_loss
from lwm.training.run_spec import RunSpec, check_stage_shapes, parse_run
from lwm.training.signals import StopRequest
from lwm.training.sinks import MetricSink, make_sinks
from lwm.training.stages import (
    StageContext,
    build_stage,
    enter_stage,
    param_fingerprint,
    stage_model_config,
    stage_optimizer,
    stage_step_fn,
)
from lwm.training.train_step import batch_shardings, jit_train_step
from lwm.training.workdir import (
    check_resume_seq_len,
    check_workdir_usable,
    refuse_foreign,
    resume_metadata,
)
from lwm.training.workdir_tokenizer import copy_tokenizer_to_workdir
from lwm.workdir_lock import workdir_lock

# Re-exported: callers built before the split import these from here.
__all__ = [
    "RunSpec",
    "TrainResult",
    "Trainer",
    "check_stage_shapes",
    "make_data_iterator",
    "parse_run",
    "stage_model_config",
    "stage_optimizer",
    "stage_step_fn",
    "train",
]


@dataclasses.dataclass
class TrainResult:
    step: int
    stage: int
    preempted: bool
    last_metrics: dict[str, float]


class Trainer:
    """Runs a parsed config in `workdir`. Every process of a job runs the same calls.

    `loss_fn`: the loss the train step differentiates (and the eval hook reports), see
    `lwm.training.loss.LossFn`; `strict`: an unreadable newest checkpoint step (of the workdir or
    of `train.init_from`) is an error instead of a fallback (`--strict`)."""

    def __init__(
        self,
        spec: RunSpec,
        workdir: str | pathlib.Path,
        *,
        loss_fn: LossFn = lm_loss,
        log: Callable[[str], None] | None = None,
        max_steps: int | None = None,
        strict: bool = False,
    ):
        self.spec = spec
        self.loss_fn = loss_fn
        self.strict = strict
        self.workdir = pathlib.Path(workdir).expanduser().resolve()
        self.primary = jax.process_index() == 0
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.max_steps = max_steps  # stop (with a checkpoint) after this global step; tests
        self.stage_starts = np.cumsum([0] + [s.steps for s in spec.stages]).tolist()
        self.hooks = Hooks()
        self._user_hooks: list = []  # validated when added, attached when the run starts
        self._stop_reason: str | None = None
        self._signals: StopRequest | None = None
        self._preemption: callbacks.Preemption | None = None
        self._contexts: dict[int, StageContext] = {}
        self._first_step: Callable[[], None] = lambda: None

    def stage_context(self, index: int) -> StageContext:
        """Stage `index`'s mesh, model definition, optimizer and shardings, built once."""
        if index not in self._contexts:
            ctx = build_stage(self.spec, index, self.stage_starts[index])
            self._contexts[index] = ctx
        return self._contexts[index]

    def add_hook(self, fn: Callable[[Any], None], *, every: int = 1, event: Event = "step") -> None:
        """Calls `fn(StepInfo)` after every `every`-th step (and each stage's last), or
        `fn(StageInfo)` / `fn(TrainResult)` on "stage_start", "stage_end", "run_end"; after the
        trainer's own hooks, in the order added."""
        self._user_hooks.append(make_hook(fn, every=every, event=event))

    def request_stop(self, reason: str) -> None:
        """Ends the run after the current step's hooks (the caller saved what it needs)."""
        self._stop_reason = reason

    def _attach(self, ckpt: Checkpointer, fingerprint: str, sinks: Sequence[MetricSink]) -> Hooks:
        train = self.spec.train
        hooks = Hooks()
        hooks.add(lambda _: self._first_step(), event="step")  # from here a failure keeps files
        stage_log = callbacks.StageLog(self.log)
        hooks.add(stage_log.start, event="stage_start")
        if self.primary and train.progress_bar:
            callbacks.ProgressBar(train.log_every).attach(hooks)
        if train.eval_every:
            from lwm.training.eval import EvalHook

            EvalHook(self.spec, self.loss_fn).attach(hooks)
        self.metrics = callbacks.MetricsLogger(sinks, train.log_every, train.peak_flops)
        self.metrics.attach(hooks)
        checkpointing = callbacks.Checkpointing(ckpt, fingerprint)
        checkpointing.attach(hooks)
        self._preemption = callbacks.Preemption(
            checkpointing,
            lambda: bool(self._signals and self._signals.requested),
            self.request_stop,
            self.max_steps,
            self.log,
            signal_name=lambda: self._signals.name if self._signals else "",
        )
        self._preemption.attach(hooks)
        callbacks.LossCurve(self.workdir).attach(hooks)
        hooks.add(stage_log.end, event="stage_end")
        hooks.extend(self._user_hooks)
        return hooks

    # -- run -------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Runs (or resumes) the stages holding the workdir's lock (`lwm.workdir_lock`; process 0
        of a job); a run that fails before its first step removes what it created."""
        check_workdir_usable(self.workdir)
        # Stages differ in RoPE and length only, never in params: stage 0's model says it.
        fingerprint = param_fingerprint(self.stage_context(0).mdef)
        if not (self.workdir / "checkpoints").is_dir():
            refuse_foreign(self.workdir)  # before creating anything in it
        warn = lambda msg: self.log(f"lwm train: {msg}")  # noqa: E731
        with workdir_lock(self.workdir, "lwm train", enabled=self.primary, warn=warn):
            with undo_failed_start(self.workdir, enabled=self.primary) as created:
                self._first_step = created.keep
                return self._run_locked(fingerprint)

    def _run_locked(self, fingerprint: str) -> TrainResult:
        spec = self.spec
        ckpt = Checkpointer(
            self.workdir / "checkpoints",
            keep=spec.train.keep,
            save_every=spec.train.save_every,
            async_save=spec.train.async_save,
            preserve_steps=self.stage_starts[1:],  # stage ends: later stages start from them
            strict=self.strict,
        )
        sinks: list[MetricSink] = []
        try:
            while True:  # again from the previous step when the chosen one fails to read
                resume = resume_metadata(self.workdir, ckpt, fingerprint, len(spec.stages))
                if resume is not None:
                    check_resume_seq_len(resume, spec.stages, self.workdir)
                if self.primary:
                    cfg_path = self.workdir / "config.json"
                    if resume is None or not cfg_path.exists():
                        write_text(cfg_path, spec.config_json)
                    resume_step = int(resume["step"]) if resume else 0
                    record = json.loads(spec.config_json)
                    sinks = make_sinks(spec.train, self.workdir, record, resume_step)
                    copy_tokenizer_to_workdir(spec.data, self.workdir, self.log)
                self.hooks = self._attach(ckpt, fingerprint, sinks)
                try:
                    result = self._run_stages(ckpt, resume)
                except UnreadableStepError:  # reported and marked: latest_step() now skips it
                    for sink in sinks:
                        sink.close()
                    sinks = []
                    continue
                self.hooks.fire("run_end", result)
                return result
        finally:
            failing = sys.exc_info()[1] is not None  # the error that stopped the run wins
            for sink in sinks:
                try:
                    sink.close()
                except OSError:
                    if not failing:
                        raise
            ckpt.close()

    def _run_stages(self, ckpt: Checkpointer, resume: dict | None) -> TrainResult:
        spec = self.spec
        first = 0
        if resume is not None:
            first = int(resume["stage"])
            if int(resume["stage_step"]) >= spec.stages[first].steps:
                first += 1  # the checkpoint is a finished stage: start the next one
                if first == len(spec.stages):
                    self.log(f"lwm train: all {len(spec.stages)} stages already done")
                    return TrainResult(int(resume["step"]), first - 1, False, {})
        state, end = None, None
        last = len(spec.stages) - 1
        # One handler for the whole run: a signal in a stage's last step, or while the next
        # stage compiles, still stops the run (a handler per stage dropped it).
        with StopRequest() as signals:
            self._signals = signals
            try:
                for si in range(first, last + 1):
                    ctx = self.stage_context(si)
                    state, data_state = enter_stage(
                        ctx,
                        ckpt,
                        resume=resume if si == first else None,
                        prev_state=state,
                        log=self.log if self.primary else None,
                        strict=self.strict,
                    )
                    end = self._run_stage(ctx, state, data_state)
                    if end.preempted:
                        break
                    # A stop due at a stage's last step (signal or max_steps) ends the run here:
                    # the stage's end is its checkpoint, and the rerun starts the next stage.
                    why = self._preemption.due(end.step) if si < last else None
                    if why is not None:
                        self._preemption.stop(why, end.step)
                        return TrainResult(end.step, end.index, True, end.last_metrics)
                    state = end.state
            finally:
                self._signals = None
        return TrainResult(end.step, end.index, end.preempted, end.last_metrics)

    def _run_stage(self, ctx: StageContext, state: dict, data_state: dict | None) -> StageInfo:
        """Steps stage `ctx` from `state` to its end (or a stop request), firing the events."""
        st = ctx.stage
        step_fn = stage_step_fn(
            self.spec.train, st, ctx.mdef, ctx.optimizer, ctx.start, loss_fn=self.loss_fn
        )
        jitted = jit_train_step(
            step_fn, ctx.shardings, batch_shardings(ctx.mesh, st.batch_size, st.seq_len), ctx.mesh
        )
        data = make_data_iterator(self.spec, st, ctx.mesh, ctx.mdef.config)
        if data_state is not None:
            data.set_state(data_state)
        self._stop_reason = None
        return run_loop(
            ctx,
            state,
            data,
            jitted,
            self.hooks,
            step=int(jax.device_get(state["step"])),
            stop=lambda: self._stop_reason is not None,
            last_metrics=lambda: dict(self.metrics.last),
        )


def train(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    max_steps: int | None = None,
    log: Callable[[str], None] | None = None,
    strict: bool = False,
    loss_fn: LossFn = lm_loss,
) -> TrainResult:
    """Parses `config` (once, before any compute; see `parse_run`) and runs it in `workdir`."""
    spec = parse_run(config)
    trainer = Trainer(spec, workdir, loss_fn=loss_fn, log=log, max_steps=max_steps, strict=strict)
    return trainer.run()
