"""Writing frames to mp4 (H.264) with PyAV, streaming and atomic (temp file, then rename)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np

from lwm.errors import LwmError
from lwm.io import atomic_path


def write_video(
    path: str | pathlib.Path,
    frames: Iterable[np.ndarray],
    *,
    fps: float = 4.0,
    crf: int = 18,
    preset: str = "medium",
    overwrite: bool = False,
) -> int:
    """Encodes uint8 [H, W, 3] frames (all the same size) to `path`; returns the frame count.

    Odd sizes are padded by one edge pixel (yuv420p needs even sizes). An existing `path` is
    refused unless `overwrite`; a failed write leaves no partial file behind.
    """
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise LwmError(f"{path}: already exists (pass --overwrite to replace it)")
    if not fps > 0:
        raise LwmError(f"fps must be > 0, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    shape = None
    with (
        atomic_path(path, suffix=path.suffix) as tmp,
        av.open(str(tmp), mode="w", format="mp4") as container,
    ):
        stream = None
        for frame in frames:
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise LwmError(
                    f"{path}: frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}"
                )
            if shape is None:
                shape = frame.shape
                h, w = shape[0] + shape[0] % 2, shape[1] + shape[1] % 2
                rate = Fraction(fps).limit_denominator(1001)
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height = w, h
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": preset}
            elif frame.shape != shape:
                raise LwmError(f"{path}: frame {count} is {frame.shape}, expected {shape}")
            if shape[0] % 2 or shape[1] % 2:
                frame = np.pad(frame, ((0, shape[0] % 2), (0, shape[1] % 2), (0, 0)), "edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is None:
            raise LwmError(f"{path}: no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    return count
