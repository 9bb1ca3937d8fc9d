"""Fewer tokens per hour: drop frames whose VQ codes barely differ from the last kept frame.

The rule (`--drop-static THRESH`): walking the frames in order, a frame whose codes differ from
the LAST KEPT frame's in fewer than THRESH of the code positions is dropped; the first frame is
always kept. Comparing with the last kept frame (not the previous frame) means a slow drift is
kept once it has added up to THRESH, and a run of static frames costs one frame. THRESH 0 keeps
every frame; THRESH 1 keeps only frames that differ from the last kept one in every position.
A difference exactly at THRESH is kept.

The rule sees nothing but the codes: it cannot know which frame matters to a question, so a frame
survives (a needle, a scene cut) only because it differs from what came before it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lwm.errors import LwmError


@dataclasses.dataclass(frozen=True)
class StaticDrop:
    """Which frames of a video the rule keeps."""

    kept: np.ndarray
    """int64 [K]: indices of the kept frames, ascending (frame 0 first when any frame exists)."""
    dropped: np.ndarray
    """int64 [F - K]: indices of the dropped frames, ascending."""
    threshold: float
    """The THRESH the rule ran with."""

    @property
    def n_frames(self) -> int:
        return len(self.kept) + len(self.dropped)


def check_threshold(thresh: float) -> float:
    """THRESH as a float in [0, 1]; anything else (NaN, out of range, not a number) is an error."""
    try:
        value = float(thresh)
    except (TypeError, ValueError):
        raise LwmError(f"--drop-static must be a number in [0, 1], got {thresh!r}") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise LwmError(f"--drop-static must be in [0, 1], got {thresh}")
    return value


def _flat_codes(codes_fhw: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes_fhw)
    if codes.ndim < 2:
        raise LwmError(
            f"per-frame codes must be [frames, h, w] (or [frames, h*w]), got {codes.shape}"
        )
    return codes.reshape(len(codes), int(np.prod(codes.shape[1:])))


def frame_differences(codes_fhw: np.ndarray) -> np.ndarray:
    """float64 [F - 1]: fraction of code positions in which frame i+1 differs from frame i (to
    choose thresholds from the distribution)."""
    flat = _flat_codes(codes_fhw)
    if len(flat) < 2:
        return np.zeros(0)
    return np.count_nonzero(flat[1:] != flat[:-1], axis=1) / flat.shape[1]


def drop_static(codes_fhw: np.ndarray, thresh: float) -> StaticDrop:
    """The rule on per-frame codes `[F, h, w]` (any trailing shape: positions are compared
    elementwise). Raises `LwmError` for a THRESH outside [0, 1] or NaN."""
    t = check_threshold(thresh)
    flat = _flat_codes(codes_fhw)
    n_frames, n_pos = flat.shape
    if n_frames == 0 or t == 0.0:  # every difference is >= 0: nothing is dropped
        return StaticDrop(np.arange(n_frames), np.zeros(0, np.int64), t)
    kept, dropped = [0], []
    ref = flat[0]
    for i in range(1, n_frames):
        # count / n_pos is correctly rounded, so it equals THRESH exactly when the ratio does.
        if np.count_nonzero(flat[i] != ref) / n_pos < t:
            dropped.append(i)
        else:
            kept.append(i)
            ref = flat[i]
    return StaticDrop(np.asarray(kept, np.int64), np.asarray(dropped, np.int64), t)
