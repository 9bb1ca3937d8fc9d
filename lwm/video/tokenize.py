"""Video -> vision tokens: frames are VQGAN-encoded in batches and laid out frame-major.

Token layout (the contract with `lwm data build` and inference): for each frame its h*w codes in
row-major order, then the end-of-frame code (`vision_eof_id`, LWM: 8192); the last frame ends with
the end-of-video code (`vision_eov_id`, LWM: 8193) instead. A 16-frame LWM video is therefore
16 * 257 tokens. Codes lie in [0, codebook_size) and the codebook must stay below both ids.

jsonl output: one record per input, written and flushed as soon as that input is done:
    {"vision": [...], "source": "<input path>", "n_frames": F, "tokens_per_frame": h*w,
     "timestamps": [seconds of each frame], ...caption fields...}
With `--drop-static THRESH` (`lwm.video.static_drop`) a record holds only the kept frames: its
`vision`, `n_frames` and `timestamps` describe those (so `len(vision) == n_frames *
(tokens_per_frame + 1)` still holds), and it adds `"dropped_timestamps": [seconds of each dropped
frame]` and `"drop_static": THRESH`, so an answer about time maps back to the original video.

Caption sidecars (all optional, merged in this order, later wins):
- `<video stem>.txt` beside the video: its stripped text becomes the field `caption`;
- `<video stem>.json` beside the video: a JSON object whose fields are copied into the record;
- a `--captions FILE.jsonl` with one object per video carrying a `video` key (the input's file
  name or its path as given) and any other fields, copied into the record.
Sidecar fields may not replace the record's own fields (vision, source, n_frames, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import sys
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from lwm.errors import LwmError
from lwm.io import atomic_path
from lwm.video.reader import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_frames
from lwm.video.static_drop import check_threshold
from lwm.video.static_drop import drop_static as apply_static_drop

RESERVED_FIELDS = frozenset(
    {
        "vision",
        "source",
        "n_frames",
        "tokens_per_frame",
        "timestamps",
        "dropped_timestamps",
        "drop_static",
    }
)


@dataclasses.dataclass
class TokenizedVideo:
    tokens: np.ndarray
    """int32 [n_frames * (h*w + 1)]: codes with end-of-frame / end-of-video separators."""
    timestamps: list[float]
    """Seconds of each encoded (and kept) frame."""
    tokens_per_frame: int
    """h*w codes per frame (without the separator)."""
    dropped_timestamps: list[float] = dataclasses.field(default_factory=list)
    """Seconds of each frame `drop_static` dropped (empty without it)."""
    drop_static: float | None = None
    """The `--drop-static` threshold applied, or None."""

    @property
    def n_frames(self) -> int:
        return len(self.timestamps)


def layout_tokens(codes_fhw: np.ndarray, eof_id: int, eov_id: int) -> np.ndarray:
    """[F, h, w] codes -> flat int32 tokens with separators (eov after the last frame)."""
    codes = np.asarray(codes_fhw, np.int32).reshape(len(codes_fhw), -1)
    sep = np.full((len(codes), 1), eof_id, np.int32)
    sep[-1, 0] = eov_id
    return np.concatenate([codes, sep], axis=1).reshape(-1)


def split_frames(tokens: Sequence[int], eof_id: int, eov_id: int) -> list[np.ndarray]:
    """Inverse of `layout_tokens`: the code arrays of each frame (checks the separators)."""
    tokens = np.asarray(tokens)
    ends = np.flatnonzero((tokens == eof_id) | (tokens == eov_id))
    if len(ends) == 0 or ends[-1] != len(tokens) - 1 or tokens[-1] != eov_id:
        raise LwmError("vision tokens must end with the end-of-video code")
    if np.any(tokens[ends[:-1]] != eof_id):
        raise LwmError("end-of-video code before the last frame")
    frames = np.split(tokens, ends + 1)[:-1]
    return [f[:-1] for f in frames]


def check_vocab(codebook_size: int, eof_id: int, eov_id: int) -> None:
    if eof_id == eov_id or min(eof_id, eov_id) < codebook_size:
        raise LwmError(
            f"end-of-frame/end-of-video ids ({eof_id}, {eov_id}) must be distinct and not "
            f"collide with the {codebook_size} VQ codes"
        )


def tokenize_video(
    encode_fn: Callable[[np.ndarray], np.ndarray],
    path: str | pathlib.Path,
    *,
    resolution: int,
    frames: int | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    batch_size: int = 16,
    eof_id: int = 8192,
    eov_id: int = 8193,
    progress: Callable[[int], None] | None = None,
    lwm_pick: bool = False,
    allow_short: bool = False,
    drop_static: float | None = None,
) -> TokenizedVideo:
    """Streams the selected frames of `path` through `encode_fn` (uint8 [B, r, r, 3] -> codes
    [B, h, w], e.g. `make_encode_fn(vqgan)`) in fixed-size batches (the last one padded, so one
    compile serves every video). Memory: one batch of frames plus 4 bytes per output token.
    `lwm_pick`: `frames=N` takes LWM's frame indices (`lwm.video.frame_pick`). `allow_short`:
    a truncated video is a warning, not an error (`--allow-short`, see `read_frames`).
    `drop_static`: THRESH of `lwm.video.static_drop.drop_static`; only the kept frames' codes
    and timestamps are returned, the dropped frames' timestamps in `dropped_timestamps`.
    """
    if drop_static is not None:
        drop_static = check_threshold(drop_static)
    if batch_size < 1:
        raise LwmError(f"batch_size must be >= 1, got {batch_size}")
    if lwm_pick and frames is not None:
        if start is not None or end is not None:
            raise LwmError("LWM's frame pick (--frames with --template lwm) takes no start/end")
        from lwm.video.frame_pick import read_lwm_frames

        stream = read_lwm_frames(path, frames, size=resolution)
    else:
        stream = read_frames(
            path,
            frames=frames,
            fps=fps,
            start=start,
            end=end,
            size=resolution,
            allow_short=allow_short,
        )
    chunks: list[np.ndarray] = []
    timestamps: list[float] = []
    pending = None  # (device result, n valid): encode of batch k overlaps decoding of batch k+1

    def flush(p):
        if p is not None:
            chunks.append(np.asarray(p[0])[: p[1]])

    batch = np.zeros((batch_size, resolution, resolution, 3), np.uint8)
    n = 0
    for ts, frame in stream:
        batch[n] = frame
        timestamps.append(ts)
        n += 1
        if n == batch_size:
            result = encode_fn(batch)
            flush(pending)
            pending = (result, n)
            batch = np.zeros_like(batch)
            n = 0
            if progress:
                progress(batch_size)
    if n:
        result = encode_fn(batch)
        flush(pending)
        pending = (result, n)
        if progress:
            progress(n)
    flush(pending)
    codes = np.concatenate(chunks, axis=0)
    if drop_static is None:
        return TokenizedVideo(layout_tokens(codes, eof_id, eov_id), timestamps, codes[0].size)
    rule = apply_static_drop(codes, drop_static)
    return TokenizedVideo(
        layout_tokens(codes[rule.kept], eof_id, eov_id),
        [timestamps[i] for i in rule.kept],
        codes[0].size,
        dropped_timestamps=[timestamps[i] for i in rule.dropped],
        drop_static=drop_static,
    )


def video_to_tokens(vqgan, path: str | pathlib.Path, **kw) -> list[int]:
    """The vision token list (with separators) of a video or image, for prompts. `kw` as
    `tokenize_video` (frames / fps / start / end / batch_size / eof_id / eov_id / drop_static)."""
    from lwm.video.vqgan import make_encode_fn

    check_vocab(vqgan.cfg.codebook_size, kw.get("eof_id", 8192), kw.get("eov_id", 8193))
    encode_fn = make_encode_fn(vqgan)
    return tokenize_video(encode_fn, path, resolution=vqgan.cfg.resolution, **kw).tokens.tolist()


def expand_inputs(inputs: Iterable[str | pathlib.Path]) -> list[pathlib.Path]:
    """Files as given; directories scanned recursively for videos and images (sorted)."""
    out: list[pathlib.Path] = []
    suffixes = VIDEO_SUFFIXES | IMAGE_SUFFIXES
    for item in inputs:
        p = pathlib.Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not found:
                raise LwmError(f"{p}: directory contains no videos or images")
            out.extend(found)
        else:
            out.append(p)  # existence is checked when read, so --skip-bad can report it
    return out


def load_captions_file(path: str | pathlib.Path) -> dict[str, dict]:
    """`--captions` jsonl: {"video": name-or-path, ...fields} per line -> {video: fields}."""
    table: dict[str, dict] = {}
    try:
        lines = pathlib.Path(path).read_text().splitlines()
    except OSError as e:
        raise LwmError(f"{path}: cannot read captions file ({e})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise LwmError(f"{path}:{i}: invalid JSON ({e})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("video"), str):
            raise LwmError(f"{path}:{i}: expected an object with a string 'video' field")
        key = rec.pop("video")
        _check_fields(rec, f"{path}:{i}")
        table[key] = rec
    return table


def _check_fields(fields: dict, where: str) -> None:
    clash = RESERVED_FIELDS & set(fields)
    if clash:
        raise LwmError(f"{where}: caption fields may not be named {sorted(clash)}")


def sidecar_fields(video: pathlib.Path, captions: dict[str, dict] | None = None) -> dict:
    """Caption fields for `video` from its .txt / .json sidecars and the captions table."""
    fields: dict = {}
    txt, js = video.with_suffix(".txt"), video.with_suffix(".json")
    if txt.is_file() and txt != video:
        fields["caption"] = txt.read_text().strip()
    if js.is_file() and js != video:
        try:
            obj = json.loads(js.read_text())
        except json.JSONDecodeError as e:
            raise LwmError(f"{js}: invalid JSON sidecar ({e})") from None
        if not isinstance(obj, dict):
            raise LwmError(f"{js}: sidecar must hold a JSON object")
        _check_fields(obj, str(js))
        fields.update(obj)
    if captions:
        fields.update(captions.get(str(video), captions.get(video.name, {})))
    return fields


def _done_sources(out: pathlib.Path) -> set[str]:
    """Sources already in `out`; a torn last line (crash mid-write) is cut off."""
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(out, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    done = set()
    for line in data.decode().splitlines():
        if line.strip():
            done.add(json.loads(line)["source"])
    return done


def _drop_fields(tv: TokenizedVideo) -> dict:
    if tv.drop_static is None:
        return {}
    return {
        "dropped_timestamps": [round(t, 4) for t in tv.dropped_timestamps],
        "drop_static": tv.drop_static,
    }


@dataclasses.dataclass
class TokenizeReport:
    written: list[str]
    skipped_bad: list[tuple[str, str]]
    already_done: list[str]


@contextlib.contextmanager
def _remove_if_empty(path: pathlib.Path, fresh: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if fresh and path.is_file() and path.stat().st_size == 0:
            path.unlink()
        raise


def tokenize_files(
    encode_fn: Callable[[np.ndarray], np.ndarray],
    inputs: Sequence[str | pathlib.Path],
    out: str | pathlib.Path,
    *,
    resolution: int,
    codebook_size: int,
    skip_bad: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    captions: dict[str, dict] | None = None,
    show_progress: bool = True,
    **select,
) -> TokenizeReport:
    """Tokenizes each input into one jsonl record of `out`. An existing `out` is refused unless
    `resume` (inputs already in it are skipped, the rest appended) or `overwrite`. A bad input
    raises `LwmError`, or with `skip_bad` is reported on stderr and skipped."""
    from tqdm import tqdm

    eof_id, eov_id = select.get("eof_id", 8192), select.get("eov_id", 8193)
    check_vocab(codebook_size, eof_id, eov_id)
    if select.get("drop_static") is not None:
        check_threshold(select["drop_static"])  # before `out` is touched
    out = pathlib.Path(out)
    files = expand_inputs(inputs)
    if not files:
        raise LwmError("no inputs given")
    done: set[str] = set()
    appending = out.exists() and resume
    if appending:
        done = _done_sources(out)
    elif out.exists() and not overwrite:
        raise LwmError(f"{out}: already exists (use --resume to continue it or --overwrite)")
    report = TokenizeReport([], [], [])
    # A replacing file is written aside and moved into place when every input is done (an error
    # leaves the old one intact); a new file keeps the records written before an error (rerun
    # with --resume) but is removed if it got none (an empty file would block the rerun).
    fresh = not out.exists()
    target = atomic_path(out) if out.exists() and not appending else _remove_if_empty(out, fresh)
    with (
        target as dest,
        open(dest, "a") as f,
        tqdm(total=len(files), unit="video", disable=not show_progress, file=sys.stderr) as bar,
    ):
        for path in files:
            bar.set_postfix_str(path.name[-40:])
            if str(path) in done:
                report.already_done.append(str(path))
                bar.update(1)
                continue
            try:
                fields = sidecar_fields(path, captions)
                with tqdm(
                    total=select.get("frames"),
                    unit="frame",
                    leave=False,
                    position=1,
                    disable=not show_progress,
                    file=sys.stderr,
                ) as fbar:
                    tv = tokenize_video(
                        encode_fn, path, resolution=resolution, progress=fbar.update, **select
                    )
            except LwmError as e:
                if not skip_bad:
                    raise
                report.skipped_bad.append((str(path), str(e)))
                bar.write(f"skipping bad input: {e}", file=sys.stderr)
                bar.update(1)
                continue
            record = {
                "vision": tv.tokens.tolist(),
                "source": str(path),
                "n_frames": tv.n_frames,
                "tokens_per_frame": tv.tokens_per_frame,
                "timestamps": [round(t, 4) for t in tv.timestamps],
                **_drop_fields(tv),
                **fields,
            }
            f.write(json.dumps(record) + "\n")
            f.flush()
            report.written.append(str(path))
            bar.update(1)
    return report
