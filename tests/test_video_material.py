"""The video demo's extra training material: the needle images in the VQGAN's bank, and the
augmented training haystack (every training frame, then each augmentation of all of them, in an
order that keeps each clip a coherent video)."""

import numpy as np
import pytest
from PIL import Image

from lwm.demo.video_material import (
    AUGMENTATIONS,
    check_augmentations,
    needle_images,
    write_augmented_haystack,
)
from lwm.errors import LwmError
from lwm.evals.needle_images import make_needle


def _frames(tmp_path, n=5, r=16):
    src = tmp_path / "train"
    src.mkdir()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, r, r, 3), dtype=np.uint8)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(src / f"00_clip_{i:05d}.png")
    return src, frames


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_augmented_haystack_order_and_content(tmp_path):
    src, frames = _frames(tmp_path)
    out = tmp_path / "hay"
    assert write_augmented_haystack(src, out, ["mirror", "zoom"]) == 15
    files = sorted(out.glob("*.png"))
    assert [f.name.split("_")[1] for f in files] == ["original"] * 5 + ["mirror"] * 5 + ["zoom"] * 5
    got = np.stack([_read(f) for f in files])
    np.testing.assert_array_equal(got[:5], frames)  # originals first, in time order
    np.testing.assert_array_equal(got[5:10], frames[:, :, ::-1])
    # Zoom: the centre 3/4 scaled up; its middle pixels come from the frame's middle.
    assert got[10:].shape == frames.shape and not np.array_equal(got[10:], frames)
    flat = np.full((16, 16, 3), 77, np.uint8)
    assert np.array_equal(AUGMENTATIONS["zoom"](flat), flat)
    assert not (tmp_path / "hay.tmp").exists()
    # Written again (a rerun of the data phase): replaced, not appended to.
    assert write_augmented_haystack(src, out, ["mirror"]) == 10
    assert len(list(out.glob("*.png"))) == 10


def test_corner_crops_and_hue_turns():
    r = 16
    # Corner crops: a frame whose top-left 12x12 is one colour and the rest another; the
    # top-left crop is all the first colour, the bottom-right crop's corner is the second.
    f = np.zeros((r, r, 3), np.uint8)
    f[:12, :12] = (200, 10, 10)
    tl, br = AUGMENTATIONS["crop_tl"](f), AUGMENTATIONS["crop_br"](f)
    assert tl.shape == br.shape == f.shape
    assert (tl == (200, 10, 10)).all()
    np.testing.assert_array_equal(br[-1, -1], (0, 0, 0))
    np.testing.assert_array_equal(br[0, 0], (200, 10, 10))
    # Hue turns: pure red -> green (120) -> blue (240); grey has no hue and stays put.
    red = np.zeros((r, r, 3), np.uint8)
    red[...] = (220, 30, 30)
    g, b = AUGMENTATIONS["hue120"](red), AUGMENTATIONS["hue240"](red)
    assert g[0, 0].argmax() == 1 and b[0, 0].argmax() == 2
    assert abs(int(g[0, 0, 1]) - 220) <= 3 and abs(int(b[0, 0, 2]) - 220) <= 3
    grey = np.full((r, r, 3), 120, np.uint8)
    np.testing.assert_array_equal(AUGMENTATIONS["hue120"](grey), grey)
    # A turn keeps each pixel's brightness order (V = max channel) on a random frame.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (r, r, 3), dtype=np.uint8)
    y = AUGMENTATIONS["hue240"](x)
    assert np.abs(x.max(-1).astype(int) - y.max(-1).astype(int)).max() <= 2


def test_augmentation_names_are_checked(tmp_path):
    assert check_augmentations(("mirror", "zoom_mirror")) == ["mirror", "zoom_mirror"]
    with pytest.raises(LwmError, match="unknown augmentation 'rotate'"):
        check_augmentations(["rotate"])
    with pytest.raises(LwmError, match="repeats an augmentation"):
        check_augmentations(["zoom", "zoom"])
    with pytest.raises(LwmError, match="no training frames"):
        write_augmented_haystack(tmp_path, tmp_path / "out", ["zoom"])


def test_vqgan_bank_needle_images():
    imgs = needle_images("colour", 16, 0.1, 467)
    # 8 colours x 6 copies: 48 / (467 + 48) ~ 9.3% of the bank.
    assert imgs.shape == (48, 16, 16, 3) and imgs.dtype == np.uint8
    for c in range(8):
        want = make_needle("colour", c, 16).image
        assert sum(np.array_equal(x, want) for x in imgs) == 6
    assert needle_images("digit", 16, 0.2, 400).shape[0] == 100  # 10 digits x 10
    assert needle_images("colour", 16, 0.0, 467).shape == (0, 16, 16, 3)
    with pytest.raises(LwmError, match="vqgan_needle_fraction must be in"):
        needle_images("colour", 16, 1.0, 467)
