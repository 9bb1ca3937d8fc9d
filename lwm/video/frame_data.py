"""Frames for VQGAN training: sampled from videos/images into a uint8 bank with a temporal split.

Each video contributes frames at `fps` (all frames when 0) up to `max_frames_per_video`; the last
`holdout_fraction` of each video's frames (in time) is held out for evaluation, so eval frames are
never neighbours of training frames except at one boundary. Batches are a pure function of
(seed, step), which makes resumed runs draw exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from lwm.errors import LwmError
from lwm.video.reader import read_frames
from lwm.video.tokenize import expand_inputs


@dataclasses.dataclass
class FrameBank:
    train: np.ndarray
    """uint8 [N, r, r, 3] training frames."""
    eval: np.ndarray
    """uint8 [M, r, r, 3] held-out frames."""

    def batch(self, seed: int, step: int, batch_size: int, *, flip: bool = True) -> np.ndarray:
        """Training batch for `step`: random frames, randomly mirrored (deterministic)."""
        rng = np.random.default_rng([seed, step])
        idx = rng.integers(0, len(self.train), batch_size)
        out = self.train[idx]
        if flip:
            mirror = rng.random(batch_size) < 0.5
            out[mirror] = out[mirror, :, ::-1]
        return out


def load_frame_bank(
    paths: Sequence[str],
    *,
    resolution: int,
    fps: float = 0.0,
    max_frames_per_video: int = 0,
    holdout_fraction: float = 0.1,
) -> FrameBank:
    """Reads frames of `paths` (files or directories) at `resolution` (short side + center crop)."""
    if not paths:
        raise LwmError("no training data: set data.paths to videos, images or directories")
    if not 0.0 <= holdout_fraction < 1.0:
        raise LwmError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    train, held = [], []
    for path in expand_inputs(paths):
        frames = [f for _, f in read_frames(path, fps=fps or None, size=resolution)]
        if max_frames_per_video and len(frames) > max_frames_per_video:
            keep = np.linspace(0, len(frames) - 1, max_frames_per_video).round().astype(int)
            frames = [frames[i] for i in keep]
        n_eval = int(round(len(frames) * holdout_fraction))
        cut = len(frames) - n_eval
        train.extend(frames[:cut])
        held.extend(frames[cut:])
    if not train:
        raise LwmError(f"no training frames decoded from {list(paths)}")
    empty = np.zeros((0, resolution, resolution, 3), np.uint8)
    return FrameBank(np.stack(train), np.stack(held) if held else empty)
