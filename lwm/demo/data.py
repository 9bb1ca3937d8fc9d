"""The demo's training data, generated locally: a tokenizer corpus, needle-retrieval tasks mixed
with plain language-model text, and the tokenized dataset the trainer reads.

Every record is `{"context", "question", "answer"}` built with `[context+question],answer`, so
the loss falls only on the answer: the needle sentence(s) then EOS for a task; the repeat for the
copy and associative-recall drills that a model trained from scratch needs before retrieval
appears (plain language-model text teaches it far too slowly for a CPU budget). Task lengths are
drawn per bucket, so one dataset serves every stage: with `long_examples="drop"`, a stage simply
never sees tasks longer than its rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from lwm.data.needles import (
    DEFAULT_KEYS,
    Haystack,
    make_needle_task,
    make_question,
    needle_sentence,
)
from lwm.data.synth import write_text_corpus
from lwm.data.tokenizer import Tokenizer

FIELDS = "[context+question],answer"
"""Field spec of the demo dataset (the prompt is masked, the answer trained on)."""


@dataclasses.dataclass(frozen=True)
class TaskBucket:
    """`count` needle tasks with lengths (in tokens) drawn uniformly from [min_len, max_len]."""

    min_len: int
    max_len: int
    count: int


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


def needle_records(
    tokenizer: Tokenizer,
    buckets: Sequence[TaskBucket],
    *,
    max_keys: int,
    max_queries: int,
    haystack: str = "noise",
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Needle tasks: per task, lengths uniform in the bucket, depth uniform in [0, 1], 1..max_keys
    keys (the others are distractors) of which 1..min(keys, max_queries) are asked."""
    rng = np.random.default_rng(seed)
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
            # Short tasks have room for fewer needles (each costs ~20 tokens, the Q/A ~40).
            keys = min(int(rng.integers(1, max_keys + 1)), max(1, (length - 64) // 24))
            queries = int(rng.integers(1, min(keys, max_queries) + 1))
            task = make_needle_task(
                tokenizer,
                length,
                depth=float(rng.uniform()),
                num_keys=keys,
                num_queries=queries,
                haystack=hay,
                seed=int(rng.integers(1 << 62)),
            )
            out.append({"context": task.context, "question": task.question, "answer": task.answer})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return out


def copy_records(num: int, *, min_items: int = 4, max_items: int = 24, seed: int = 0) -> list[dict]:
    """Copy drills: a random string of needle keys and digits, then the same string again (only
    the repeat is trained on). Content-based copying (an induction head) is the first thing a
    model from scratch must learn before it can retrieve anything, and these rows are the
    densest signal for it: every repeated token is predictable only by finding it earlier."""
    rng = np.random.default_rng(seed + 29)
    words = [*DEFAULT_KEYS, *"0123456789"]
    out = []
    for _ in range(num):
        n = int(rng.integers(min_items, max_items + 1))
        text = " ".join(words[int(i)] for i in rng.integers(0, len(words), n))
        out.append({"context": text, "question": "", "answer": text})
    return out


def recall_records(num: int, *, min_keys: int = 2, max_keys: int = 6, seed: int = 0) -> list[dict]:
    """Associative-recall drills: needle sentences with random keys and numbers, then the same
    needles in a shuffled order as the answer. Each repeated number must be looked up by its key
    (what the needle test asks), and a row carries several lookups instead of one."""
    rng = np.random.default_rng(seed + 31)
    out = []
    for _ in range(num):
        k = int(rng.integers(min_keys, max_keys + 1))
        keys = [DEFAULT_KEYS[int(i)] for i in rng.permutation(len(DEFAULT_KEYS))[:k]]
        values = [f"{int(rng.integers(1_000_000, 10_000_000)):07d}" for _ in keys]
        first = " ".join(needle_sentence(c, v) for c, v in zip(keys, values))
        again = " ".join(needle_sentence(keys[int(i)], values[int(i)]) for i in rng.permutation(k))
        out.append({"context": first, "question": "", "answer": again})
    return out


def write_records(path: str | os.PathLike, records: Sequence[dict], *, seed: int = 0) -> int:
    """Writes the records shuffled (seeded) to a jsonl file atomically; returns the count."""
    path = pathlib.Path(path)
    order = np.random.default_rng(seed).permutation(len(records))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in order:
            f.write(json.dumps(records[int(i)]) + "\n")
    os.replace(tmp, path)
    return len(records)
