"""The trainer's own hooks: stage log lines, progress bar, metric records, checkpoints,
preemption and the loss curve (`Trainer.__init__` attaches them, in order, before user hooks)."""

from __future__ import annotations

import math
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from lwm.checkpoint import Checkpointer
from lwm.training import flops as flops_lib
from lwm.training.hooks import Hooks, StageInfo, StepInfo
from lwm.training.metrics import plot_loss_curve, read_metrics
from lwm.training.sinks import MetricSink
from lwm.training.train_state import count_params


def is_primary() -> bool:
    return jax.process_index() == 0


class StageLog:
    """`lwm train: stage i/n ...` when a stage starts and `... done at step s, loss l` when it
    ends (process 0)."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def start(self, info: StageInfo) -> None:
        if not is_primary():
            return
        st, ctx = info.ctx.stage, info.ctx
        self.log(
            f"lwm train: stage {ctx.index + 1}/{ctx.num_stages} seq_len {st.seq_len} "
            f"batch {st.batch_size} rope_theta {st.rope_theta:g} mesh "
            f"{dict(ctx.mesh.shape)} params {count_params(info.state['params']):,} "
            f"steps {info.step - ctx.start}/{st.steps}"
        )

    def end(self, info: StageInfo) -> None:
        if is_primary() and not info.preempted:
            loss = info.last_metrics.get("loss", math.nan)
            self.log(f"lwm train: stage {info.index + 1} done at step {info.step}, loss {loss:.4f}")


class ProgressBar:
    """A tqdm bar per stage on process 0, with the last logged loss and learning rate."""

    def __init__(self, log_every: int):
        self.log_every = log_every
        self.bar = None

    def attach(self, hooks: Hooks) -> None:
        hooks.add(self.start, event="stage_start")
        hooks.add(self.step)
        hooks.add(self.end, event="stage_end")

    def start(self, info: StageInfo) -> None:
        if not is_primary():
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=info.ctx.stage.steps,
            initial=info.step - info.ctx.start,
            desc=f"stage {info.index}",
            leave=False,
            dynamic_ncols=True,
        )

    def step(self, info: StepInfo) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if info.step % self.log_every == 0 or info.stage_done:
            m = info.scalars()
            self.bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")

    def end(self, info: StageInfo) -> None:  # noqa: ARG002 - hook signature
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsLogger:
    """A record every `log_every` steps, at each stage's last step and at any step another hook
    added to (`info.record`, e.g. the eval): the step's train metrics, throughput (tokens/s over
    the steps since the previous record) and MFU, written to every sink on process 0."""

    def __init__(self, sinks: Sequence[MetricSink], log_every: int, peak_flops: float | None):
        self.sinks = list(sinks)
        self.log_every = log_every
        self.peak_flops = peak_flops or None
        self.last: dict[str, float] = {}

    def attach(self, hooks: Hooks) -> None:
        hooks.add(self.start, event="stage_start")
        hooks.add(self.step)

    def start(self, info: StageInfo) -> None:
        ctx = info.ctx
        self.flops_per_token = flops_lib.train_flops_per_token(ctx.mdef.config, ctx.stage.seq_len)
        if self.peak_flops is None:  # every process measures (the matmul runs on all devices)
            local = flops_lib.measure_matmul_peak(None if jax.process_count() > 1 else ctx.mesh)
            self.peak_flops = local * (jax.process_count() if jax.process_count() > 1 else 1)
        self.t_last, self.steps_since = time.perf_counter(), 0
        self.last = {}

    def step(self, info: StepInfo) -> None:
        self.steps_since += 1
        if not (info.step % self.log_every == 0 or info.stage_done or info.record):
            return
        st = info.ctx.stage
        m = dict(info.scalars())
        dt = time.perf_counter() - self.t_last
        tps = self.steps_since * st.batch_tokens / dt if dt > 0 else float("nan")
        m.update(tokens_per_s=tps, mfu=flops_lib.mfu(tps, self.flops_per_token, self.peak_flops))
        m.update(info.record)
        self.t_last, self.steps_since = time.perf_counter(), 0
        self.last = m
        if is_primary():
            record = {"step": info.step, "stage": info.ctx.index, "seq_len": st.seq_len, **m}
            for sink in self.sinks:
                sink.write(record)


class Checkpointing:
    """Saves on `train.save_every` and always at a stage's last step (stage ends are never
    pruned: later stages start from them)."""

    def __init__(self, ckpt: Checkpointer, fingerprint: str):
        self.ckpt = ckpt
        self.fingerprint = fingerprint

    def attach(self, hooks: Hooks) -> None:
        hooks.add(self.step)
        hooks.add(self.end, event="stage_end")

    def save(self, info: StepInfo, *, force: bool) -> None:
        ctx = info.ctx
        meta = {
            "step": info.step,
            "stage": ctx.index,
            "stage_step": info.stage_step,
            "param_fingerprint": self.fingerprint,
            "model_config": ctx.mdef.config.to_dict(),
            "mesh": dict(ctx.mesh.shape),
            "seq_len": ctx.stage.seq_len,  # a resume inside the stage must keep it
        }
        self.ckpt.save(
            info.step, info.state, metadata=meta, data_state=info.data.get_state(), force=force
        )

    def step(self, info: StepInfo) -> None:
        if info.stage_done:
            self.save(info, force=True)
        elif self.ckpt.should_save(info.step):
            self.save(info, force=False)

    def end(self, info: StageInfo) -> None:  # noqa: ARG002 - hook signature
        self.ckpt.wait()


class Preemption:
    """SIGTERM / SIGINT (any process) or `max_steps`: a checkpoint of the current step, then the
    trainer stops (`request_stop`). A stage's last step is left to `Checkpointing`."""

    def __init__(
        self,
        checkpointing: Checkpointing,
        stop_requested: Callable[[], bool],
        request_stop: Callable[[str], None],
        max_steps: int | None,
        log: Callable[[str], None],
        signal_name: Callable[[], str] = lambda: "",
    ):
        self.signal_name = signal_name  # the signal this process got ("SIGTERM", "SIGINT")
        self.checkpointing = checkpointing
        self.stop_requested = stop_requested
        self.request_stop = request_stop
        self.max_steps = max_steps
        self.log = log

    def attach(self, hooks: Hooks) -> None:
        hooks.add(self.step)

    def due(self, step: int) -> str | None:
        """Why the run must stop after `step` (a signal on any process, or max_steps), or None.
        A collective: every process asks at the same step."""
        if any_process(self.stop_requested()):
            return self.signal_name() or "another process's signal"
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        return None

    def stop(self, why: str, step: int) -> None:
        """After the save of `step`: waits for it, says so and ends the run."""
        self.checkpointing.ckpt.wait()
        if is_primary():
            self.log(f"lwm train: {why}: saved step {step}, exiting")
        self.request_stop(why)

    def step(self, info: StepInfo) -> None:
        if info.stage_done:
            return  # the trainer asks `due` between stages, after the stage's end is saved
        why = self.due(info.step)
        if why is None:
            return
        self.checkpointing.save(info, force=True)
        self.stop(why, info.step)


class LossCurve:
    """`<workdir>/loss_curve.png` from metrics.jsonl when a stage ends (process 0)."""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir

    def attach(self, hooks: Hooks) -> None:
        hooks.add(self.end, event="stage_end")

    def end(self, info: StageInfo) -> None:
        if not is_primary() or info.preempted:
            return
        records = read_metrics(self.workdir / "metrics.jsonl")
        if records:
            plot_loss_curve(records, self.workdir / "loss_curve.png")


def any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process of the job (every process must call this)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))
