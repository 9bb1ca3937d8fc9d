"""The demo's training data, generated locally: a tokenizer corpus, needle-retrieval tasks mixed
with plain language-model text, and the tokenized dataset the trainer reads.

Every task is a record `{"context", "question", "answer"}` built with `[context+question],answer`,
so the loss falls only on the answer (the needle sentence, then EOS); language-model records have
an empty prompt and their whole text as `answer`. Task lengths are drawn per bucket, so one dataset
serves every stage: with `long_examples="drop"`, a stage simply never sees tasks longer than its
rows.
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
from lwm.data.synth import random_sentences, write_text_corpus
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


def lm_records(
    num: int, *, sentences_per_doc: int = 12, needles_per_doc: int = 3, seed: int = 0
) -> list[dict]:
    """Language-model documents trained on in full: a block of random sentences with needle
    sentences (random keys and numbers) among them, then the same block again. The numbers in
    the second copy can only be predicted by finding them earlier in the context, so every such
    document is dense practice of the copying that needle retrieval needs (in a task only the 7
    answer digits carry that signal)."""
    rng = np.random.default_rng(seed + 17)
    sents = random_sentences(num * sentences_per_doc, seed=seed + 17)
    out = []
    for i in range(num):
        block = sents[i * sentences_per_doc : (i + 1) * sentences_per_doc]
        keys = rng.choice(len(DEFAULT_KEYS), size=needles_per_doc, replace=False)
        for k in keys:
            value = f"{int(rng.integers(1_000_000, 10_000_000)):07d}"
            block.insert(int(rng.integers(len(block) + 1)), needle_sentence(DEFAULT_KEYS[k], value))
        text = " ".join(block)
        out.append({"context": "", "question": "", "answer": f"{text} {text}"})
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
