"""The end-to-end demo: generated data -> ring-attention training through context stages ->
needle evals -> pictures and a summary, all under one work directory.

    WORKDIR/demo.json  the run's seed (lwm/demo/seed.py)
    WORKDIR/data/      corpus.txt, tokenizer.model, tasks.jsonl, dataset/
    WORKDIR/train/     the trainer's workdir (checkpoints per stage, metrics.jsonl, loss curve)
    WORKDIR/results/   heatmaps, loss_curve.png, summary.md / summary.json, eval results.jsonl

Every step skips what is already on disk and the trainer and the evals resume, so rerunning the
same command after an interruption continues where it stopped instead of starting over.
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Callable

import ml_collections

from lwm.demo.phases import DemoPaths, Phases, stage_table, train_stages, write_summary_files
from lwm.demo.seed import apply_seed, claim_workdir
from lwm.errors import LwmError
from lwm.failed_start import undo_failed_start
from lwm.workdir_lock import workdir_lock


def ensure_host_devices(n: int) -> None:
    """Asks XLA for `n` simulated host devices; must run before jax is imported (a no-op for
    accelerators, whose devices jax uses instead)."""
    flag = f"--xla_force_host_platform_device_count={n}"
    if "jax" in sys.modules:
        import jax

        if jax.device_count() < n:
            raise LwmError(
                f"the demo needs {n} devices but jax was started with {jax.device_count()}; "
                f"set XLA_FLAGS={flag} before starting Python"
            )
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


def _say(msg: str) -> None:
    print(f"lwm demo: {msg}", file=sys.stderr, flush=True)


def prepare_data(config: ml_collections.ConfigDict, paths: DemoPaths) -> pathlib.Path:
    """Corpus -> tokenizer -> needle tasks + copy drills -> tokenized dataset (each skipped
    when present). Returns the dataset directory."""
    from lwm.data.builder import build_dataset
    from lwm.data.tokenizer import load_tokenizer, train_tokenizer
    from lwm.demo.data import (
        TaskBucket,
        copy_records,
        fields_spec,
        needle_records,
        write_corpus,
        write_records,
    )

    d = config.demo
    paths.data.mkdir(parents=True, exist_ok=True)
    tok_path = paths.data / "tokenizer.model"
    if not tok_path.is_file():
        _say("training the tokenizer on generated text")
        corpus = paths.data / "corpus.txt"
        write_corpus(corpus, d.corpus_sentences, seed=d.seed)
        train_tokenizer([corpus], d.vocab_size, tok_path, seed=d.seed, overwrite=True)
    tok = load_tokenizer(tok_path)
    if tok.vocab_size > config.model.vocab_size:
        raise LwmError(
            f"tokenizer has {tok.vocab_size} pieces but model.vocab_size is "
            f"{config.model.vocab_size}"
        )
    tasks = paths.data / "tasks.jsonl"
    if not tasks.is_file():
        _say("generating needle-retrieval tasks and copy drills")
        buckets = [TaskBucket.parse(b) for b in d.task_buckets]
        recs = needle_records(
            tok,
            buckets,
            max_keys=d.max_keys,
            max_queries=d.max_queries,
            extra_queries=d.extra_queries,
            seed=d.seed,
            exclude_seeds=eval_sample_seeds(d),
            progress=True,
        )
        recs += copy_records(
            tok,
            buckets,
            ratio=d.copy_ratio,
            extra_queries=d.extra_queries,
            digit_fraction=d.get("copy_digit_fraction", 0.0),
            seed=d.seed,
        )
        write_records(tasks, recs, seed=d.seed)
    dataset = paths.data / "dataset"
    if not (dataset / "dataset_info.json").is_file():
        _say("tokenizing the tasks into an array_record dataset")
        meta = build_dataset(
            tasks, dataset, tokenizer=tok, fields=fields_spec(d.extra_queries), overwrite=True
        )
        _say(f"dataset: {meta['num_examples']} examples, {meta['num_tokens']:,} tokens")
    return dataset


def eval_specs(d: ml_collections.ConfigDict) -> dict[str, tuple]:
    """The demo's needle evals, name -> (spec, lengths, depths, samples): a single-needle grid up
    to 2x the last stage and a multi-needle check. Their seeds are fixed, not `demo.seed`, so runs
    of every seed answer the same questions."""
    from lwm.evals.needle import NeedleSpec, parse_depths

    depths = parse_depths(d.eval_depths)
    return {
        "single": (NeedleSpec(seed=1), list(d.eval_lengths), depths, d.eval_samples),
        f"multi{d.multi_needles}": (
            NeedleSpec(num_needles=d.multi_needles, seed=2),
            list(d.multi_lengths),
            depths,
            d.multi_samples,
        ),
    }


def eval_sample_seeds(d: ml_collections.ConfigDict) -> set[int]:
    """Sample seeds of every eval question (no training task reuses one)."""
    from lwm.evals.needle import grid_jobs, sample_seed

    return {
        sample_seed(spec, job)
        for spec, lengths, depths, samples in eval_specs(d).values()
        for job in grid_jobs(lengths, depths, samples)
    }


def run_evals(config: ml_collections.ConfigDict, paths: DemoPaths) -> dict[str, dict]:
    """Single-needle grid up to 2x the last stage and a multi-needle check; resumable."""
    from lwm.data.tokenizer import load_tokenizer
    from lwm.evals.model_runner import load_eval_model
    from lwm.evals.report import summarize
    from lwm.evals.results import read_results
    from lwm.evals.run import evaluate_needles, lazy_answerer

    d = config.demo
    tok = load_tokenizer(paths.data / "tokenizer.model")
    answer = lazy_answerer(
        lambda: load_eval_model(paths.train, mesh_spec=d.eval_mesh or None), eos_id=tok.eos_ids
    )
    out = {}
    for name, (spec, lengths, dps, samples) in eval_specs(d).items():
        _say(f"needle eval '{name}': lengths {lengths}, {len(dps)} depths, {samples} samples")
        table = evaluate_needles(
            str(paths.train),
            tok,
            lengths=lengths,
            depths=dps,
            samples=samples,
            spec=spec,
            out_dir=str(paths.results / f"needle_{name}"),
            batch_size=d.eval_batch_size,
            answerer=answer,
        )
        print(table, flush=True)
        s = summarize(read_results(paths.results / f"needle_{name}"), lengths, dps)
        out[name] = s.to_dict()
    return out


def write_summary(
    config: ml_collections.ConfigDict,
    paths: DemoPaths,
    stage_times: dict[str, float],
    evals: dict[str, dict],
    phases: Phases,
) -> str:
    """`results/summary.md` and `summary.json`; copies the loss curve and heatmaps beside them."""
    from lwm.evals.report import format_length

    table, last_loss = stage_table(config, paths, stage_times)
    seed = config.demo.seed
    lines = [
        "# lwm demo results",
        "",
        f"Seed {seed} (data: demo.seed = {seed}; init and data order: train.seed = {seed}); "
        "every number below is from this run.",
        "",
        *table,
    ]
    for name, s in evals.items():
        heads = [format_length(int(n)) for n in s["lengths"]]
        lines += [
            "",
            f"Needle accuracy, {name} (all depths):",
            "",
            "| " + " | ".join(heads) + " |",
            "|" + "---|" * len(heads),
        ]
        accs = [s["accuracy_per_length"][str(n)] for n in s["lengths"]]
        lines.append("| " + " | ".join(f"{100 * a:.0f}%" for a in accs) + " |")
    lines += ["", phases.summary_line()]
    copies = [(paths.train / "loss_curve.png", "loss_curve.png")]
    copies += [(paths.results / f"needle_{n}" / "heatmap.png", f"heatmap_{n}.png") for n in evals]
    data = {
        "seed": seed,
        "stage_seconds": stage_times,
        "phase_seconds": phases.seconds,
        "evals": evals,
        "final_loss_per_stage": last_loss,
    }
    return write_summary_files(paths, lines, data, copies)


def check_data_section(d: ml_collections.ConfigDict) -> None:
    """The data fields' one-line errors, before the tokenizer and tasks take their minutes."""
    from lwm.demo.data import TaskBucket, check_digit_fraction, copy_ratios

    buckets = [TaskBucket.parse(b) for b in d.task_buckets]
    copy_ratios(d.copy_ratio, len(buckets))
    check_digit_fraction(d.get("copy_digit_fraction", 0.0))


def run_demo(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    log: Callable[[str], None] = _say,
) -> str:
    """The whole pipeline; returns the summary text."""
    phases = Phases()
    check_data_section(config.demo)
    paths = DemoPaths(pathlib.Path(workdir).expanduser().resolve())
    # One demo per workdir; a failure before the data is built leaves nothing it created.
    with workdir_lock(paths.root, "lwm demo"), undo_failed_start(paths.root) as created:
        claim_workdir(paths.root, "text", apply_seed(config))  # before any work
        with phases("data"):
            dataset = prepare_data(config, paths)
            with config.unlocked():
                config.data.path = str(dataset)
        created.keep()
        with phases("training"):
            stage_times = train_stages(config, paths)
        with phases("evals"):
            evals = run_evals(config, paths)
        text = write_summary(config, paths, stage_times, evals, phases)
    log(f"results in {paths.results}")
    return text
