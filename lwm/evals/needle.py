"""Needle-in-a-haystack eval: a grid of context lengths x needle depths, K samples per cell.

Semantics follow LWM's needle test: needles "The special magic {key} number is: {7-digit}." sit at
the sentence boundary nearest the requested depth of a haystack (noise sentences, a directory of
`.txt` files or a `.jsonl` of documents), the model answers greedily, and a sample is correct when
every asked number appears in the answer. RULER's retrieval variants come from the same knobs:
`num_needles > 1` (multi-key: distractor needles with other keys), `num_values > 1` (multi-value:
one key, several numbers, all asked) and `num_retrieve > 1` (multi-query: several keys asked).

Samples of all cells are answered in batches of a fixed size (the last batch is padded with
copies of a real prompt whose answers are dropped, so every batch compiles to the same shape and
no sample is lost or answered twice, whatever the count). Each answered sample is appended to
`results.jsonl` at once; a rerun reads it and answers only what is missing.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from lwm.data.needles import Haystack, NeedleTask, make_needle_task
from lwm.data.tokenizer import Tokenizer
from lwm.errors import LwmError
from lwm.evals.results import (
    RESULTS_FILE,
    grid_identity,
    holds_files,
    log_records,
    open_results_dir,
    undo_new_dir_on_error,
)

AnswerFn = Callable[[list[list[int]], int], list[list[int]]]
"""`(prompts, max_new_tokens) -> generated ids per prompt` (greedy)."""

NEEDLE_TEMPLATES = ("default", "lwm", "chat")


@dataclasses.dataclass(frozen=True)
class NeedleSpec:
    """What a task is made of; results are only resumed under the same spec."""

    haystack: str = "noise"
    """`noise`, `random`, a directory of `.txt` files, or a `.jsonl` file of documents."""
    num_needles: int = 1
    """Needles (keys) inserted; more than `num_retrieve` means distractors (RULER multi-key)."""
    num_retrieve: int = 1
    """Keys asked in the question (RULER multi-query when > 1)."""
    num_values: int = 1
    """Numbers per key, all asked (RULER multi-value when > 1)."""
    seed: int = 0
    """Base seed; each sample's seed derives from it, its length, depth and index."""
    question_template: str = "\nQuestion: {question}\nAnswer:"
    """How the question follows the context (must match the model's training format)."""
    template: str = "default"
    """`default` (BOS as the tokenizer adds it + context + question_template), `lwm`: LWM's
    eval_needle chat wrapping (`lwm.inference.prompts.LWM_NEEDLE`, the bare question;
    question_template unused), or `chat`: the same user text in the tokenizer's own chat
    template (`lwm needle --template auto` picks it when the tokenizer ships one)."""

    def __post_init__(self):
        if self.template not in NEEDLE_TEMPLATES:
            raise LwmError(
                f"needle template {self.template!r}: expected default or lwm "
                "(or chat: the tokenizer's chat template)"
            )
        if self.num_needles < 1 or self.num_values < 1:
            raise LwmError("needles and values per needle must be >= 1")
        if not 1 <= self.num_retrieve <= self.num_needles:
            raise LwmError(
                f"--retrieve must be between 1 and --needles ({self.num_needles}), "
                f"got {self.num_retrieve}"
            )


@dataclasses.dataclass(frozen=True)
class Job:
    """One sample of one grid cell."""

    length: int
    depth: float
    sample: int

    @property
    def key(self) -> tuple[int, float, int]:
        return (self.length, round(self.depth, 6), self.sample)


def sample_seed(spec: NeedleSpec, job: Job) -> int:
    """Seed of a sample: stable when other lengths, depths or samples are added to the grid."""
    return (
        spec.seed * 1_000_003 + job.length * 7_919 + round(job.depth * 10_000) * 104_729
    ) * 97 + job.sample


def grid_jobs(lengths: Sequence[int], depths: Sequence[float], samples: int) -> list[Job]:
    """All samples, ordered by length (so a batch holds prompts of similar length)."""
    if samples < 1:
        raise LwmError(f"--samples must be >= 1, got {samples}")
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise LwmError(f"depths must be fractions in [0, 1], got {list(depths)}")
    return [Job(n, float(d), k) for n in lengths for d in depths for k in range(samples)]


def parse_depths(text: str) -> list[float]:
    """`0,0.25,1` or a range `0:1:11` (start:stop:count, inclusive)."""
    text = text.strip()
    try:
        if ":" in text:
            a, b, n = text.split(":")
            count = int(n)
            if count < 1:
                raise ValueError
            if count == 1:
                return [float(a)]
            step = (float(b) - float(a)) / (count - 1)
            return [round(float(a) + i * step, 6) for i in range(count)]
        return [float(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise LwmError(f"bad depths {text!r} (expected e.g. 0,0.5,1 or 0:1:11)") from None


def check_lengths(
    lengths: Sequence[int],
    max_len: int,
    *,
    skip_too_long: bool,
    warn: Callable[[str], None],
) -> list[int]:
    """Lengths the model can take; longer ones are an error, or skipped with a warning."""
    too_long = [n for n in lengths if n > max_len]
    if too_long and not skip_too_long:
        raise LwmError(
            f"length {too_long[0]} exceeds the checkpoint's max_sequence_length {max_len} "
            "(drop it, or pass --skip-too-long)"
        )
    for n in too_long:
        warn(f"skipping length {n}: beyond the checkpoint's max_sequence_length {max_len}")
    kept = [n for n in lengths if n <= max_len]
    if not kept:
        raise LwmError(f"no length fits the checkpoint's max_sequence_length {max_len}")
    return kept


def load_haystack(source: str) -> Haystack:
    """A Haystack from `noise` / `random` / a directory of `.txt` / a `.jsonl` of documents."""
    path = pathlib.Path(source)
    if source in ("noise", "random"):
        return Haystack(source)
    if path.is_file() and path.suffix == ".jsonl":
        return Haystack(path)
    if path.is_dir():
        return Haystack(path)
    raise LwmError(
        f"haystack {source!r}: expected noise, random, a directory of .txt files or a .jsonl file"
    )


def build_prompt(tokenizer: Tokenizer, task: NeedleTask, template: str = "default") -> list[int]:
    """BOS (as the tokenizer adds it) + context + question, tokenized as the
    `[context+question],answer` training format; `template="lwm"`: LWM's eval_needle prompt for
    the same context and question; `"chat"`: its user text in the tokenizer's chat template."""
    if template == "lwm":
        from lwm.inference.prompts import LWM_TEMPLATE, lwm_needle_prompt

        return lwm_needle_prompt(tokenizer, LWM_TEMPLATE, task.context, task.question)
    if template == "chat":
        from lwm.inference.prompts import chat_needle_prompt

        return chat_needle_prompt(tokenizer, needle_chat(tokenizer), task.context, task.question)
    return tokenizer.encode(f"{task.context} {task.question}", bos=bool(tokenizer.add_bos))


def needle_chat(tokenizer: Tokenizer):
    """The tokenizer's chat template as a `ChatPrompt` (no system message)."""
    from lwm.inference.prompts import AUTO, ChatPrompt, select_template

    template = select_template(AUTO, tokenizer)
    if not isinstance(template, ChatPrompt):
        raise LwmError(f"needle template 'chat': tokenizer {tokenizer.path} has no chat template")
    return template


def _wrap_tokens(tokenizer: Tokenizer, template: str) -> int:
    """Tokens a prompt template adds around context + question (0 for the default)."""
    from lwm.inference.prompts import LWM_TEMPLATE, chat_needle_prompt, lwm_needle_prompt

    if template == "lwm":
        return len(lwm_needle_prompt(tokenizer, LWM_TEMPLATE, "", "")) - 1  # its BOS is counted
    if template == "chat":
        return len(chat_needle_prompt(tokenizer, needle_chat(tokenizer), "", "")) - 1
    return 0


def make_task(tokenizer: Tokenizer, haystack: Haystack, spec: NeedleSpec, job: Job) -> NeedleTask:
    lwm = spec.template in ("lwm", "chat")  # the bare question, wrapped by the template
    return make_needle_task(
        tokenizer,
        job.length - _wrap_tokens(tokenizer, spec.template),
        depth=job.depth,
        num_keys=spec.num_needles,
        num_values=spec.num_values,
        num_queries=spec.num_retrieve,
        haystack=haystack,
        seed=sample_seed(spec, job),
        question_template="{question}" if lwm else spec.question_template,
    )


def score_answer(text: str, expected: Sequence[str]) -> int:
    """How many of the expected numbers appear in the answer text."""
    return sum(1 for v in expected if v in text)


def padded_batches(items: Sequence[Any], batch_size: int) -> Iterable[tuple[list[Any], int]]:
    """`(batch, n_real)`: consecutive batches of exactly `batch_size`, the last one filled up with
    copies of its first item (`n_real` says how many are real). A count that divides the batch
    size exactly gives exactly count / batch_size batches."""
    if batch_size < 1:
        raise LwmError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        chunk = list(items[start : start + batch_size])
        n_real = len(chunk)
        chunk += [chunk[0]] * (batch_size - n_real)
        yield chunk, n_real


# ----------------------------------------------------------------------------- the eval


def run_needle_eval(
    answer: AnswerFn,
    tokenizer: Tokenizer,
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    samples: int,
    out_dir: str | os.PathLike,
    spec: NeedleSpec = NeedleSpec(),
    batch_size: int = 4,
    max_new_tokens: int | None = None,
    identity: dict | None = None,
    progress: bool = True,
    desc: str = "needle",
    overwrite: bool = False,
) -> list[dict]:
    """Answers every missing sample of the grid, appending to `out_dir/results.jsonl`; returns
    the records of this grid (earlier and new). `identity` (e.g. the checkpoint) is stored with
    the spec so a later run into the same directory resumes only the same eval."""
    out = pathlib.Path(out_dir)
    ident = {
        **(identity or {}),
        "spec": dataclasses.asdict(spec),
        "tokenizer": str(tokenizer.path),
        "max_new_tokens": max_new_tokens,
        "grid": grid_identity(lengths, depths, samples),
    }
    existed = holds_files(out)
    done = open_results_dir(out, ident, what="needle", overwrite=overwrite)
    haystack = load_haystack(spec.haystack)
    jobs = grid_jobs(lengths, depths, samples)
    results_path = out / RESULTS_FILE
    todo = [j for j in jobs if j.key not in done]
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, dynamic_ncols=True)
    with undo_new_dir_on_error(out, existed), open(results_path, "a", encoding="utf-8") as f:
        for batch, n_real in padded_batches(todo, batch_size):
            tasks = [make_task(tokenizer, haystack, spec, j) for j in batch[:n_real]]
            prompts = [build_prompt(tokenizer, t, spec.template) for t in tasks]
            budget = max_new_tokens or max(len(tokenizer.encode(t.answer)) + 8 for t in tasks)
            outputs = answer(prompts + [prompts[0]] * (len(batch) - n_real), budget)
            if len(outputs) != len(batch):
                raise LwmError(f"answerer returned {len(outputs)} answers for {len(batch)} prompts")
            recs = [
                _record(tokenizer, spec, job, task, prompt, ids)
                for job, task, prompt, ids in zip(batch[:n_real], tasks, prompts, outputs)
            ]
            log_records(f, done, recs, jobs, bar)
    if bar is not None:
        bar.close()
    return [done[j.key] for j in jobs]


def _record(
    tokenizer: Tokenizer,
    spec: NeedleSpec,
    job: Job,
    task: NeedleTask,
    prompt: list[int],
    ids: Sequence[int],
) -> dict:
    from lwm.inference.answer_text import answer_text

    text = answer_text(tokenizer, ids, tokenizer.eos_ids)
    found = score_answer(text, task.answers)
    queried = [n for n in task.needles if n.queried]
    return {
        "length": job.length,
        "depth": round(job.depth, 6),
        "sample": job.sample,
        "seed": sample_seed(spec, job),
        "prompt_tokens": len(prompt),
        "needle_token_depths": [n.token_depth for n in queried],
        "needle_depth_fraction": [round(n.token_depth / task.context_tokens, 4) for n in queried],
        "expected": list(task.answers),
        "output": text,
        "found": found,
        "score": found / len(task.answers),
        "correct": found == len(task.answers),
    }
