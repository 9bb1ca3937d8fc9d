"""LWM's frame pick for `--frames N`: frame *indices* `linspace(0, n - 1, N)` truncated to ints
(all n frames when n <= N), as LWM's `vision_chat.py` does with decord.

The default reader (`lwm.video.reader`, `frames=N`) picks the nearest frame to N evenly spaced
*times* and repeats frames when N exceeds the video's; that rounds where LWM truncates, so a few
picks differ by one frame. This module decodes sequentially (one frame in memory at a time) and
keeps exactly LWM's indices; it stops after the last picked frame.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np

from lwm.errors import LwmError


def lwm_frame_indices(num_frames: int, max_frames: int) -> list[int]:
    """LWM's indices: every frame when there are at most `max_frames`, else an int linspace."""
    if max_frames < 1:
        raise LwmError(f"frames must be >= 1, got {max_frames}")
    if num_frames <= max_frames:
        return list(range(num_frames))
    return np.linspace(0, num_frames - 1, max_frames, dtype=int).tolist()


def count_frames(path: str | pathlib.Path) -> int:
    """Number of video frames: the header's count, else counted from demuxed packets."""
    import av

    from lwm.video.reader import is_image, probe

    if is_image(path):
        return 1
    info = probe(path)
    if info.num_frames > 0:
        return info.num_frames
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return sum(1 for p in container.demux(stream) if p.size)
    except av.FFmpegError as e:
        raise LwmError(f"{path}: corrupt video data ({type(e).__name__}: {e})") from None


def read_lwm_frames(
    path: str | pathlib.Path, max_frames: int, *, size: int | None = 256
) -> Iterator[tuple[float, np.ndarray]]:
    """Yields (timestamp_seconds, uint8 [size, size, 3]) at LWM's indices, streaming."""
    import av

    from lwm.video.reader import is_image, read_frames, resize_crop

    if is_image(path):
        yield from read_frames(path, size=size)
        return
    wanted = lwm_frame_indices(count_frames(path), max_frames)
    if not wanted:
        raise LwmError(f"{path}: contains no frames")
    keep, last = set(wanted), wanted[-1]
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            tb, t0 = stream.time_base, stream.start_time or 0
            for index, frame in enumerate(container.decode(stream)):
                if index in keep:
                    ts = float((frame.pts - t0) * tb) if frame.pts is not None and tb else 0.0
                    yield ts, resize_crop(frame, size)
                if index >= last:
                    return
    except av.FFmpegError as e:
        raise LwmError(f"{path}: corrupt video data ({type(e).__name__}: {e})") from None
    raise LwmError(f"{path}: decoded fewer frames than its header's count (need index {last})")
