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
- Static frames (`drop_static`, `--drop-static THRESH`): each sample's assembled video goes
  through `lwm.video.static_drop` before its prompt; records add `kept_frames` and `needle_kept`
  (the rule never knows where the needle is: a dropped needle is a likely miss, and counts).
- Results: `results.jsonl` (one record per sample, keyed by length/depth/sample, resumed on rerun,
  refused under a different spec), `heatmap.png` and `summary.json` as the text needle eval.

This module runs and scores the grid and writes the report; the samples are built in
`video_needle_task` (spec, placement, question), their codes in `video_haystack` (`HaystackCodes`)
and their prompts in `video_needle_prompt` (`VideoNeedleEval`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence

from lwm.errors import LwmError
from lwm.evals.needle import grid_jobs, padded_batches
from lwm.evals.needle_images import answer_matches
from lwm.evals.results import (
    RESULTS_FILE,
    grid_identity,
    holds_files,
    log_records,
    open_results_dir,
    undo_new_dir_on_error,
)
from lwm.evals.video_haystack import HaystackCodes, check_haystack
from lwm.evals.video_needle_prompt import VideoNeedleEval, VideoPrompt
from lwm.evals.video_needle_task import VideoNeedleSpec, VideoNeedleTask
from lwm.inference.answer_text import answer_text
from lwm.inference.prompts import DEFAULT_TEMPLATE, Template, describe_template
from lwm.io import write_json

VideoAnswerFn = Callable[..., list[list[int]]]
"""`(prompts, max_new_tokens, vision_masks=masks) -> generated ids per prompt` (greedy)."""


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
        "template": describe_template(ev.template),
        "tokenizer": str(getattr(ev.tokenizer, "path", "")),
        "resolution": ev.resolution,
        "tokens_per_frame": ev.tokens_per_frame,
        "max_new_tokens": max_new_tokens,
        "grid": grid_identity(lengths, depths, samples),
        # only when set, so result directories of runs without it still resume
        **({} if ev.drop_static is None else {"drop_static": ev.drop_static}),
    }
    existed = holds_files(out)
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
    text = answer_text(ev.tokenizer, ids, ev.tokenizer.eos_ids).strip()
    correct = answer_matches(text, task.accepted)
    job = task.job
    dropped = {}
    if ev.drop_static is not None:
        dropped = {
            "kept_frames": prompt.kept_frames,
            "needle_kept": prompt.needle_token_offset >= 0,
        }
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
        **dropped,
    }


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
    template: Template = DEFAULT_TEMPLATE,
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
    strict: bool = False,
    allow_short: bool = False,
    drop_static: float | None = None,
    kv_dtype: str | None = None,
) -> str:
    """Runs (or resumes) the eval of a checkpoint; writes heatmap.png and summary.json to
    `out_dir` and returns the text table. Every input is checked before the model is loaded
    (loaded lazily, so a finished eval goes straight to the report). `strict`: the checkpoint's
    newest step must be readable (`--strict`); `allow_short`: accept truncated haystack videos
    (`--allow-short`); `drop_static`: THRESH of the static-frame rule applied to each sample's
    video (`--drop-static`); `kv_dtype`: the KV cache's storage (`--kv-dtype`; None: the
    checkpoint's)."""
    from lwm.evals.model_runner import existing_checkpoint, load_eval_model
    from lwm.evals.run import lazy_answerer
    from lwm.inference.video_qa import check_vision_model
    from lwm.models.io import read_model_config
    from lwm.video.static_drop import check_threshold
    from lwm.video.vqgan import make_encode_fn
    from lwm.video.vqgan_checkpoint import load_vqgan

    if drop_static is not None:
        check_threshold(drop_static)  # before anything is read
    overrides = None
    if kv_dtype is not None:
        from lwm.cache.quant import check_kv_dtype

        overrides = {"kv_dtype": check_kv_dtype(kv_dtype)}
    cfg = read_model_config(existing_checkpoint(checkpoint), strict=strict)
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
        drop_static=drop_static,
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
        allow_short=allow_short,
    )
    answer = lazy_answerer(
        lambda: load_eval_model(
            checkpoint, mesh_spec=mesh_spec, strict=strict, overrides=overrides
        ),
        eos_id=tokenizer.eos_ids,
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
            **({} if kv_dtype is None else {"kv_dtype": kv_dtype}),
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
