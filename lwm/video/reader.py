"""Streaming frame reader (PyAV): decodes one frame at a time, never the whole video.

Selection (at most one of `frames` / `fps`, optionally within `[start, end)` seconds):
- `frames=N`: N frames evenly spaced over the whole duration (or the range), the first and the
  last frame included, as LWM does; each target time takes the nearest decoded frame (a frame may
  repeat when N exceeds the frames available).
- `fps=F`: targets start, start + 1/F, ...; each takes the nearest frame, never the same one
  twice (so F above the native rate yields every frame once).
- neither: every frame in the range.
Sparse targets (further apart than `SEEK_GAP_S`) are reached by seeking to the keyframe before
them instead of decoding everything in between, so sampling 16 frames of an hour-long video
decodes a few GOPs, not the hour.

Frames are resized so the short side is `size` and then center-cropped to `size` x `size`
(`size=None` keeps the native size). Grayscale and odd-sized videos are converted to RGB /
resized like any other. Images (png, jpg, ...) are one-frame videos at t = 0.

Timestamps are seconds from the start of the video stream (the stream's start offset removed).
Bad files raise `LwmError` naming the file. A truncated but readable file (its frames stop well
before the duration its header claims for the requested span) is an error naming the file and
the counts, unless `allow_short` (the CLI's `--allow-short`): then a one-line warning, and the
targets past the end take the last decoded frame.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Iterator

import av
import numpy as np

from lwm.errors import LwmError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset(
    {
        ".mp4",
        ".mkv",
        ".webm",
        ".avi",
        ".mov",
        ".m4v",
        ".mpg",
        ".mpeg",
        ".gif",
        ".ts",
        ".flv",
        ".wmv",
    }
)
SEEK_GAP_S = 4.0
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float
    """Average frame rate (1.0 for images)."""
    duration: float
    """Seconds (0.0 for images)."""
    num_frames: int
    """Frame count from the container header; 0 when unknown."""


def is_image(path: str | pathlib.Path) -> bool:
    return pathlib.Path(path).suffix.lower() in IMAGE_SUFFIXES


def check_media_file(path: str | pathlib.Path) -> None:
    """One-line errors for a path that is not a file: missing, or a directory (one clip or image
    is read, never a folder of them)."""
    p = pathlib.Path(path)
    if p.is_dir():
        raise LwmError(
            f"{path}: is a directory; expected one video or image file "
            f"(e.g. .mp4, .webm, .jpg, .png)"
        )
    if not p.is_file():
        raise LwmError(f"{path}: no such file")


def _open(path: str) -> av.container.InputContainer:
    check_media_file(path)
    try:
        container = av.open(path, mode="r")
    except (av.FFmpegError, UnicodeDecodeError, OSError) as e:
        raise LwmError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise LwmError(f"{path}: contains no video stream")
    return container


def _stream_times(stream) -> tuple[float, float, float]:
    """(start offset s, duration s, average fps) of a video stream."""
    tb = stream.time_base
    t0 = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    # ffmpeg's guess beats the average for streams without timing (raw h264 reports 25).
    rate = stream.guessed_rate or stream.average_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if stream.duration is not None and tb:
        duration = float(stream.duration * tb)
    elif stream.container.duration is not None:
        duration = stream.container.duration / av.time_base
    elif stream.frames and fps:
        duration = stream.frames / fps
    else:
        duration = math.inf
    return t0, duration, fps


def probe(path: str | pathlib.Path) -> VideoInfo:
    """Size, rate, duration and frame count without decoding."""
    path = str(path)
    if is_image(path):
        frame = _read_image(path)
        return VideoInfo(path, frame.shape[1], frame.shape[0], 1.0, 0.0, 1)
    with _open(path) as container:
        stream = container.streams.video[0]
        _, duration, fps = _stream_times(stream)
        return VideoInfo(
            path,
            stream.codec_context.width,
            stream.codec_context.height,
            fps,
            duration,
            int(stream.frames or 0),
        )


def resize_crop(frame: np.ndarray | av.VideoFrame, size: int | None) -> np.ndarray:
    """Short side -> `size` (area interpolation), then a center `size` x `size` crop; RGB uint8."""
    if isinstance(frame, np.ndarray):
        frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
    if size is None:
        return frame.to_ndarray(format="rgb24")
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    interp = "AREA" if scale < 1 else "BICUBIC"
    rgb = frame.reformat(width=nw, height=nh, format="rgb24", interpolation=interp).to_ndarray()
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])


def _read_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    check_media_file(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise LwmError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def read_frames(
    path: str | pathlib.Path,
    *,
    frames: int | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    size: int | None = 256,
    allow_short: bool = False,
) -> Iterator[tuple[float, np.ndarray]]:
    """Yields (timestamp_seconds, uint8 [size, size, 3]) for the selected frames, streaming.

    Arguments are validated and the file is opened before the first frame is requested, so a
    bad file or selection fails at the call. A truncated file fails when the iteration reaches
    its end, unless `allow_short` (the CLI's `--allow-short`, passed down by each command).
    """
    path = str(path)
    if frames is not None and fps is not None:
        raise LwmError("choose at most one of frames=N and fps=F")
    if frames is not None and frames < 1:
        raise LwmError(f"frames must be >= 1, got {frames}")
    if fps is not None and not fps > 0:
        raise LwmError(f"fps must be > 0, got {fps}")
    if size is not None and size < 1:
        raise LwmError(f"size must be >= 1, got {size}")
    s = 0.0 if start is None else float(start)
    if s < 0:
        raise LwmError(f"start must be >= 0, got {start}")
    if end is not None and end <= s:
        raise LwmError(f"end ({end}) must be after start ({s})")
    if is_image(path):
        image = _read_image(path)
        if s > 0:
            raise LwmError(f"{path}: an image has a single frame at t=0; start={s} selects none")
        return iter([(0.0, resize_crop(image, size))])
    container = _open(path)
    stream = container.streams.video[0]
    t0, duration, rate = _stream_times(stream)
    if math.isfinite(duration) and s >= duration:
        container.close()
        raise LwmError(f"{path}: start {s}s is beyond the end of the video ({duration:.3f}s)")
    if frames is not None and not (math.isfinite(duration) and duration > 0):
        duration = _scan_duration(path, rate, t0)
    e = duration if end is None else min(float(end), duration)
    return _select(container, stream, path, t0, rate, s, e, frames, fps, size, allow_short)


def _scan_duration(path: str, rate: float, t0: float) -> float:
    """Duration of a stream whose header lacks it, from its packets (demuxed, not decoded)."""
    n, last = 0, None
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            tb = stream.time_base
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                n += 1
                if packet.pts is not None and tb:
                    end = float((packet.pts + (packet.duration or 0)) * tb) - t0
                    last = end if last is None else max(last, end)
    except av.FFmpegError as e:
        raise LwmError(f"{path}: corrupt video data ({type(e).__name__}: {e})") from None
    if last is not None and last > 0:
        return last
    return n / rate if rate else float(n)


def _targets(s: float, e: float, rate: float, frames: int | None, fps: float | None):
    """Target times (an iterator, so an hour at a high rate costs no memory)."""
    if frames is not None:
        step = 1.0 / rate if rate else 0.0
        last = s if not math.isfinite(e) else max(s, e - step)
        return iter(np.linspace(s, last, frames).tolist())
    if fps is not None:

        def gen():
            i = 0
            while (t := s + i / fps) < e - _EPS:
                yield t
                i += 1

        return gen()
    return None


def _check_short(path, s, e, rate, last_ts, allow_short) -> None:
    """The stream ended at `last_ts`: more than a frame and a half before the span's end `e` is a
    truncated file (the header claims frames that do not decode)."""
    if not (rate and math.isfinite(e)) or last_ts >= e - 1.5 / rate:
        return
    claimed = max(1, round((e - s) * rate))
    got = max(0, round((max(last_ts, s - 1 / rate) - s) * rate) + 1)
    what = (
        f"{path}: truncated video: {got} of the {claimed} frames its header claims for "
        f"[{s:g}, {e:g})s decode (the last at {last_ts:.2f}s)"
    )
    if not allow_short:
        raise LwmError(f"{what}; pass --allow-short to use the frames that decode")
    import sys

    print(f"lwm: warning: {what}; using them (--allow-short)", file=sys.stderr)


def _select(container, stream, path, t0, rate, s, e, frames, fps, size, allow_short=False):
    """The decode loop: nearest frame per target, seeking over long gaps."""
    stream.thread_type = "AUTO"
    targets = _targets(s, e, rate, frames, fps)
    target = next(targets, None) if targets is not None else None
    tb = stream.time_base
    emitted = 0
    last_emitted_idx = -1
    prev = None  # (index, ts, av.VideoFrame) of the last in-range frame decoded
    last_ts = -math.inf
    index = 0

    def in_range(ts):
        return s - _EPS <= ts < e - _EPS

    try:
        while True:
            seek_to = None
            for frame in container.decode(stream):
                if frame.pts is not None and tb:
                    ts = float(frame.pts * tb) - t0
                else:
                    ts = index / rate if rate else float(index)
                if ts <= last_ts + _EPS and last_ts > -math.inf:
                    continue  # re-decoded after a backward seek
                last_ts = ts
                index += 1
                if ts >= e - _EPS:
                    break
                if targets is None:
                    if in_range(ts):
                        emitted += 1
                        yield ts, resize_crop(frame, size)
                    continue
                cur = (index, ts, frame)
                while target is not None and ts >= target - _EPS:
                    if prev is not None and abs(prev[1] - target) <= abs(ts - target):
                        pick = prev
                    else:
                        pick = cur
                    if in_range(pick[1]) and (frames is not None or pick[0] != last_emitted_idx):
                        last_emitted_idx = pick[0]
                        emitted += 1
                        yield pick[1], resize_crop(pick[2], size)
                    target = next(targets, None)
                if target is None:
                    break
                prev = cur if in_range(ts) else prev
                if target - ts > SEEK_GAP_S:
                    seek_to = target
                    break
            else:
                _check_short(path, s, e, rate, last_ts, allow_short)  # stream exhausted
                break
            if seek_to is None:
                break
            # Jump to the keyframe before the next target; frames already seen are skipped.
            try:
                container.seek(int((seek_to + t0) / tb), stream=stream, backward=True)
            except av.FFmpegError:
                pass  # not seekable: keep decoding sequentially from here
        # Targets past the last decoded frame (e.g. the end of a range) take the last frame.
        if targets is not None and target is not None and prev is not None:
            while target is not None:
                if frames is not None or prev[0] != last_emitted_idx:
                    last_emitted_idx = prev[0]
                    emitted += 1
                    yield prev[1], resize_crop(prev[2], size)
                target = next(targets, None)
    except av.FFmpegError as err:
        raise LwmError(f"{path}: corrupt video data ({type(err).__name__}: {err})") from None
    finally:
        container.close()
    if emitted == 0:
        raise LwmError(f"{path}: no frames decoded in [{s}, {e})s (empty or unreadable video)")
