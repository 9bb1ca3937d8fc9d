"""Questions about a video (or an image, a one-frame video): encode once, prefill once, answer many.

`VideoQA.load` streams the selected frames through the VQGAN in fixed-size batches
(`lwm.video.tokenize.tokenize_video`), builds the prefix `<s>{system} USER: <vision>…</vision>`
(with a model's chat template: its text up to the user message, then `<vision>…</vision>`; see
`lwm.inference.prompts`) and prefills it into a one-row KV cache. `VideoQA.ask` then only
prefills the question's few tokens on top of a copy of that cache and decodes the answer, so the
cost of the video is paid once however many questions follow (`encoded_videos`,
`encoded_frames` and the sampler's prefill counters record the work done). With LWM's
question-first layout (`template.layout == "lwm"`) the video is still encoded once, but each
question's whole prompt is prefilled (the prefix depends on the question).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import numpy as np

from lwm.errors import LwmError
from lwm.inference.answer_text import answer_text, until_stop
from lwm.inference.prompts import (
    DEFAULT_TEMPLATE,
    Template,
    lwm_vision_chat_prompt,
    question_suffix,
    video_prefix,
)
from lwm.inference.sampler import Prefix, Sampler
from lwm.inference.sampling import GREEDY, SamplingConfig


@dataclasses.dataclass
class VideoContext:
    """A video ready for questions."""

    path: str
    prefix: Prefix | None
    """The cached prompt prefix (None with LWM's question-first layout)."""
    n_frames: int
    vision_tokens: int
    timestamps: list[float]
    vision: list[int] | None = None
    """The video's vision tokens, kept for layouts that prefill them per question."""
    reserve: int = 1024
    """Cache slots reserved past a per-question prefill (the lwm layout)."""


def check_vision_model(config, codebook_size: int, where: str = "the checkpoint") -> None:
    """A clear error when the model cannot read this VQGAN's codes."""
    if not config.has_vision:
        raise LwmError(
            f"{where} has no vision parts (vision_vocab_size = 0): it cannot take a video or image"
        )
    top = min(config.vision_eof_id, config.vision_eov_id)
    if codebook_size > top or config.vision_vocab_size <= max(
        config.vision_eof_id, config.vision_eov_id
    ):
        raise LwmError(
            f"VQGAN codebook of {codebook_size} codes does not fit the model's vision vocabulary "
            f"({config.vision_vocab_size} ids, end-of-frame {config.vision_eof_id}, "
            f"end-of-video {config.vision_eov_id})"
        )


class VideoQA:
    """Video question answering over one `Sampler`, tokenizer and VQGAN."""

    def __init__(
        self,
        sampler: Sampler,
        tokenizer,
        vqgan,
        *,
        template: Template = DEFAULT_TEMPLATE,
        encode_batch: int = 16,
        allow_short: bool = False,
        encode_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        from lwm.video.vqgan import make_encode_fn

        self.sampler = sampler
        self.tokenizer = tokenizer
        self.vqgan = vqgan
        self.template = template
        self.encode_batch = encode_batch
        self.allow_short = allow_short  # a truncated video: warn and repeat its last frame
        cfg = sampler.config
        check_vision_model(cfg, vqgan.cfg.codebook_size)
        raw_encode = encode_fn or make_encode_fn(vqgan)
        self.encoded_videos = 0
        self.encoded_frames = 0
        self.encode_calls = 0

        def counted(frames):
            self.encode_calls += 1
            return raw_encode(frames)

        self._encode = counted

    def load(
        self,
        path: str | pathlib.Path,
        *,
        frames: int | None = None,
        fps: float | None = None,
        start: float | None = None,
        end: float | None = None,
        reserve: int = 1024,
    ) -> VideoContext:
        """Encodes the video (once) and prefills the shared prefix."""
        from lwm.video.tokenize import tokenize_video

        cfg = self.sampler.config
        video = tokenize_video(
            self._encode,
            path,
            resolution=self.vqgan.cfg.resolution,
            frames=frames,
            fps=fps,
            start=start,
            end=end,
            batch_size=self.encode_batch,
            eof_id=cfg.vision_eof_id,
            eov_id=cfg.vision_eov_id,
            lwm_pick=self.template.layout == "lwm",
            allow_short=self.allow_short,
        )
        self.encoded_videos += 1
        self.encoded_frames += video.n_frames
        vision = video.tokens.tolist()
        if self.template.layout == "lwm":
            tokens, _ = lwm_vision_chat_prompt(self.tokenizer, self.template, "", vision)
            self._check_length(path, video.n_frames, len(tokens))
            return VideoContext(
                str(path), None, video.n_frames, len(vision), video.timestamps, vision, reserve
            )
        tokens, mask = video_prefix(self.tokenizer, self.template, vision)
        self._check_length(path, video.n_frames, len(tokens))
        prefix = self.sampler.prefill(tokens, vision_mask=mask, reserve=reserve)
        return VideoContext(str(path), prefix, video.n_frames, len(vision), video.timestamps)

    def _check_length(self, path, n_frames: int, n_tokens: int) -> None:
        limit = self.sampler.config.max_sequence_length
        if n_tokens >= limit:
            raise LwmError(
                f"{path}: {n_frames} frames make a prompt of {n_tokens} tokens, longer "
                f"than the model's max_sequence_length {limit} "
                "(select fewer frames with --frames or --fps)"
            )

    def prompt_tokens(self, ctx: VideoContext, question: str) -> tuple[list[int], list[bool]]:
        """The whole prompt (tokens, vision mask) a question is answered from."""
        if self.template.layout == "lwm":
            return lwm_vision_chat_prompt(self.tokenizer, self.template, question, ctx.vision)
        raise LwmError("prompt_tokens is only for the lwm layout (the default caches a prefix)")

    def ask_tokens(
        self,
        ctx: VideoContext,
        question: str,
        *,
        max_new_tokens: int = 256,
        sampling: SamplingConfig = GREEDY,
        seed: int = 0,
        stream: Callable[[int, np.ndarray], None] | None = None,
    ) -> list[int]:
        """Answer tokens (EOS dropped) for one question, reusing the cached video prefix (with
        the lwm layout: prefilling the question, the video and the tail for this question)."""
        prefix = ctx.prefix
        if self.template.layout == "lwm":
            tokens, mask = self.prompt_tokens(ctx, question)
            self._check_length(ctx.path, ctx.n_frames, len(tokens))
            # All but the last token are prefilled; the last one starts the answer's decode.
            prefix = self.sampler.prefill(tokens[:-1], vision_mask=mask[:-1], reserve=ctx.reserve)
            suffix = tokens[-1:]
        else:
            suffix = question_suffix(self.tokenizer, self.template, question)
        eos = self.tokenizer.eos_ids
        out = self.sampler.generate_from(
            prefix,
            [suffix],
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            eos_id=eos,
            seed=seed,
            stream=stream,
        )[0]
        return until_stop(out, eos)

    def ask(self, ctx: VideoContext, question: str, **kw) -> str:
        """The decoded answer to one question (see `ask_tokens`)."""
        return answer_text(self.tokenizer, self.ask_tokens(ctx, question, **kw)).strip()
