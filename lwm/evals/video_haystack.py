"""VQGAN codes of a video needle haystack, each frame encoded once.

The haystack pool is the frames of real clips (files, or directories scanned for videos/images,
in sorted order), read with the streaming reader (`lwm.video.reader`) at `fps` frames per second or
`clip_frames` evenly spaced frames per clip, concatenated (at most `max_frames`). The VQGAN encodes
frames independently, so each pool frame and each needle image is encoded once and every sample's
codes are gathered from them: exactly the codes of encoding the assembled video.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import numpy as np

from lwm.errors import LwmError
from lwm.evals.needle_images import Needle
from lwm.evals.video_needle_task import VideoNeedleSpec, VideoNeedleTask, frame_order


class HaystackCodes:
    """VQGAN codes of the haystack pool and of each needle image, each encoded once.

    `encode_fn`: uint8 `[B, r, r, 3]` -> codes `[B, h, w]` (e.g. `make_encode_fn(vqgan)`), always
    called with `batch_size` frames (the last batch padded) so one compile serves everything. The
    pool is read on first use, so a finished eval resumes without touching the videos.
    """

    def __init__(
        self,
        encode_fn: Callable[[np.ndarray], np.ndarray],
        spec: VideoNeedleSpec,
        *,
        resolution: int,
        eof_id: int,
        eov_id: int,
        batch_size: int = 16,
        allow_short: bool = False,
    ):
        if batch_size < 1:
            raise LwmError(f"encode batch must be >= 1, got {batch_size}")
        self.encode_fn = encode_fn
        self.spec = spec
        self.resolution = resolution
        self.eof_id, self.eov_id = eof_id, eov_id
        self.batch_size = batch_size
        self.allow_short = allow_short  # truncated haystack videos: warn, not fail
        self._pool: np.ndarray | None = None
        self._needles: dict[str, np.ndarray] = {}
        self.sources: list[tuple[str, int]] = []
        """(file, frames taken) of each clip read into the pool."""

    @property
    def pool(self) -> np.ndarray:
        """int32 `[P, h*w]` codes of the haystack frames, in source order."""
        if self._pool is None:
            self._pool = self._read_pool()
        return self._pool

    def _read_pool(self) -> np.ndarray:
        from lwm.video.tokenize import expand_inputs, tokenize_video

        spec = self.spec
        chunks: list[np.ndarray] = []
        total = 0
        for path in expand_inputs(spec.haystack):
            video = tokenize_video(
                self.encode_fn,
                path,
                resolution=self.resolution,
                frames=spec.clip_frames,
                fps=spec.fps if spec.fps is not None or spec.clip_frames else 1.0,
                batch_size=self.batch_size,
                eof_id=self.eof_id,
                eov_id=self.eov_id,
                allow_short=self.allow_short,
            )
            codes = video.tokens.reshape(video.n_frames, -1)[:, :-1]  # drop the separators
            if spec.max_frames is not None:
                codes = codes[: spec.max_frames - total]
            chunks.append(codes)
            self.sources.append((str(path), len(codes)))
            total += len(codes)
            if spec.max_frames is not None and total >= spec.max_frames:
                break
        return np.concatenate(chunks, axis=0)

    def needle_codes(self, needle: Needle) -> np.ndarray:
        """int32 `[h*w]` codes of a needle image (encoded on first use)."""
        if needle.label not in self._needles:
            batch = np.zeros((self.batch_size, *needle.image.shape), np.uint8)
            batch[0] = needle.image
            codes = np.asarray(self.encode_fn(batch))[0]
            self._needles[needle.label] = codes.reshape(-1).astype(np.int32)
        return self._needles[needle.label]

    def video_codes(self, task: VideoNeedleTask) -> np.ndarray:
        """int32 `[frames, h*w]` codes of the sample's assembled video."""
        order = frame_order(task, self.spec.needle_frames, len(self.pool))
        codes = self.pool[np.maximum(order, 0)]
        codes[order < 0] = self.needle_codes(task.needle)
        return codes


def check_haystack(spec: VideoNeedleSpec) -> list[pathlib.Path]:
    """The haystack's files, each opened once so a missing or unreadable video fails early
    (with the video reader's error) rather than after the model is loaded."""
    from lwm.video.reader import probe
    from lwm.video.tokenize import expand_inputs

    files = expand_inputs(spec.haystack)
    for path in files:
        probe(path)
    return files
