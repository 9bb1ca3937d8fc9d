"""Training material of the video demo beyond the clips' training split: the needle images for
the VQGAN (`needle_images`), and augmented training haystacks (`write_augmented_haystack`): each
training clip again, mirrored, zoomed, corner-cropped or hue-turned, so the training questions
show the model more distinct haystack frames than the few hundred the clips' training split holds.

Why the haystacks: with only the training split's frames as haystack, the tiny model fits its
training questions (loss ~0.001) while missing the needle on held-out frames, answering one
default colour (measured, seed 0: every miss at 32-64 frames answered "red"; 75% / 65% at 32 /
64 frames, 90% / 75% with mirror, zoom and both; seed 3 with those three 75% / 45%, with the
two corner crops and two hue turns added (and 400 stage-2 steps) 85% / 75%). Each augmentation
is applied to a whole clip (the same transform on every frame), so a haystack, a run of
consecutive pool frames, is still a coherent video. Only training frames are transformed: the
eval haystack stays the held-out split, untouched.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Callable, Sequence

import numpy as np

from lwm.errors import LwmError


def _crop(frame: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """The `size` square at (y0, x0) scaled back to the frame's size (bilinear)."""
    from PIL import Image

    r = frame.shape[0]
    crop = Image.fromarray(frame[y0 : y0 + size, x0 : x0 + size])
    return np.asarray(crop.resize((r, r), Image.BILINEAR))


def _zoom(frame: np.ndarray) -> np.ndarray:
    """The centre 3/4 of the frame scaled back to full size."""
    r = frame.shape[0]
    return _crop(frame, r // 8, r // 8, r - 2 * (r // 8))


def _corner(frame: np.ndarray, top: bool, left: bool) -> np.ndarray:
    """One corner's 3/4 of the frame scaled back to full size."""
    r = frame.shape[0]
    c = r - r // 4
    return _crop(frame, 0 if top else r - c, 0 if left else r - c, c)


def _hue(frame: np.ndarray, degrees: int) -> np.ndarray:
    """The frame with every pixel's hue turned by `degrees` (saturation and value kept). Why:
    the clips' colours are few (grass, sky, skin), so a model that saw only them learns to
    ignore those colours rather than to read the needle frame; turned hues put every colour in
    a haystack frame, which the model must learn is not the needle."""
    from PIL import Image

    hsv = np.asarray(Image.fromarray(frame).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(256 * degrees / 360)) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


AUGMENTATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mirror": lambda f: np.ascontiguousarray(f[:, ::-1]),
    "zoom": _zoom,
    "zoom_mirror": lambda f: np.ascontiguousarray(_zoom(f)[:, ::-1]),
    "crop_tl": lambda f: _corner(f, top=True, left=True),
    "crop_br": lambda f: _corner(f, top=False, left=False),
    "hue120": lambda f: _hue(f, 120),
    "hue240": lambda f: _hue(f, 240),
}


def needle_images(kind: str, resolution: int, fraction: float, num_frames: int) -> np.ndarray:
    """uint8 `[K, r, r, 3]`: every needle image of `kind`, repeated so they are `fraction` of a
    VQGAN training bank of `num_frames` clip frames plus these. Why: a VQGAN that never saw a
    needle image quantizes it with the codes of the clips, and distinct needles share codes
    (measured on the demo's VQGAN: the red and blue squares differed in 1 code of 16),
    so no language model can name the needle from them. The language model's training questions
    already show every needle image (each kind has one image per choice), so the VQGAN seeing
    them adds no eval information: the eval's haystack frames stay held out."""
    from lwm.evals.needle_images import make_needle, num_choices

    check_needle_fraction(fraction)
    n = num_choices(kind)
    copies = int(round(fraction * num_frames / (1.0 - fraction) / n))
    if copies == 0:
        return np.zeros((0, resolution, resolution, 3), np.uint8)
    images = np.stack([make_needle(kind, c, resolution).image for c in range(n)])
    return np.repeat(images, copies, axis=0)


def check_needle_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise LwmError(f"demo.vqgan_needle_fraction must be in [0, 1), got {fraction}")


def check_material(d) -> None:
    """The `demo` section's material fields, checked before any work (one-line errors)."""
    check_augmentations(d.haystack_augment)
    check_needle_fraction(d.vqgan_needle_fraction)


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
