"""The VQGAN trainer's hooks on the shared step loop (`lwm.training.loop`, the LM trainer's):
progress bar, stop requests, metric lines, held-out eval with sample grids, checkpoints.

Per step, in this order: the bar advances; a stop (SIGTERM / SIGINT before the last step, or
`max_seconds` spent) marks the step as the loop's last (`StepInfo.stopping`), so every periodic
hook below also runs at it; every `log_every` steps the metrics are fetched (a non-finite value
is an error); every `eval_every` steps the held-out eval runs and a grid is saved; a metrics line
is written when either ran; every `save_every` steps a checkpoint is saved.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from lwm.checkpoint import Checkpointer
from lwm.errors import LwmError
from lwm.training.hooks import Hooks, StageInfo, StepInfo
from lwm.video.frame_data import FrameBank


@dataclasses.dataclass(frozen=True)
class VQGANStage:
    """The VQGAN run as the loop's one stage: global steps `[start, end)`."""

    start: int
    end: int
    index: int = 0


class FrameBatches:
    """`(step, frames)` for consecutive steps from `step`: each batch a pure function of (seed,
    step), so a resumed run reads what an uninterrupted one did."""

    def __init__(self, bank: FrameBank, seed: int, batch_size: int, flip: bool, step: int):
        self.bank, self.seed, self.batch_size, self.flip = bank, seed, batch_size, flip
        self.step = step

    def __iter__(self) -> FrameBatches:
        return self

    def __next__(self) -> tuple[int, np.ndarray]:
        step = self.step
        self.step += 1
        return step, self.bank.batch(self.seed, step, self.batch_size, flip=self.flip)

    def get_state(self) -> dict[str, int]:
        return {"step": self.step}


class VQGANHooks:
    """The hooks of one `train_vqgan` call; `last` is the latest metrics (with eval)."""

    def __init__(
        self,
        cfg: Any,  # VQGANTrainConfig
        *,
        workdir: pathlib.Path,
        metrics_file: IO[str],
        ckpt: Checkpointer,
        metadata: Callable[[int], dict],
        state: Callable[[], dict],
        evaluate: Callable[[], tuple[dict[str, float], np.ndarray, np.ndarray]],
        stop_requested: Callable[[], bool],
        max_seconds: float | None,
        show_progress: bool,
    ):
        self.cfg, self.workdir, self.metrics_file, self.ckpt = cfg, workdir, metrics_file, ckpt
        self.metadata, self.state, self.evaluate = metadata, state, evaluate
        self.stop_requested, self.max_seconds = stop_requested, max_seconds
        self.show_progress = show_progress
        self.last: dict[str, float] = {}
        self.stopping = False  # the loop ends after this step
        self.stopped_at: int | None = None  # the step a signal stopped the run at

    def attach(self, hooks: Hooks) -> None:
        c = self.cfg
        hooks.add(self.start, event="stage_start")
        hooks.add(self.advance)
        hooks.add(self.check_stop)
        hooks.add(self.log, every=c.log_every)
        hooks.add(self.eval, every=c.eval_every)
        hooks.add(self.write_line)
        hooks.add(self.save, every=c.save_every)
        hooks.add(self.end, event="stage_end")

    def start(self, info: StageInfo) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.cfg.steps,
            initial=info.step,
            unit="step",
            disable=not self.show_progress,
            file=sys.stderr,
        )
        self.t_last, self.s_last = time.perf_counter(), info.step
        self.t_start = self.t_last

    def advance(self, info: StepInfo) -> None:  # noqa: ARG002 - hook signature
        self.bar.update(1)

    def check_stop(self, info: StepInfo) -> None:
        if self.stop_requested() and info.step < info.ctx.end:
            self.stopped_at = info.step
        timed_out = (
            self.max_seconds is not None and time.perf_counter() - self.t_start > self.max_seconds
        )
        if self.stopped_at is not None or timed_out:
            self.stopping = info.stopping = True

    def log(self, info: StepInfo) -> None:
        self.last = dict(info.scalars())
        now = time.perf_counter()
        self.last["steps_per_s"] = (info.step - self.s_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.s_last = now, info.step
        self.bar.set_postfix(loss=f"{self.last['loss']:.4f}", psnr=f"{self.last['psnr']:.2f}")
        if not all(math.isfinite(v) for v in self.last.values()):
            raise LwmError(f"step {info.step}: non-finite metrics {self.last}")

    def eval(self, info: StepInfo) -> None:
        ev, originals, recon = self.evaluate()
        self.last.update(ev)
        save_grid(self.workdir / "samples" / f"step_{info.step:07d}.png", originals, recon)
        self.bar.write(
            f"step {info.step}: " + " ".join(f"{k}={v:.4g}" for k, v in ev.items()),
            file=sys.stderr,
        )

    def write_line(self, info: StepInfo) -> None:
        c, done = self.cfg, info.step
        last = info.stage_done or info.stopping
        if done % c.log_every == 0 or done % c.eval_every == 0 or last:
            self.metrics_file.write(json.dumps({"step": done, **self.last}) + "\n")
            self.metrics_file.flush()

    def save(self, info: StepInfo) -> None:
        self.ckpt.save(info.step, self.state(), metadata=self.metadata(info.step), force=True)

    def end(self, info: StageInfo) -> None:  # noqa: ARG002 - hook signature
        self.bar.close()


def save_grid(path: pathlib.Path, originals: np.ndarray, recons: np.ndarray) -> None:
    """PNG with originals on the top row and their reconstructions below (2 px gaps)."""
    from PIL import Image

    n, h, w, _ = originals.shape
    gap = 2
    grid = np.full((2 * h + gap, n * (w + gap) - gap, 3), 255, np.uint8)
    for i in range(n):
        x0 = i * (w + gap)
        grid[:h, x0 : x0 + w] = originals[i]
        grid[h + gap :, x0 : x0 + w] = recons[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
