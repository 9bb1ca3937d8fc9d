"""Augmented training haystacks for the video demo: each training clip again, mirrored and/or
zoomed, so the training questions show the model more distinct haystack frames than the few
hundred the clips' training split holds.

Why: with only the training split's frames as haystack, the tiny model fits its training
questions perfectly (loss ~0.001) while missing the needle on held-out frames, answering one
default colour (measured: every miss of a 32-64 frame eval answered "red"): it had learned
those frames, not what a needle frame looks like. Each augmentation is applied to a whole clip
(the same transform on every frame), so a haystack, a run of consecutive pool frames, is still a
coherent video. Only training frames are transformed: the eval haystack stays the held-out
split, untouched.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Callable, Sequence

import numpy as np

from lwm.errors import LwmError


def _zoom(frame: np.ndarray) -> np.ndarray:
    """The centre 3/4 of the frame scaled back to full size (bilinear)."""
    from PIL import Image

    r = frame.shape[0]
    m = r // 8
    crop = Image.fromarray(frame[m : r - m, m : r - m])
    return np.asarray(crop.resize((r, r), Image.BILINEAR))


AUGMENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mirror": lambda f: np.ascontiguousarray(f[:, ::-1]),
    "zoom": _zoom,
    "zoom_mirror": lambda f: np.ascontiguousarray(_zoom(f)[:, ::-1]),
}


def check_augmentations(names: Sequence[str]) -> list[str]:
    """`demo.haystack_augment` as a list, or a one-line error naming the unknown entry."""
    names = list(names)
    for n in names:
        if n not in AUGMENTATIONS:
            raise LwmError(
                f"demo.haystack_augment: unknown augmentation {n!r} "
                f"(choose from {', '.join(AUGMENTATIONS)})"
            )
    if len(set(names)) != len(names):
        raise LwmError(f"demo.haystack_augment: {names} repeats an augmentation")
    return names


def write_augmented_haystack(
    src: pathlib.Path, out: pathlib.Path, augmentations: Sequence[str]
) -> int:
    """PNG frames of `src` (sorted: clip then time) into `out`: the originals, then each
    augmentation's copy of all of them, named so sorted order keeps that grouping. Written to a
    temporary folder and renamed, so a partial folder is never taken for a finished one.
    Returns the number of frames written."""
    from PIL import Image

    names = check_augmentations(augmentations)
    frames = sorted(src.glob("*.png"))
    if not frames:
        raise LwmError(f"no training frames in {src}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    count = 0
    for gi, name in enumerate(["original", *names]):
        fn = AUGMENTATIONS.get(name)
        for f in frames:
            with Image.open(f) as im:
                img = np.asarray(im.convert("RGB"))
            if fn is not None:
                img = fn(img)
            Image.fromarray(img).save(tmp / f"{gi}_{name}_{f.name}")
            count += 1
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return count
