"""Seeded synthetic text: pseudo-English sentences (tokenizer training, language-model filler) and
repeated noise sentences (RULER-style haystacks). Nothing is downloaded."""

from __future__ import annotations

import pathlib
import re

import numpy as np

from lwm.data.needle_text import DEFAULT_KEYS, needle_sentence
from lwm.errors import LwmError
from lwm.io import write_text

# Plain, repetitive filler for haystacks: easy for a model to learn to skip over.
NOISE_SENTENCES = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)

_SUBJECTS = (
    "the river",
    "a small dog",
    "the old farmer",
    "my neighbour",
    "the quiet city",
    "a red kite",
    "the teacher",
    "every student",
    "the long train",
    "a tired painter",
    "the north wind",
    "our garden",
    "the baker",
    "a curious child",
    "the mountain road",
    "the night market",
)
_VERBS = (
    "watches",
    "follows",
    "carries",
    "remembers",
    "builds",
    "paints",
    "crosses",
    "finds",
    "opens",
    "describes",
    "visits",
    "counts",
    "covers",
    "keeps",
    "lifts",
    "answers",
)
_OBJECTS = (
    "the wooden bridge",
    "a bright lantern",
    "seven letters",
    "the winter field",
    "a heavy box",
    "the empty station",
    "two green apples",
    "the morning light",
    "a broken clock",
    "the harbour",
    "an open window",
    "the silver lake",
    "a folded map",
    "the evening bells",
    "three paper boats",
)
_TAILS = (
    "",
    "",
    " before the rain",
    " after lunch",
    " near the old mill",
    " without a word",
    " every spring",
    " in the afternoon",
    " with great care",
    " for the third time",
)


def random_sentences(n: int, *, seed: int = 0) -> list[str]:
    """`n` seeded pseudo-English sentences (varied enough to train a small tokenizer)."""
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, len(p), size=n) for p in (_SUBJECTS, _VERBS, _OBJECTS, _TAILS)]
    out = []
    for s, v, o, t in zip(*idx):
        text = f"{_SUBJECTS[s]} {_VERBS[v]} {_OBJECTS[o]}{_TAILS[t]}."
        out.append(text[0].upper() + text[1:])
    return out


def noise_sentences(n: int, *, offset: int = 0) -> list[str]:
    """`n` noise sentences cycling through NOISE_SENTENCES, starting at `offset`."""
    k = len(NOISE_SENTENCES)
    return [NOISE_SENTENCES[(offset + i) % k] for i in range(n)]


def write_text_corpus(path: str | pathlib.Path, num_sentences: int, *, seed: int = 0) -> None:
    """A text file of random sentences, a few per line, plus the needle vocabulary (digits, keys)
    so a tokenizer trained on it covers the long-context tasks."""
    rng = np.random.default_rng(seed + 1)
    sents = random_sentences(num_sentences, seed=seed)
    lines = [" ".join(sents[i : i + 4]) for i in range(0, len(sents), 4)]
    for i, key in enumerate(DEFAULT_KEYS):
        lines.insert(
            (i * 7919) % max(1, len(lines)), needle_sentence(key, f"{rng.integers(10**7):07d}")
        )
    lines.append(" ".join(NOISE_SENTENCES))
    write_text(path, "\n".join(lines) + "\n")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Splits at whitespace after `.`, `!` or `?` (collapsing inner whitespace)."""
    return [s for s in (" ".join(p.split()) for p in _SENTENCE_END.split(text)) if s]


def text_dir_sentences(directory: str | pathlib.Path) -> list[str]:
    """All sentences of the `.txt` files under `directory`, in sorted file order."""
    d = pathlib.Path(directory)
    if not d.is_dir():
        raise LwmError(f"haystack directory not found: {d}")
    sents: list[str] = []
    for f in sorted(d.rglob("*.txt")):
        sents.extend(split_sentences(f.read_text(encoding="utf-8", errors="replace")))
    if not sents:
        raise LwmError(f"haystack directory {d} holds no text (.txt files)")
    return sents


def jsonl_sentences(path: str | pathlib.Path, key: str = "text") -> list[str]:
    """All sentences of the `key` field of each record of a `.jsonl` file (e.g. documents)."""
    import json

    from lwm.data.json_input import loads_bounded

    p = pathlib.Path(path)
    if not p.is_file():
        raise LwmError(f"haystack file not found: {p}")
    sents: list[str] = []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = loads_bounded(line)
            except ValueError as e:  # JSONDecodeError, or nested too deeply
                why = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
                raise LwmError(f"{p}:{lineno}: not valid JSON ({why})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
                raise LwmError(f"{p}:{lineno}: expected an object with a string {key!r} field")
            sents.extend(split_sentences(rec[key]))
    if not sents:
        raise LwmError(f"haystack file {p} holds no text")
    return sents
