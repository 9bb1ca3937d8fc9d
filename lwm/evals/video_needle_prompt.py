"""Video needle prompts: LWM's video QA template around a sample's codes, and the token counts
that decide which lengths fit a checkpoint.

The prompt is `<s>{system} USER: <vision>[video]</vision>\\n{question} ASSISTANT:`
(`lwm.inference.prompts`); a length's token count is frames x (codes per frame + 1 separator)
plus the text, and must fit the checkpoint's `max_sequence_length` (else an error, or the length
is skipped with `skip_too_long`).

With `drop_static` (`--drop-static THRESH`, `lwm.video.static_drop`) the assembled video, needle
included, goes through the static-frame rule before the prompt is built: the rule sees only codes,
so the needle stays in the prompt only if it differs enough from the frame kept before it, and a
sample whose needle was dropped is asked the question all the same (and can only guess).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from lwm.errors import LwmError
from lwm.evals.needle import Job, grid_jobs
from lwm.evals.video_haystack import HaystackCodes
from lwm.evals.video_needle_task import VideoNeedleSpec, VideoNeedleTask, make_task
from lwm.inference.prompts import DEFAULT_TEMPLATE, Template, question_suffix, video_prefix


@dataclasses.dataclass
class VideoPrompt:
    """A sample's prompt: tokens with the video's vision mask."""

    tokens: list[int]
    vision_mask: list[bool]
    needle_token_offset: int
    """Index in `tokens` of the needle's first code (-1: the static-frame rule dropped it)."""
    vision_tokens: int
    kept_frames: int
    """Frames of the video in the prompt (fewer than the sample's with `drop_static`)."""


class VideoNeedleEval:
    """Builds the samples and prompts of a spec for one tokenizer, template and VQGAN geometry."""

    def __init__(
        self,
        spec: VideoNeedleSpec,
        tokenizer,
        *,
        resolution: int,
        tokens_per_frame: int,
        template: Template = DEFAULT_TEMPLATE,
        drop_static: float | None = None,
    ):
        from lwm.video.static_drop import check_threshold

        self.drop_static = None if drop_static is None else check_threshold(drop_static)
        """Static-frame threshold applied to each sample's video (None: every frame)."""
        self.spec = spec
        self.tokenizer = tokenizer
        self.resolution = resolution
        self.tokens_per_frame = tokens_per_frame
        self.template = template
        self._text_tokens = len(video_prefix(tokenizer, template, [])[0])
        self._head_tokens = video_prefix(tokenizer, template, [0])[1].index(True)

    def task(self, job: Job) -> VideoNeedleTask:
        return make_task(self.spec, job, self.resolution)

    def prompt_tokens(self, task: VideoNeedleTask) -> int:
        """Tokens of the sample's whole prompt (video, template text and question); with
        `drop_static` an upper bound (every frame kept)."""
        suffix = question_suffix(self.tokenizer, self.template, task.question)
        vision = task.n_frames * (self.tokens_per_frame + 1)
        return self._text_tokens + vision + len(suffix)

    def tokens_per_length(
        self, lengths: Sequence[int], depths: Sequence[float], samples: int
    ) -> dict[int, int]:
        """The longest prompt (tokens) of each length over the grid's samples."""
        out: dict[int, int] = {}
        for job in grid_jobs(lengths, depths, samples):
            n = self.prompt_tokens(self.task(job))
            out[job.length] = max(out.get(job.length, 0), n)
        return out

    def check_lengths(
        self,
        lengths: Sequence[int],
        depths: Sequence[float],
        samples: int,
        max_len: int,
        *,
        skip_too_long: bool,
        warn: Callable[[str], None],
    ) -> list[int]:
        """Lengths (frames) whose prompts fit `max_len` tokens; longer ones are an error, or
        skipped with a warning."""
        short = [n for n in lengths if n <= self.spec.needle_frames]
        if short:
            raise LwmError(
                f"length {short[0]} frames leaves no haystack around {self.spec.needle_frames} "
                "needle frames"
            )
        tokens = self.tokens_per_length(lengths, depths, samples)
        kept = []
        for n in lengths:
            if tokens[n] <= max_len:
                kept.append(n)
                continue
            msg = (
                f"length {n} frames makes prompts of {tokens[n]} tokens, beyond the checkpoint's "
                f"max_sequence_length {max_len}"
            )
            if not skip_too_long:
                raise LwmError(f"{msg} (drop it, or pass --skip-too-long)")
            warn(f"skipping {msg}")
        if not kept:
            raise LwmError(f"no length fits the checkpoint's max_sequence_length {max_len}")
        return kept

    def prompt(self, task: VideoNeedleTask, codes: HaystackCodes) -> VideoPrompt:
        """The sample's prompt tokens and vision mask, assembled from cached codes."""
        from lwm.video.static_drop import drop_static
        from lwm.video.tokenize import layout_tokens

        video = codes.video_codes(task)
        needle_at = task.needle_frame
        if self.drop_static is not None:
            kept = drop_static(video, self.drop_static).kept
            video = video[kept]
            hit = np.flatnonzero(kept == task.needle_frame)
            needle_at = int(hit[0]) if len(hit) else -1
        vision = layout_tokens(video, codes.eof_id, codes.eov_id).tolist()
        tokens, mask = video_prefix(self.tokenizer, self.template, vision)
        suffix = question_suffix(self.tokenizer, self.template, task.question)
        offset = (
            -1 if needle_at < 0 else self._head_tokens + needle_at * (self.tokens_per_frame + 1)
        )
        return VideoPrompt(
            tokens + suffix, mask + [False] * len(suffix), offset, len(vision), len(video)
        )
