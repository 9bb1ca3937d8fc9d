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
    dropped_timestamps: list[float] = dataclasses.field(default_factory=list)
    """Seconds of the frames `--drop-static` dropped (empty without it)."""
    drop_static: float | None = None
    """The `--drop-static` threshold applied, or None."""

    def frame_record(self) -> dict:
        """Kept and dropped frames as positions in the selected frames and seconds."""
        kept = [(t, True) for t in self.timestamps]
        both = sorted(kept + [(t, False) for t in self.dropped_timestamps], key=lambda x: x[0])
        out = {"kept_indices": [i for i, (_, k) in enumerate(both) if k]}
        out["kept_timestamps"] = [round(t, 4) for t in self.timestamps]
        if self.drop_static is not None:
            out["drop_static"] = self.drop_static
            out["dropped_indices"] = [i for i, (_, k) in enumerate(both) if not k]
            out["dropped_timestamps"] = [round(t, 4) for t in self.dropped_timestamps]
        return out

    def summary(self) -> str:
        """`"9 frames, 585 vision tokens"` (with the frames --drop-static dropped)."""
        dropped = ""
        if self.drop_static is not None:
            dropped = (
                f" ({len(self.dropped_timestamps)} dropped by --drop-static {self.drop_static})"
            )
        return f"{self.n_frames} frames{dropped}, {self.vision_tokens} vision tokens"


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
    """Video question answering over one `Sampler`, tokenizer and VQGAN (None: questions about
    a saved prefix only, `context_from_prefix`; `load` then refuses)."""

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
        check_vision_model(cfg, 0 if vqgan is None else vqgan.cfg.codebook_size)
        raw_encode = encode_fn or (None if vqgan is None else make_encode_fn(vqgan))
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
        drop_static: float | None = None,
    ) -> VideoContext:
        """Encodes the video (once) and prefills the shared prefix. `drop_static`: frames whose
        VQ codes barely differ from the last kept frame's are dropped after encoding, before
        the prompt (`lwm.video.static_drop`); their timestamps stay in the context."""
        from lwm.video.tokenize import tokenize_video

        if self.vqgan is None:
            raise LwmError("VideoQA without a VQGAN answers only from a saved prefix")
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
            drop_static=drop_static,
        )
        self.encoded_videos += 1
        self.encoded_frames += video.n_frames
        vision = video.tokens.tolist()
        if self.template.layout == "lwm":
            tokens, _ = lwm_vision_chat_prompt(self.tokenizer, self.template, "", vision)
            self._check_length(path, video.n_frames, len(tokens))
            return VideoContext(
                str(path),
                None,
                video.n_frames,
                len(vision),
                video.timestamps,
                vision,
                reserve,
                video.dropped_timestamps,
                video.drop_static,
            )
        tokens, mask = video_prefix(self.tokenizer, self.template, vision)
        self._check_length(path, video.n_frames, len(tokens))
        prefix = self.sampler.prefill(tokens, vision_mask=mask, reserve=reserve)
        return VideoContext(
            str(path),
            prefix,
            video.n_frames,
            len(vision),
            video.timestamps,
            dropped_timestamps=video.dropped_timestamps,
            drop_static=video.drop_static,
        )

    def context_from_prefix(self, prefix: Prefix, manifest) -> VideoContext:
        """The context of a saved prefix (`lwm.inference.prefix_store`): the video is neither
        read nor encoded."""
        if self.template.layout == "lwm":
            raise LwmError("a saved prefix cannot be used with --template lwm (question first)")
        frames = manifest.frames
        return VideoContext(
            manifest.video["path"],
            prefix,
            len(frames["kept_timestamps"]),
            manifest.vision_tokens,
            list(frames["kept_timestamps"]),
            dropped_timestamps=list(frames.get("dropped_timestamps", [])),
            drop_static=frames.get("drop_static"),
        )

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
