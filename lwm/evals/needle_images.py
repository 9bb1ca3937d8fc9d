"""Synthetic needle images for the video needle eval, drawn with numpy (no fonts, no files).

Two kinds, each with a small closed answer set so a greedy reply can be scored by word match:
- `colour`: a big solid square of one of `COLOURS` centred on a black frame;
- `digit`: one digit 0-9 from a built-in 5x7 bitmap font, white on dark blue, scaled up to fill
  most of the frame (nearest neighbour, so edges stay crisp at any resolution >= 8).
An image depends only on (kind, choice, resolution): the same needle always encodes to the same
VQGAN codes, which is what lets the eval encode each needle once.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from lwm.errors import LwmError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 225, 30),
    "purple": (140, 40, 190),
    "orange": (250, 140, 20),
    "pink": (250, 120, 200),
    "white": (245, 245, 245),
}

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# 5x7 glyphs, '#' = ink.
_GLYPHS = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": (".###.", "#....", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "....#", ".###."),
}

NEEDLE_KINDS = ("colour", "digit")


@dataclasses.dataclass(frozen=True)
class Needle:
    """One needle image and how it is asked about and scored."""

    kind: str
    label: str
    """Canonical answer: a colour name or a digit."""
    accepted: tuple[str, ...]
    """Answer words that count as correct (a digit also accepts its English name)."""
    image: np.ndarray
    """uint8 `[resolution, resolution, 3]`."""
    noun: str
    """How the caption and question name it: `the red square`, `the number 7`."""


def num_choices(kind: str) -> int:
    """Size of the closed answer set of a needle kind."""
    _check_kind(kind)
    return len(COLOURS) if kind == "colour" else len(_GLYPHS)


def _check_kind(kind: str) -> None:
    if kind not in NEEDLE_KINDS:
        raise LwmError(f"needle kind {kind!r}: expected one of {', '.join(NEEDLE_KINDS)}")


def make_needle(kind: str, choice: int, resolution: int) -> Needle:
    """Needle `choice` (in `[0, num_choices(kind))`) drawn at `resolution` x `resolution`."""
    n = num_choices(kind)
    if not 0 <= choice < n:
        raise LwmError(f"needle choice {choice} outside [0, {n})")
    if resolution < 8:
        raise LwmError(f"needle images need a resolution >= 8, got {resolution}")
    if kind == "colour":
        name = list(COLOURS)[choice]
        image = np.zeros((resolution, resolution, 3), np.uint8)
        side = max(2, (resolution * 5) // 8)
        lo = (resolution - side) // 2
        image[lo : lo + side, lo : lo + side] = COLOURS[name]
        return Needle(kind, name, (name,), image, f"the {name} square")
    digit = str(choice)
    image = _digit_image(digit, resolution)
    return Needle(kind, digit, (digit, DIGIT_WORDS[choice]), image, f"the number {digit}")


def _digit_image(digit: str, resolution: int) -> np.ndarray:
    ink = np.array([[c == "#" for c in row] for row in _GLYPHS[digit]])  # [7, 5]
    scale = max(1, (resolution * 3 // 4) // ink.shape[0])
    big = np.kron(ink, np.ones((scale, scale), bool))
    image = np.empty((resolution, resolution, 3), np.uint8)
    image[:] = (20, 30, 110)
    top, left = (resolution - big.shape[0]) // 2, (resolution - big.shape[1]) // 2
    region = image[top : top + big.shape[0], left : left + big.shape[1]]
    region[big] = (255, 255, 255)
    return image


def answer_matches(text: str, accepted: tuple[str, ...]) -> bool:
    """Whether any accepted answer appears in `text` as a whole word (case-insensitive)."""
    text = text.lower()
    return any(re.search(rf"(?<![a-z0-9]){re.escape(a)}(?![a-z0-9])", text) for a in accepted)
