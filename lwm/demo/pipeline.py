"""The end-to-end demo: generated data -> ring-attention training through context stages ->
needle evals -> pictures and a summary, all under one work directory.

    WORKDIR/data/      corpus.txt, tokenizer.model, tasks.jsonl, dataset/
    WORKDIR/train/     the trainer's workdir (checkpoints per stage, metrics.jsonl, loss curve)
    WORKDIR/results/   heatmaps, loss_curve.png, summary.md / summary.json, eval results.jsonl

Every step skips what is already on disk and the trainer and the evals resume, so rerunning the
same command after an interruption continues where it stopped instead of starting over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable

import ml_collections

from lwm.errors import LwmError

STAGE_TIMES = "stage_times.json"


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


@dataclasses.dataclass
class DemoPaths:
    root: pathlib.Path

    @property
    def data(self) -> pathlib.Path:
        return self.root / "data"

    @property
    def train(self) -> pathlib.Path:
        return self.root / "train"

    @property
    def results(self) -> pathlib.Path:
        return self.root / "results"


def _say(msg: str) -> None:
    print(f"lwm demo: {msg}", file=sys.stderr, flush=True)


def write_json(path: pathlib.Path, data) -> None:
    """Writes `data` as JSON atomically (a temporary file beside `path`, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def prepare_data(config: ml_collections.ConfigDict, paths: DemoPaths) -> pathlib.Path:
    """Corpus -> tokenizer -> needle tasks + copy drills -> tokenized dataset (each skipped
    when present). Returns the dataset directory."""
    from lwm.data.builder import build_dataset
    from lwm.data.tokenizer import Tokenizer, train_tokenizer
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
    tok = Tokenizer(tok_path)
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
            progress=True,
        )
        recs += copy_records(
            tok, buckets, ratio=d.copy_ratio, extra_queries=d.extra_queries, seed=d.seed
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


def train_stages(config: ml_collections.ConfigDict, paths: DemoPaths) -> dict[str, float]:
    """Runs (or resumes) the training stages; returns wall seconds per stage, accumulated over
    runs in `results/stage_times.json`."""
    from lwm.training.trainer import train

    times_path = paths.results / STAGE_TIMES
    times: dict[str, float] = json.loads(times_path.read_text()) if times_path.is_file() else {}
    current = {"stage": None, "t0": 0.0}

    def flush(now: float) -> None:
        if current["stage"] is not None:
            key = str(current["stage"])
            times[key] = times.get(key, 0.0) + now - current["t0"]
            current["t0"] = now
            write_json(times_path, times)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
        now = time.perf_counter()
        if msg.startswith("lwm train: stage ") and "/" in msg.split()[3]:
            flush(now)
            current["stage"] = int(msg.split()[3].split("/")[0]) - 1
            current["t0"] = now
        elif " done at step " in msg:
            flush(now)
            current["stage"] = None

    paths.results.mkdir(parents=True, exist_ok=True)
    try:
        train(config, paths.train, log=log)
    finally:
        flush(time.perf_counter())
    shutil.copy(paths.data / "tokenizer.model", paths.train / "tokenizer.model")
    return times


def run_evals(config: ml_collections.ConfigDict, paths: DemoPaths) -> dict[str, dict]:
    """Single-needle grid up to 2x the last stage and a multi-needle check; resumable."""
    from lwm.data.tokenizer import Tokenizer
    from lwm.evals.model_runner import load_eval_model
    from lwm.evals.needle import NeedleSpec, parse_depths
    from lwm.evals.report import summarize
    from lwm.evals.results import read_results
    from lwm.evals.run import evaluate_needles, lazy_answerer

    d = config.demo
    tok = Tokenizer(paths.data / "tokenizer.model")
    answer = lazy_answerer(
        lambda: load_eval_model(paths.train, mesh_spec=d.eval_mesh or None), eos_id=tok.eos_id
    )
    depths = parse_depths(d.eval_depths)
    runs = {
        "single": (NeedleSpec(seed=1), list(d.eval_lengths), depths, d.eval_samples),
        f"multi{d.multi_needles}": (
            NeedleSpec(num_needles=d.multi_needles, seed=2),
            list(d.multi_lengths),
            depths,
            d.multi_samples,
        ),
    }
    out = {}
    for name, (spec, lengths, dps, samples) in runs.items():
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


def stage_table(
    config: ml_collections.ConfigDict, paths: DemoPaths, stage_times: dict[str, float]
) -> tuple[list[str], dict[int, float]]:
    """Markdown rows (stage, seq_len, rope theta, steps, final loss, wall time) and the last
    logged loss per stage, from the trainer's metrics.jsonl."""
    from lwm.training.metrics import read_metrics

    last_loss: dict[int, float] = {}
    for r in read_metrics(paths.train / "metrics.jsonl"):
        last_loss[int(r["stage"])] = float(r["loss"])
    lines = [
        "| stage | seq_len | rope theta | steps | final loss | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for i, st in enumerate(config.stages):
        t = stage_times.get(str(i))
        theta = st.rope_theta or config.model.rope_theta  # None (or legacy 0) = inherited
        lines.append(
            f"| {i + 1} | {st.seq_len} | {theta:g} | {st.steps} | "
            f"{last_loss.get(i, float('nan')):.3f} | {'-' if t is None else f'{t / 60:.1f} min'} |"
        )
    return lines, last_loss


def write_summary(
    config: ml_collections.ConfigDict,
    paths: DemoPaths,
    stage_times: dict[str, float],
    evals: dict[str, dict],
    phase_seconds: dict[str, float],
) -> str:
    """`results/summary.md` and `summary.json`; copies the loss curve and heatmaps beside them."""
    from lwm.evals.report import format_length

    res = paths.results
    if (paths.train / "loss_curve.png").is_file():
        shutil.copy(paths.train / "loss_curve.png", res / "loss_curve.png")
    for name in evals:
        src = res / f"needle_{name}" / "heatmap.png"
        if src.is_file():
            shutil.copy(src, res / f"heatmap_{name}.png")
    table, last_loss = stage_table(config, paths, stage_times)
    lines = ["# lwm demo results", "", *table]
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
    phases = ", ".join(f"{k} {v / 60:.1f} min" for k, v in phase_seconds.items())
    lines += [
        "",
        f"Wall time of this invocation: {phases} (a resumed run counts only its own work;"
        " stage times above accumulate over runs).",
    ]
    text = "\n".join(lines) + "\n"
    (res / "summary.md").write_text(text)
    write_json(
        res / "summary.json",
        {
            "stage_seconds": stage_times,
            "phase_seconds": phase_seconds,
            "evals": evals,
            "final_loss_per_stage": last_loss,
        },
    )
    return text


def run_demo(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    log: Callable[[str], None] = _say,
) -> str:
    """The whole pipeline; returns the summary text."""
    phases: dict[str, float] = {}
    paths = DemoPaths(pathlib.Path(workdir).expanduser().resolve())
    paths.root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dataset = prepare_data(config, paths)
    with config.unlocked():
        config.data.path = str(dataset)
    phases["data"], t0 = time.perf_counter() - t0, time.perf_counter()
    stage_times = train_stages(config, paths)
    phases["training"], t0 = time.perf_counter() - t0, time.perf_counter()
    evals = run_evals(config, paths)
    phases["evals"] = time.perf_counter() - t0
    text = write_summary(config, paths, stage_times, evals, phases)
    log(f"results in {paths.results}")
    return text
