"""The samples of a video needle grid: the spec, where the needle goes, which needle, and what is
asked (`lwm.evals.video_needle` runs them).

A video of length L (frames) takes L - N consecutive haystack pool frames starting at a per-sample
offset, looping over the pool when it is shorter; the needle (`lwm.evals.needle_images`: a coloured
square or a digit, chosen by the sample seed) fills N = `needle_frames` consecutive frames at frame
index k = round(depth * (L - N)): depth 0 puts it first, depth 1 last. In caption mode the question
first states what the needle and 3 distractors "stand for", then asks for the needle's word.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lwm.errors import LwmError
from lwm.evals.needle import Job, sample_seed
from lwm.evals.needle_images import NEEDLE_KINDS, Needle, make_needle, num_choices

CAPTION_WORDS = (
    "apple",
    "river",
    "candle",
    "tiger",
    "violin",
    "marble",
    "rocket",
    "forest",
    "lemon",
    "anchor",
)
CAPTION_DISTRACTORS = 3
QUESTIONS = {
    "colour": "What colour is the square that appears in the video? Answer with one word.",
    "digit": "What number is shown in the video? Answer with one number.",
}
CAPTION_QUESTIONS = {
    "colour": "Which word does the square shown in the video stand for?",
    "digit": "Which word does the number shown in the video stand for?",
}


@dataclasses.dataclass(frozen=True)
class VideoNeedleSpec:
    """What a task is made of; results are only resumed under the same spec."""

    haystack: tuple[str, ...]
    """Video/image files and directories (scanned recursively) whose frames form the haystack."""
    fps: float | None = None
    """Frames per second read from each clip (None: 1 unless `clip_frames` is given; a rate above
    the clip's own reads every frame once)."""
    clip_frames: int | None = None
    """Frames evenly spaced over each clip, instead of `fps`."""
    max_frames: int | None = None
    """Stop reading clips once the pool holds this many frames (None: every clip once)."""
    needle: str = "colour"
    """Needle kind: `colour` (a coloured square) or `digit` (a digit 0-9)."""
    needle_frames: int = 1
    """Consecutive frames showing the needle."""
    caption: bool = False
    """Caption mode: ask for the word the needle stands for, stated in text after the video."""
    seed: int = 0
    """Base seed; each sample's seed derives from it, its length, depth and index."""

    def __post_init__(self):
        object.__setattr__(self, "haystack", tuple(str(h) for h in self.haystack))
        if not self.haystack:
            raise LwmError("the video haystack needs at least one video file or directory")
        if self.fps is not None and self.clip_frames is not None:
            raise LwmError("choose at most one of fps and clip_frames for the haystack clips")
        if self.max_frames is not None and self.max_frames < 1:
            raise LwmError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.needle not in NEEDLE_KINDS:
            raise LwmError(f"needle kind {self.needle!r}: expected one of {list(NEEDLE_KINDS)}")
        if self.needle_frames < 1:
            raise LwmError(f"needle frames must be >= 1, got {self.needle_frames}")


@dataclasses.dataclass(frozen=True)
class VideoNeedleTask:
    """One sample: where the needle goes, which needle, and what is asked."""

    job: Job
    seed: int
    needle: Needle
    needle_frame: int
    """Index of the first needle frame in the assembled video."""
    offset: int
    """Start of the sample's haystack in the pool (taken modulo the pool size)."""
    question: str
    expected: str
    accepted: tuple[str, ...]

    @property
    def n_frames(self) -> int:
        return self.job.length


def needle_frame_index(n_frames: int, needle_frames: int, depth: float) -> int:
    """First needle frame for `depth` in [0, 1]: the haystack position nearest the depth."""
    hay = n_frames - needle_frames
    if hay < 1:
        raise LwmError(
            f"a video of {n_frames} frames has no room for haystack around {needle_frames} "
            "needle frames (use longer lengths or fewer needle frames)"
        )
    return int(np.floor(depth * hay + 0.5))


def frame_order(task: VideoNeedleTask, needle_frames: int, pool_size: int) -> np.ndarray:
    """Per frame of the sample's video: its haystack pool index, or -1 for a needle frame."""
    hay = (task.offset + np.arange(task.n_frames - needle_frames)) % pool_size
    k = task.needle_frame
    return np.concatenate([hay[:k], np.full(needle_frames, -1), hay[k:]])


def make_task(spec: VideoNeedleSpec, job: Job, resolution: int) -> VideoNeedleTask:
    """The sample of `job`, fully determined by the spec's seed and the job."""
    seed = sample_seed(spec, job)
    rng = np.random.default_rng(seed)
    n = num_choices(spec.needle)
    choice = int(rng.integers(n))
    needle = make_needle(spec.needle, choice, resolution)
    offset = int(rng.integers(2**31))
    k = needle_frame_index(job.length, spec.needle_frames, job.depth)
    if not spec.caption:
        question, expected, accepted = QUESTIONS[spec.needle], needle.label, needle.accepted
    else:
        words = rng.permutation(CAPTION_WORDS)[:n].tolist()
        others = [c for c in range(n) if c != choice]
        shown = [choice, *rng.choice(others, min(CAPTION_DISTRACTORS, len(others)), False)]
        rng.shuffle(shown)
        captions = [
            f"{_capitalize(make_needle(spec.needle, int(c), 8).noun)} stands for the word "
            f"'{words[int(c)]}'."
            for c in shown
        ]
        expected = words[choice]
        question = " ".join(captions) + " " + CAPTION_QUESTIONS[spec.needle]
        accepted = (expected,)
    return VideoNeedleTask(job, seed, needle, k, offset, question, expected, tuple(accepted))


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]
