"""Video needle-in-a-haystack eval (VideoNIAH-style): a grid of video lengths x needle depths.

Semantics:
- Haystack: frames of real clips (files, or directories scanned for videos/images, in sorted
  order), read with the streaming reader (`lwm.video.reader`) at `fps` frames per second or
  `clip_frames` evenly spaced frames per clip, concatenated into one pool (at most `max_frames`).
  The pool depends only on the spec, never on the grid, so adding lengths later keeps earlier
  samples valid. A video of length L (frames) takes L - N consecutive pool frames starting at a
  per-sample offset, looping over the pool when it is shorter.
- Needle: a synthetic image (`lwm.evals.needle_images`: a coloured square or a digit) chosen from
  a small closed set by the sample seed, inserted as N = `needle_frames` consecutive frames at
  frame index k = round(depth * (L - N)): depth 0 puts it first, depth 1 last.
- Prompt: LWM's video QA template (`lwm.inference.prompts`): `<s>{system} USER: <vision>[video]
  </vision>\\n{question} ASSISTANT:`. The question asks about the needle ("What colour is the
  square ...?", "What number is shown ...?"); the reply (greedy) is correct when an accepted
  answer word appears in it as a whole word. Caption mode (`caption=True`): after the video, the
  question part first states what the needle and 3 distractors "stand for" ("The red square
  stands for the word 'tiger'."), then asks for the word of the needle shown in the video, so the
  model must link the image to text placed elsewhere in the prompt.
- Cost: the VQGAN encodes frames independently, so each pool frame and each needle image is
  encoded once (`HaystackCodes`) and every sample's vision tokens are assembled from those codes
  (exactly the tokens of encoding the assembled video). Samples are answered in fixed-size batches
  (one prefill + decode per batch, vision masks marking the video).
- A cell's length is in frames; its token count (frames x (codes per frame + 1 separator) + the
  text) is recorded per sample (`prompt_tokens`) and must fit the checkpoint's
  `max_sequence_length` (else an error, or the length is skipped with `skip_too_long`).
- Results: `results.jsonl` (one record per sample, keyed by length/depth/sample, resumed on rerun,
  refused under a different spec), `heatmap.png` and `summary.json` as the text needle eval.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from lwm.errors import LwmError
from lwm.evals.needle import Job, grid_jobs, padded_batches, sample_seed
from lwm.evals.needle_images import (
    NEEDLE_KINDS,
    Needle,
    answer_matches,
    make_needle,
    num_choices,
)
from lwm.evals.results import (
    RESULTS_FILE,
    grid_identity,
    log_records,
    open_results_dir,
    undo_new_dir_on_error,
)
from lwm.inference.prompts import DEFAULT_TEMPLATE, PromptTemplate, question_suffix, video_prefix
from lwm.io import write_json

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

VideoAnswerFn = Callable[..., list[list[int]]]
"""`(prompts, max_new_tokens, vision_masks=masks) -> generated ids per prompt` (greedy)."""


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


class HaystackCodes:
    """VQGAN codes of the haystack pool and of each needle image, each encoded once.

    `encode_fn`: uint8 `[B, r, r, 3]` -> codes `[B, h, w]` (e.g. `make_encode_fn(vqgan)`), always
    called with `batch_size` frames (the last batch padded) so one compile serves everything. The
    pool is read on first use, so a finished eval resumes without touching the videos.
    """

    def __init__(
        self,
        encode_fn: Callable[[np.ndarray], np.ndarray],
        spec: VideoNeedleSpec,
        *,
        resolution: int,
        eof_id: int,
        eov_id: int,
        batch_size: int = 16,
    ):
        if batch_size < 1:
            raise LwmError(f"encode batch must be >= 1, got {batch_size}")
        self.encode_fn = encode_fn
        self.spec = spec
        self.resolution = resolution
        self.eof_id, self.eov_id = eof_id, eov_id
        self.batch_size = batch_size
        self._pool: np.ndarray | None = None
        self._needles: dict[str, np.ndarray] = {}
        self.sources: list[tuple[str, int]] = []
        """(file, frames taken) of each clip read into the pool."""

    @property
    def pool(self) -> np.ndarray:
        """int32 `[P, h*w]` codes of the haystack frames, in source order."""
        if self._pool is None:
            self._pool = self._read_pool()
        return self._pool

    def _read_pool(self) -> np.ndarray:
        from lwm.video.tokenize import expand_inputs, tokenize_video

        spec = self.spec
        chunks: list[np.ndarray] = []
        total = 0
        for path in expand_inputs(spec.haystack):
            video = tokenize_video(
                self.encode_fn,
                path,
                resolution=self.resolution,
                frames=spec.clip_frames,
                fps=spec.fps if spec.fps is not None or spec.clip_frames else 1.0,
                batch_size=self.batch_size,
                eof_id=self.eof_id,
                eov_id=self.eov_id,
            )
            codes = video.tokens.reshape(video.n_frames, -1)[:, :-1]  # drop the separators
            if spec.max_frames is not None:
                codes = codes[: spec.max_frames - total]
            chunks.append(codes)
            self.sources.append((str(path), len(codes)))
            total += len(codes)
            if spec.max_frames is not None and total >= spec.max_frames:
                break
        return np.concatenate(chunks, axis=0)

    def needle_codes(self, needle: Needle) -> np.ndarray:
        """int32 `[h*w]` codes of a needle image (encoded on first use)."""
        if needle.label not in self._needles:
            batch = np.zeros((self.batch_size, *needle.image.shape), np.uint8)
            batch[0] = needle.image
            codes = np.asarray(self.encode_fn(batch))[0]
            self._needles[needle.label] = codes.reshape(-1).astype(np.int32)
        return self._needles[needle.label]

    def video_codes(self, task: VideoNeedleTask) -> np.ndarray:
        """int32 `[frames, h*w]` codes of the sample's assembled video."""
        order = frame_order(task, self.spec.needle_frames, len(self.pool))
        codes = self.pool[np.maximum(order, 0)]
        codes[order < 0] = self.needle_codes(task.needle)
        return codes


@dataclasses.dataclass
class VideoPrompt:
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
        template: PromptTemplate = DEFAULT_TEMPLATE,
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


def run_video_needle_eval(
    answer: VideoAnswerFn,
    ev: VideoNeedleEval,
    codes: HaystackCodes,
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    samples: int,
    out_dir: str | os.PathLike,
    batch_size: int = 4,
    max_new_tokens: int | None = None,
    identity: dict | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> list[dict]:
    """Answers every missing sample of the grid, appending to `out_dir/results.jsonl`; returns
    the records of this grid (earlier and new). `identity` (checkpoint, VQGAN) is stored with the
    spec so a later run into the same directory resumes only the same eval."""
    out = pathlib.Path(out_dir)
    ident = {
        **(identity or {}),
        "eval": "video_needle",
        "spec": {
            **dataclasses.asdict(ev.spec),
            "haystack": [str(pathlib.Path(h).resolve()) for h in ev.spec.haystack],
        },
        "template": dataclasses.asdict(ev.template),
        "tokenizer": str(getattr(ev.tokenizer, "path", "")),
        "resolution": ev.resolution,
        "tokens_per_frame": ev.tokens_per_frame,
        "max_new_tokens": max_new_tokens,
        "grid": grid_identity(lengths, depths, samples),
    }
    existed = out.exists()
    done = open_results_dir(out, ident, what="video needle", overwrite=overwrite)
    jobs = grid_jobs(lengths, depths, samples)
    results_path = out / RESULTS_FILE
    todo = [j for j in jobs if j.key not in done]
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="video needle")
    with undo_new_dir_on_error(out, existed), open(results_path, "a", encoding="utf-8") as f:
        for batch, n_real in padded_batches(todo, batch_size):
            tasks = [ev.task(j) for j in batch[:n_real]]
            prompts = [ev.prompt(t, codes) for t in tasks]
            budget = max_new_tokens or 8 + max(
                len(ev.tokenizer.encode(a)) for t in tasks for a in t.accepted
            )
            fill = [prompts[0]] * (len(batch) - n_real)
            outputs = answer(
                [p.tokens for p in prompts + fill],
                budget,
                vision_masks=[p.vision_mask for p in prompts + fill],
            )
            if len(outputs) != len(batch):
                raise LwmError(f"answerer returned {len(outputs)} answers for {len(batch)} prompts")
            recs = [_record(ev, t, p, ids) for t, p, ids in zip(tasks, prompts, outputs)]
            log_records(f, done, recs, jobs, bar)
    if bar is not None:
        bar.close()
    return [done[j.key] for j in jobs]


def _record(
    ev: VideoNeedleEval, task: VideoNeedleTask, prompt: VideoPrompt, ids: Sequence[int]
) -> dict:
    eos = ev.tokenizer.eos_id
    text = ev.tokenizer.decode([int(t) for t in ids if int(t) != eos]).strip()
    correct = answer_matches(text, task.accepted)
    job = task.job
    return {
        "length": job.length,
        "depth": round(job.depth, 6),
        "sample": job.sample,
        "seed": task.seed,
        "frames": task.n_frames,
        "needle_frame": task.needle_frame,
        "needle_frames": ev.spec.needle_frames,
        "needle": task.needle.label,
        "needle_token_offset": prompt.needle_token_offset,
        "vision_tokens": prompt.vision_tokens,
        "prompt_tokens": len(prompt.tokens),
        "question": task.question,
        "expected": task.expected,
        "answer": text,
        "score": float(correct),
        "correct": correct,
    }


def check_haystack(spec: VideoNeedleSpec) -> list[pathlib.Path]:
    """The haystack's files, each opened once so a missing or unreadable video fails early
    (with the video reader's error) rather than after the model is loaded."""
    from lwm.video.reader import probe
    from lwm.video.tokenize import expand_inputs

    files = expand_inputs(spec.haystack)
    for path in files:
        probe(path)
    return files


def evaluate_video_needles(
    checkpoint: str,
    vqgan_checkpoint: str,
    tokenizer,
    spec: VideoNeedleSpec,
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    samples: int,
    out_dir: str | os.PathLike,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    batch_size: int = 4,
    encode_batch: int = 16,
    max_new_tokens: int | None = None,
    mesh_spec: str | None = None,
    prefill_chunk: int = 512,
    skip_too_long: bool = False,
    warn: Callable[[str], None] = print,
    title: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> str:
    """Runs (or resumes) the eval of a checkpoint; writes heatmap.png and summary.json to
    `out_dir` and returns the text table. Every input is checked before the model is loaded
    (loaded lazily, so a finished eval goes straight to the report)."""
    from lwm.evals.model_runner import existing_checkpoint, load_eval_model
    from lwm.evals.run import lazy_answerer
    from lwm.inference.video_qa import check_vision_model
    from lwm.models.io import read_model_config
    from lwm.video.vqgan import make_encode_fn
    from lwm.video.vqgan_checkpoint import load_vqgan

    cfg = read_model_config(existing_checkpoint(checkpoint))
    check_vision_model(cfg, 0, where=str(checkpoint))
    check_haystack(spec)
    vqgan = load_vqgan(vqgan_checkpoint)
    check_vision_model(cfg, vqgan.cfg.codebook_size, where=str(checkpoint))
    ev = VideoNeedleEval(
        spec,
        tokenizer,
        resolution=vqgan.cfg.resolution,
        tokens_per_frame=vqgan.cfg.tokens_per_frame,
        template=template,
    )
    lengths = ev.check_lengths(
        lengths, depths, samples, cfg.max_sequence_length, skip_too_long=skip_too_long, warn=warn
    )
    codes = HaystackCodes(
        make_encode_fn(vqgan),
        spec,
        resolution=vqgan.cfg.resolution,
        eof_id=cfg.vision_eof_id,
        eov_id=cfg.vision_eov_id,
        batch_size=encode_batch,
    )
    answer = lazy_answerer(
        lambda: load_eval_model(checkpoint, mesh_spec=mesh_spec),
        eos_id=tokenizer.eos_id,
        prefill_chunk=prefill_chunk,
    )
    records = run_video_needle_eval(
        answer,
        ev,
        codes,
        lengths=lengths,
        depths=depths,
        samples=samples,
        out_dir=out_dir,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        identity={
            "checkpoint": str(pathlib.Path(checkpoint).resolve()),
            "vqgan": str(pathlib.Path(vqgan_checkpoint).resolve()),
        },
        progress=progress,
        overwrite=overwrite,
    )
    return write_report(records, lengths, depths, out_dir, spec, title=title)


def write_report(
    records: Sequence[dict],
    lengths: Sequence[int],
    depths: Sequence[float],
    out_dir: str | os.PathLike,
    spec: VideoNeedleSpec,
    *,
    title: str | None = None,
) -> str:
    """heatmap.png (depth x length in frames, token counts under each length) and summary.json
    (the accuracy grid plus tokens per length); returns the text table."""
    from lwm.evals.report import format_table, plot_heatmap, summarize

    summary = summarize(records, lengths, depths)
    tokens = {int(n): 0 for n in lengths}
    for r in records:
        if int(r["length"]) in tokens:
            tokens[int(r["length"])] = max(tokens[int(r["length"])], int(r["prompt_tokens"]))
    variant = f"{spec.needle} needle x {spec.needle_frames} frame" + (
        "s" if spec.needle_frames > 1 else ""
    )
    if spec.caption:
        variant += ", caption"
    out = pathlib.Path(out_dir)
    plot_heatmap(
        summary,
        out / "heatmap.png",
        title=title or f"Video needle ({variant})",
        xlabel="video length (frames; prompt tokens)",
        length_labels=[f"{n}\n{_short(tokens[n])}" for n in summary.lengths],
    )
    data = {**summary.to_dict(), "prompt_tokens_per_length": {str(k): v for k, v in tokens.items()}}
    write_json(out / "summary.json", data)
    table = format_table(summary, title=f"video needle accuracy ({variant}; length in frames)")
    per_len = ", ".join(f"{n} frames = {tokens[n]:,}" for n in summary.lengths)
    return f"{table}\nprompt tokens: {per_len}"


def _short(tokens: int) -> str:
    return f"{tokens / 1024:.1f}K tok" if tokens >= 10_240 else f"{tokens} tok"
