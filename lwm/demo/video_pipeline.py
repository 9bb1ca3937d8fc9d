"""`lwm demo --video`: the vision-language half of the demo, under one work directory.

    WORKDIR/demo.json       the run's seed (lwm/demo/seed.py)
    WORKDIR/data/clips/     frames of the real clips (PNG), split per clip: train/ and eval/
    WORKDIR/data/vqgan/     a tiny VQGAN trained on the train/ frames
    WORKDIR/data/           corpus.txt, tokenizer.model, tasks.jsonl, dataset/
    WORKDIR/train/          the trainer's workdir (checkpoints per stage, metrics, loss curve)
    WORKDIR/results/        heatmap.png, loss_curve.png, summary.md / summary.json, eval records

Each clip's first `train_fraction` of frames (in time) feeds the VQGAN and the training
haystacks, the rest is the eval haystack, so the eval never shows the model a training frame.
Training examples are video needle questions built by the eval's own code
(`lwm.evals.video_needle`: same prompt template, needle images and code assembly) with other
seeds, written as `[head+vision+question],answer` records so that the prompt the trainer sees is
token for token what the eval feeds the model; the loss falls on the answer only.

Every phase skips what is on disk (each output is written atomically or marked complete last)
and the trainer and the eval resume, so rerunning continues where an interruption stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable

import ml_collections
import numpy as np

from lwm.demo.phases import DemoPaths, Phases, stage_table, train_stages, write_summary_files
from lwm.demo.seed import apply_seed, claim_workdir
from lwm.demo.video_clips import load_frames, split_clips
from lwm.demo.video_clips import say as _say
from lwm.demo.video_material import check_material, needle_images, write_augmented_haystack
from lwm.errors import LwmError
from lwm.failed_start import undo_failed_start
from lwm.io import write_json
from lwm.workdir_lock import workdir_lock

VIDEO_FIELDS = "[head+vision+question],answer"
"""Field spec of the training records: template head, video and question are the (masked)
prompt, the needle's answer is trained on."""
VQGAN_DONE = "done.json"
EVAL_DIR = "video_needle"


@dataclasses.dataclass
class VideoDemoPaths(DemoPaths):
    @property
    def clips(self) -> pathlib.Path:
        return self.data / "clips"

    @property
    def train_frames(self) -> pathlib.Path:
        return self.clips / "train"

    @property
    def eval_frames(self) -> pathlib.Path:
        return self.clips / "eval"

    @property
    def train_haystack(self) -> pathlib.Path:
        """The training questions' haystack frames: `train_frames` plus their augmentations."""
        return self.data / "haystack_train"

    @property
    def vqgan(self) -> pathlib.Path:
        return self.data / "vqgan"

    @property
    def tokenizer(self) -> pathlib.Path:
        return self.data / "tokenizer.model"


# ---------------------------------------------------------------- 2. VQGAN


def train_demo_vqgan(config: ml_collections.ConfigDict, paths: VideoDemoPaths) -> dict:
    """Phase 2: the tiny VQGAN on the training frames (held-out PSNR on the eval frames);
    resumes from its own checkpoints, skipped once `vqgan/done.json` exists."""
    from lwm.video.config import VQGANConfig
    from lwm.video.frame_data import FrameBank
    from lwm.video.vqgan_train import FrameDataConfig, VQGANTrainConfig, train_vqgan

    done = paths.vqgan / VQGAN_DONE
    if done.is_file():
        return json.loads(done.read_text())
    vcfg = VQGANConfig.from_dict(config.vqgan)
    tcfg = VQGANTrainConfig.from_dict(config.vqgan_train)
    train = load_frames(paths.train_frames)
    held = load_frames(paths.eval_frames)
    held = held[np.linspace(0, len(held) - 1, min(len(held), 64)).astype(int)]
    _say(
        f"training the VQGAN ({vcfg.resolution}px -> {vcfg.latent_size}x{vcfg.latent_size} codes "
        f"of {vcfg.codebook_size}) on {len(train)} frames for {tcfg.steps} steps"
    )
    d = config.demo
    needles = needle_images(d.needle, vcfg.resolution, d.vqgan_needle_fraction, len(train))
    if len(needles):
        _say(
            f"  + the {d.needle} needle images, {len(needles)} frames "
            f"({len(needles) / (len(train) + len(needles)):.0%} of the VQGAN's training frames)"
        )
        train = np.concatenate([train, needles])
    dcfg = FrameDataConfig(paths=(str(paths.train_frames),), flip=True)
    metrics = train_vqgan(vcfg, tcfg, dcfg, paths.vqgan, bank=FrameBank(train, held))
    write_json(done, metrics)
    return metrics


# ---------------------------------------------------------------- 3. tokenizer


def corpus_lines() -> list[str]:
    """Every text piece the video tasks put in a prompt or an answer: the template, each
    question, the needle labels and the caption sentences."""
    from lwm.evals.needle_images import COLOURS, DIGIT_WORDS
    from lwm.evals.video_needle_task import CAPTION_QUESTIONS, CAPTION_WORDS, QUESTIONS
    from lwm.inference.prompts import DEFAULT_TEMPLATE as T

    lines = []
    for q in [*QUESTIONS.values(), *CAPTION_QUESTIONS.values()]:
        lines.append(
            T.fill(T.video_prefix) + T.fill(T.video_suffix) + T.fill(T.question, question=q)
        )
    answers = [*COLOURS, *map(str, range(10)), *DIGIT_WORDS, *CAPTION_WORDS]
    lines += [f"The answer is {a}." for a in answers]
    for c in COLOURS:
        lines += [f"The {c} square stands for the word '{w}'." for w in CAPTION_WORDS]
    lines += [
        f"The number {i} stands for the word '{w}'." for i in range(10) for w in CAPTION_WORDS
    ]
    return lines


def train_demo_tokenizer(d: ml_collections.ConfigDict, paths: VideoDemoPaths):
    """Phase 3: sentencepiece on random sentences plus `corpus_lines` (repeated so each becomes
    whole pieces); checks that `<vision>` / `</vision>` are single pieces."""
    from lwm.data.synth import write_text_corpus
    from lwm.data.tokenizer import VISION_END, VISION_START, load_tokenizer, train_tokenizer

    if not paths.tokenizer.is_file():
        _say("training the tokenizer on generated text and the video task strings")
        corpus = paths.data / "corpus.txt"
        write_text_corpus(corpus, d.corpus_sentences, seed=d.seed)
        with open(corpus, "a", encoding="utf-8") as f:
            f.write("\n".join(corpus_lines() * d.task_text_repeats) + "\n")
        train_tokenizer([corpus], d.vocab_size, paths.tokenizer, seed=d.seed, overwrite=True)
    tok = load_tokenizer(paths.tokenizer)
    for marker in (VISION_START, VISION_END):
        pieces = [tok.id_to_piece(i) for i in tok.encode(marker)]
        if marker not in pieces:
            raise LwmError(f"tokenizer {paths.tokenizer} splits {marker!r} into {pieces}")
    return tok


# ---------------------------------------------------------------- 4. training data


def needle_spec(d: ml_collections.ConfigDict, haystack: pathlib.Path, seed: int):
    """The video needle spec of the demo over a directory of frames (one PNG = one frame)."""
    from lwm.evals.video_needle_task import VideoNeedleSpec

    return VideoNeedleSpec(
        haystack=(str(haystack),),
        needle=d.needle,
        needle_frames=d.needle_frames,
        caption=d.caption,
        seed=seed,
    )


def vision_ids(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """End-of-frame / end-of-video ids of the model (right after the VQGAN codebook)."""
    return int(config.model.vision_eof_id), int(config.model.vision_eov_id)


def prompt_record(ev, task, codes) -> dict:
    """The training record of `task`: `head` (template text before `<vision>`, as ids), `vision`
    (frames of codes), `question` (ids of the text after `</vision>`) and `answer` (text). Raises
    if the eval's template cannot be split this way."""
    from lwm.data.tokenizer import VISION_END, VISION_START
    from lwm.inference.prompts import encode_text, question_suffix

    tok, t = ev.tokenizer, ev.template
    head = encode_text(tok, t.fill(t.video_prefix))
    start = tok.encode(VISION_START)
    if head[-len(start) :] != start or encode_text(tok, t.fill(t.video_suffix)) != tok.encode(
        VISION_END
    ):
        raise LwmError(
            f"the prompt template must end its video prefix with {VISION_START!r} and its suffix "
            f"must be {VISION_END!r} for training records to match the eval's prompt"
        )
    return {
        "head": head[: -len(start)],
        "vision": codes.video_codes(task).tolist(),
        "question": question_suffix(tok, t, task.question),
        "answer": task.expected,
    }


def eval_seeds(d: ml_collections.ConfigDict) -> set[int]:
    """Sample seeds of the eval grid (training questions never reuse one)."""
    from lwm.evals.needle import grid_jobs, parse_depths, sample_seed

    spec = needle_spec(d, pathlib.Path("."), d.eval_seed)
    jobs = grid_jobs(list(d.eval_lengths), parse_depths(d.eval_depths), d.eval_samples)
    return {sample_seed(spec, j) for j in jobs}


def training_jobs(d: ml_collections.ConfigDict) -> tuple[list, int]:
    """The training questions as eval jobs, per bucket `[min_frames, max_frames, count]`:
    lengths and depths uniform, seeds from `d.train_seed`; any seed of the eval grid is skipped
    (returned: how many)."""
    from lwm.evals.needle import Job, sample_seed

    rng = np.random.default_rng(d.seed)
    spec = needle_spec(d, pathlib.Path("."), d.train_seed)
    taken = eval_seeds(d)
    jobs, skipped, i = [], 0, 0
    for lo, hi, count in d.task_buckets:
        made = 0
        while made < int(count):
            job = Job(int(rng.integers(lo, hi + 1)), round(float(rng.uniform()), 4), i)
            i += 1
            if sample_seed(spec, job) in taken:
                skipped += 1
                continue
            jobs.append(job)
            made += 1
    return jobs, skipped


def task_records(
    d: ml_collections.ConfigDict, ev, codes, *, progress: bool = True
) -> tuple[list[dict], dict]:
    """The records of `training_jobs`, built with the eval's task and prompt code."""
    jobs, skipped = training_jobs(d)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="video needle tasks", leave=False, dynamic_ncols=True)
    out = []
    for job in jobs:
        out.append(prompt_record(ev, ev.task(job), codes))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out, {"records": len(out), "skipped_eval_seeds": skipped}


def prepare_video_data(
    config: ml_collections.ConfigDict, paths: VideoDemoPaths, tok
) -> pathlib.Path:
    """Phase 4: training haystacks from `clips/train/` encoded once, needle QA records
    (`tasks.jsonl`), then the tokenized dataset (each skipped when present)."""
    from lwm.data.builder import build_dataset
    from lwm.demo.data import write_records
    from lwm.evals.video_haystack import HaystackCodes
    from lwm.evals.video_needle_prompt import VideoNeedleEval
    from lwm.video.config import VQGANConfig
    from lwm.video.vqgan import make_encode_fn
    from lwm.video.vqgan_checkpoint import load_vqgan

    d = config.demo
    tasks = paths.data / "tasks.jsonl"
    dataset = paths.data / "dataset"
    eof, eov = vision_ids(config)
    if not tasks.is_file():
        haystack = paths.train_frames
        if d.haystack_augment:
            n = write_augmented_haystack(haystack, paths.train_haystack, d.haystack_augment)
            _say(
                f"training haystack: {n} frames (training frames, then each clip "
                f"{', '.join(d.haystack_augment)})"
            )
            haystack = paths.train_haystack
        vqgan = load_vqgan(paths.vqgan)
        spec = needle_spec(d, haystack, d.train_seed)
        ev = VideoNeedleEval(
            spec,
            tok,
            resolution=vqgan.cfg.resolution,
            tokens_per_frame=vqgan.cfg.tokens_per_frame,
        )
        codes = HaystackCodes(
            make_encode_fn(vqgan),
            spec,
            resolution=vqgan.cfg.resolution,
            eof_id=eof,
            eov_id=eov,
            batch_size=d.encode_batch,
        )
        _say(f"encoding {len(codes.pool)} training frames; generating video needle tasks")
        recs, stats = task_records(d, ev, codes)
        write_records(tasks, recs, seed=d.seed)
        write_json(paths.data / "tasks_stats.json", stats)
    if not (dataset / "dataset_info.json").is_file():
        _say("tokenizing the tasks into an array_record dataset")
        meta = build_dataset(
            tasks,
            dataset,
            tokenizer=tok,
            fields=VIDEO_FIELDS,
            overwrite=True,
            vision_eof_id=eof,
            vision_eov_id=eov,
            tokens_per_frame=VQGANConfig.from_dict(config.vqgan).tokens_per_frame,
        )
        _say(
            f"dataset: {meta['num_examples']} examples, {meta['num_tokens']:,} tokens "
            f"({meta['num_vision_tokens']:,} vision)"
        )
    return dataset


# ---------------------------------------------------------------- 6. eval


def run_video_eval(config: ml_collections.ConfigDict, paths: VideoDemoPaths, tok) -> dict:
    """Phase 6: the video needle eval on the eval-split haystack at `demo.eval_lengths` frames
    (up to 2x the last stage), resumed from `results/video_needle/results.jsonl`."""
    from lwm.evals.needle import parse_depths
    from lwm.evals.report import summarize
    from lwm.evals.results import read_results
    from lwm.evals.video_needle import evaluate_video_needles

    d = config.demo
    spec = needle_spec(d, paths.eval_frames, d.eval_seed)
    depths = parse_depths(d.eval_depths)
    lengths = list(d.eval_lengths)
    out = paths.results / EVAL_DIR
    _say(
        f"video needle eval: lengths {lengths} frames, {len(depths)} depths, "
        f"{d.eval_samples} samples"
    )
    table = evaluate_video_needles(
        str(paths.train),
        str(paths.vqgan),
        tok,
        spec,
        lengths=lengths,
        depths=depths,
        samples=d.eval_samples,
        out_dir=out,
        batch_size=d.eval_batch_size,
        encode_batch=d.encode_batch,
        mesh_spec=d.eval_mesh or None,
        prefill_chunk=d.eval_prefill_chunk,
        warn=_say,
        progress=True,
    )
    print(table, flush=True)
    records = read_results(out)
    summary = summarize(records, lengths, depths).to_dict()
    tokens = json.loads((out / "summary.json").read_text())["prompt_tokens_per_length"]
    return {**summary, "prompt_tokens_per_length": tokens}


# ---------------------------------------------------------------- summary


def write_video_summary(
    config: ml_collections.ConfigDict,
    paths: VideoDemoPaths,
    *,
    split: dict,
    vqgan: dict,
    stage_times: dict[str, float],
    evals: dict,
    phases: Phases,
) -> str:
    """`results/summary.md` and `summary.json`; copies the loss curve and heatmap beside them."""
    from lwm.evals.needle_images import num_choices
    from lwm.video.config import VQGANConfig

    d = config.demo
    vcfg = VQGANConfig.from_dict(config.vqgan)
    chance = 1.0 / num_choices(d.needle)
    stats_path = paths.data / "tasks_stats.json"
    task_stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    table, last_loss = stage_table(config, paths, stage_times)
    frames_per_stage = [f"{lo}-{hi}" for lo, hi, _ in d.task_buckets]
    clips = ", ".join(
        f"{pathlib.Path(c['clip']).stem} {c['train']}+{c['frames'] - c['train']}"
        for c in split["clips"]
    )
    lines = [
        "# lwm demo --video results",
        "",
        f"Seed {d.seed} (data: demo.seed = {d.seed}; init and data order: train.seed = "
        f"vqgan_train.seed = {d.seed}); every number below is from this run.",
        "",
        f"Clips (train+eval frames each; first {split['train_fraction']:.0%} of each clip in "
        f"time for training, the rest for the eval haystack): {clips}. "
        f"{split['train_frames']} training frames, {split['eval_frames']} eval frames.",
        "",
        f"VQGAN: {vcfg.resolution}x{vcfg.resolution} frames -> {vcfg.latent_size}x"
        f"{vcfg.latent_size} codes ({vcfg.tokens_per_frame} + 1 separator tokens per frame), "
        f"codebook {vcfg.codebook_size}, {config.vqgan_train.steps} steps"
        + (f", held-out PSNR {vqgan['eval_psnr']:.1f} dB" if "eval_psnr" in vqgan else "")
        + ".",
        "",
        f"Training: {task_stats.get('records', '?')} video needle questions ({d.needle} needle), "
        f"frames per bucket {', '.join(frames_per_stage)}; loss on the answer only.",
        "",
        *table,
        "",
        f"Video needle accuracy (all depths; chance = 1/{num_choices(d.needle)} = "
        f"{100 * chance:.1f}%):",
        "",
        "| frames | " + " | ".join(str(n) for n in evals["lengths"]) + " |",
        "|---|" + "---|" * len(evals["lengths"]),
        "| prompt tokens | "
        + " | ".join(str(evals["prompt_tokens_per_length"][str(n)]) for n in evals["lengths"])
        + " |",
        "| accuracy | "
        + " | ".join(f"{100 * evals['accuracy_per_length'][str(n)]:.0f}%" for n in evals["lengths"])
        + " |",
    ]
    lines += ["", phases.summary_line()]
    copies = [
        (paths.train / "loss_curve.png", "loss_curve.png"),
        (paths.results / EVAL_DIR / "heatmap.png", "heatmap.png"),
    ]
    data = {
        "seed": d.seed,
        "split": split,
        "vqgan": vqgan,
        "tasks": task_stats,
        "stage_seconds": stage_times,
        "phase_seconds": phases.seconds,
        "final_loss_per_stage": last_loss,
        "chance": chance,
        "eval": evals,
    }
    return write_summary_files(paths, lines, data, copies)


def run_video_demo(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    log: Callable[[str], None] = _say,
) -> str:
    """The whole video pipeline; returns the summary text."""
    from lwm.inference.video_qa import check_vision_model
    from lwm.models.config import ModelConfig
    from lwm.video.config import VQGANConfig

    # Before any work: the model must read the VQGAN's codes.
    codebook = VQGANConfig.from_dict(config.vqgan).codebook_size
    check_vision_model(ModelConfig.from_dict(config.model), codebook, where="config.model")
    check_material(config.demo)
    paths = VideoDemoPaths(pathlib.Path(workdir).expanduser().resolve())
    # One demo per workdir; a failure before the clips are split (a bad clip) leaves nothing
    # it created.
    with workdir_lock(paths.root, "lwm demo --video"), undo_failed_start(paths.root) as created:
        claim_workdir(paths.root, "video", apply_seed(config))  # before any work
        paths.data.mkdir(parents=True, exist_ok=True)
        d = config.demo
        phases = Phases()
        with phases("clips"):
            split = split_clips(d, paths.clips, int(config.vqgan.resolution))
        created.keep()
        with phases("vqgan"):
            vqgan = train_demo_vqgan(config, paths)
        with phases("tokenizer"):
            tok = train_demo_tokenizer(d, paths)
            if tok.vocab_size > config.model.vocab_size:
                raise LwmError(
                    f"tokenizer has {tok.vocab_size} pieces but model.vocab_size is "
                    f"{config.model.vocab_size}"
                )
        with phases("data"):
            dataset = prepare_video_data(config, paths, tok)
            with config.unlocked():
                config.data.path = str(dataset)
        with phases("training"):
            stage_times = train_stages(config, paths)
        with phases("eval"):
            evals = run_video_eval(config, paths, tok)
        text = write_video_summary(
            config,
            paths,
            split=split,
            vqgan=vqgan,
            stage_times=stage_times,
            evals=evals,
            phases=phases,
        )
    log(f"results in {paths.results}")
    return text
