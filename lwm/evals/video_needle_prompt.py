"""Video needle prompts: LWM's video QA template around a sample's codes, and the token counts
that decide which lengths fit a checkpoint.

The prompt is `<s>{system} USER: <vision>[video]</vision>\\n{question} ASSISTANT:`
(`lwm.inference.prompts`); a length's token count is frames x (codes per frame + 1 separator)
plus the text, and must fit the checkpoint's `max_sequence_length` (else an error, or the length
is skipped with `skip_too_long`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

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
    """Index in `tokens` of the needle's first code."""
    vision_tokens: int


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
    ):
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
        """Tokens of the sample's whole prompt (video, template text and question)."""
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
        from lwm.video.tokenize import layout_tokens

        vision = layout_tokens(codes.video_codes(task), codes.eof_id, codes.eov_id).tolist()
        tokens, mask = video_prefix(self.tokenizer, self.template, vision)
        suffix = question_suffix(self.tokenizer, self.template, task.question)
        offset = self._head_tokens + task.needle_frame * (self.tokens_per_frame + 1)
        return VideoPrompt(tokens + suffix, mask + [False] * len(suffix), offset, len(vision))
