"""The demo's training data, generated locally: a tokenizer corpus, needle-retrieval tasks and copy
drills, and the tokenized dataset the trainer reads.

Every record is `{"context", "question", "answer", "q2", "a2", ...}` built with
`fields_spec(extra_queries)`, so the loss falls only on the answers: the needle sentence(s), then
the numbers of the needles asked back one by one, for a task; the repeat for the copy drills that
a model trained from scratch needs before retrieval appears (plain language-model text teaches it
far too slowly for a CPU budget). Lengths are drawn per bucket, so one dataset serves every
stage: with `long_examples="drop"` a stage never sees tasks longer than its rows, and with
`min_example_len` a later stage reads only its own bucket.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Sequence

import numpy as np

from lwm.data.needles import (
    DEFAULT_KEYS,
    Haystack,
    make_needle_task,
    make_question,
)
from lwm.data.synth import NOISE_SENTENCES, write_text_corpus
from lwm.data.tokenizer import Tokenizer
from lwm.errors import LwmError
from lwm.io import write_jsonl


def fields_spec(extra_queries: int) -> str:
    """Field spec of the demo dataset: the prompt (masked), its answer (trained), then up to
    `extra_queries` further (masked cue, trained answer) pairs; unused pairs are empty strings."""
    extra = "".join(f",[q{i}],a{i}" for i in range(2, extra_queries + 2))
    return "[context+question],answer" + extra


@dataclasses.dataclass(frozen=True)
class TaskBucket:
    """`count` needle tasks (and as many copy drills, times the copy ratio) with lengths (in
    tokens) drawn uniformly from [min_len, max_len], each with at least `min_keys` needles
    (fewer only when they do not fit the length)."""

    min_len: int
    max_len: int
    count: int
    min_keys: int = 1

    @classmethod
    def parse(cls, entry: Sequence) -> TaskBucket:
        """A bucket from a config entry `[min_len, max_len, count]` or `[..., min_keys]`."""
        if len(entry) not in (3, 4) or not all(float(x) == int(x) >= 0 for x in entry):
            raise LwmError(
                f"demo.task_buckets entry {list(entry)}: expected [min_tokens, max_tokens, "
                "count] or [min_tokens, max_tokens, count, min_needles], non-negative integers"
            )
        bucket = cls(*(int(x) for x in entry))
        if bucket.min_len > bucket.max_len or bucket.min_keys < 1:
            raise LwmError(
                f"demo.task_buckets entry {list(entry)}: needs min_tokens <= max_tokens and "
                "min_needles >= 1"
            )
        return bucket


def write_corpus(path: str | os.PathLike, num_sentences: int, *, seed: int = 0) -> None:
    """Tokenizer training text: random sentences, needle sentences and the eval's questions, so
    every word the tasks use becomes a whole piece (digits are split by the tokenizer)."""
    write_text_corpus(path, num_sentences, seed=seed)
    lines = []
    for i, key in enumerate(DEFAULT_KEYS):
        lines.append(make_question([key], 1) + " Question: Answer:")
        lines.append(make_question([key, DEFAULT_KEYS[(i + 1) % len(DEFAULT_KEYS)]], 1))
        lines.append(make_question([key], 2))
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def recall_cue(key: str) -> str:
    """The masked cue of an extra query: the needle sentence up to its number."""
    return f"The special magic {key} number is:"


def _record(context: str, question: str, answer: str, extra, extra_queries: int) -> dict:
    rec = {"context": context, "question": question, "answer": answer}
    for i in range(extra_queries):
        q, a = extra[i] if i < len(extra) else ("", "")
        rec[f"q{i + 2}"], rec[f"a{i + 2}"] = q, a
    return rec


def needle_records(
    tokenizer: Tokenizer,
    buckets: Sequence[TaskBucket],
    *,
    max_keys: int,
    max_queries: int,
    extra_queries: int = 0,
    haystack: str = "noise",
    seed: int = 0,
    exclude_seeds: Collection[int] = (),
    progress: bool = False,
) -> list[dict]:
    """Needle tasks: per task, lengths uniform in the bucket, depth uniform in [0, 1],
    bucket.min_keys..max_keys needles (fewer when they do not fit the length), of which
    1..min(keys, max_queries) are asked in the eval's question form. The needles not asked there
    are then asked back one by one (up to `extra_queries`, in a random order): `recall_cue(key)`
    as a masked cue, the number as the trained answer. Every needle in a row is a lookup at its
    own distance, which trains retrieval across the whole row several times per example instead
    of once. No task uses a seed in `exclude_seeds` (the eval's sample seeds): whatever the
    data seed, the training data holds no eval sample."""
    rng = np.random.default_rng(seed)
    exclude = set(exclude_seeds)
    hay = Haystack(haystack)
    total = sum(b.count for b in buckets)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="needle tasks", leave=False, dynamic_ncols=True)
    out = []
    for b in buckets:
        for _ in range(b.count):
            length = int(rng.integers(b.min_len, b.max_len + 1))
            # Each needle costs ~17 tokens, its extra query ~15, the question + answer ~40.
            keys = int(rng.integers(min(b.min_keys, max_keys), max_keys + 1))
            keys = min(keys, max(1, (length - 48) // 32))
            queries = int(rng.integers(1, min(keys, max_queries) + 1))
            depth, task_seed = float(rng.uniform()), int(rng.integers(1 << 62))
            while task_seed in exclude:
                task_seed = int(rng.integers(1 << 62))
            while True:  # fewer needles when they do not fit the length
                queries = min(queries, keys)
                spare = max(0, min(keys - queries, extra_queries))
                try:
                    task = make_needle_task(
                        tokenizer,
                        length - 16 * spare,  # room for the extra queries (~15 tokens each)
                        depth=depth,
                        num_keys=keys,
                        num_queries=queries,
                        haystack=hay,
                        seed=task_seed,
                    )
                    break
                except LwmError:
                    if keys == 1:
                        raise
                    keys -= 1
            rest = [n for n in task.needles if not n.queried]
            extra = [(recall_cue(rest[i].key), f"{rest[i].value}.") for i in rng.permutation(spare)]
            out.append(_record(task.context, task.question, task.answer, extra, extra_queries))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return out


def copy_items(tokenizer: Tokenizer) -> list[int]:
    """Single-token copy items: each needle key's piece and each digit's piece (without the word
    boundary piece a digit after a space gets)."""
    return sorted({tokenizer.encode(w)[-1] for w in [*DEFAULT_KEYS, *"0123456789"]})


def copy_ratios(ratio: float | Sequence[float], num_buckets: int) -> list[float]:
    """`demo.copy_ratio` per bucket: one number for all, or a list with one per bucket."""
    values = [ratio] * num_buckets if isinstance(ratio, (int, float)) else list(ratio)
    if len(values) != num_buckets or not all(
        isinstance(v, (int, float)) and v >= 0 for v in values
    ):
        raise LwmError(
            f"demo.copy_ratio {ratio!r}: expected a non-negative number or a list of "
            f"{num_buckets} (one per demo.task_buckets entry)"
        )
    return [float(v) for v in values]


def check_digit_fraction(fraction: float) -> None:
    """`demo.copy_digit_fraction`, a share in [0, 1], or a one-line error."""
    if not 0.0 <= fraction <= 1.0:
        raise LwmError(f"demo.copy_digit_fraction must be in [0, 1], got {fraction}")


def copy_records(
    tokenizer: Tokenizer,
    buckets: Sequence[TaskBucket],
    *,
    ratio: float | Sequence[float] = 1.0,
    min_items: int = 6,
    max_items: int = 16,
    extra_queries: int = 0,
    digit_fraction: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """Copy drills, as token ids: random items (`copy_items`), haystack filler, then the items again
    (only the repeat is trained on); `ratio` x each bucket's count (one ratio, or one per bucket),
    with the total length drawn in the bucket. Content-based copying (an induction head) is the
    first thing a model from scratch must learn before it can retrieve anything, and these rows
    teach it fastest. Why ids, not text: as text, every digit after a space is preceded by the same
    word-boundary piece, so "the token after the current one" is ambiguous and the copy circuit
    formed far later (measured: no retrieval after 700 steps, against 0.26 loss with ids). The
    filler puts the source at every distance up to the row length: a copy circuit learned only at
    short range does not reach farther (measured: copying across 100+ filler tokens stayed near
    chance for a model trained on adjacent repeats).

    `digit_fraction` of the drills copy digits only: with 10 symbols most items recur within a
    drill, as digits do in the needles' 7-digit numbers, so "the token after the previous
    occurrence of this one" is ambiguous and the copy must match the tokens before it too
    (measured: a model trained on drills of 42 symbols, which rarely repeat, answered needles
    with the right digits until a repeated one, then continued from the wrong occurrence)."""
    check_digit_fraction(digit_fraction)
    ratios = copy_ratios(ratio, len(buckets))
    rng = np.random.default_rng(seed + 29)
    items = copy_items(tokenizer)
    digits = sorted({tokenizer.encode(d)[-1] for d in "0123456789"})
    noise = [tokenizer.encode(x) for x in NOISE_SENTENCES]
    out = []
    for b, r in zip(buckets, ratios):
        for _ in range(int(round(r * b.count))):
            target = int(rng.integers(b.min_len, b.max_len + 1))
            n = min(int(rng.integers(min_items, max_items + 1)), max(1, (target - 3) // 2))
            pool = digits if digit_fraction and rng.random() < digit_fraction else items
            chosen = [int(pool[int(i)]) for i in rng.integers(0, len(pool), n)]
            budget = target - 2 * n - 3  # BOS, the separator's piece (if any), EOS
            fill, j = [], int(rng.integers(len(noise)))
            while len(fill) + len(noise[j % len(noise)]) <= budget:
                fill += noise[j % len(noise)]
                j += 1
            out.append(_record(chosen + fill, "", chosen, [], extra_queries))
    return out


def write_records(path: str | os.PathLike, records: Sequence[dict], *, seed: int = 0) -> int:
    """Writes the records shuffled (seeded) to a jsonl file atomically; returns the count."""
    order = np.random.default_rng(seed).permutation(len(records))
    write_jsonl(path, [records[int(i)] for i in order])
    return len(records)
