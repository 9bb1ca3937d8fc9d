"""Needle-in-a-haystack tasks (LWM's needle form, RULER's retrieval variants), seeded.

A haystack of about `num_tokens` tokens (in the given tokenizer) is built from noise sentences,
random sentences, or a directory of `.txt` essays; needles "The special magic {key} number is:
{7-digit}." are inserted at the sentence boundary nearest the requested depth. Variants: one needle;
multi-key (distractor needles with other keys); multi-value (one key, several numbers, all asked);
multi-query (several keys asked at once). Each task reports every needle's actual token depth.
"""

from __future__ import annotations

import bisect
import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from lwm.data.needle_text import DEFAULT_KEYS, needle_sentence
from lwm.data.synth import (
    jsonl_sentences,
    noise_sentences,
    random_sentences,
    text_dir_sentences,
)
from lwm.data.tokenizer import Tokenizer
from lwm.errors import LwmError


@dataclasses.dataclass(frozen=True)
class Needle:
    key: str
    value: str
    depth: float
    """Requested depth as a fraction of the haystack (0 = start, 1 = end)."""
    token_depth: int
    """Token offset of the needle's first token in the encoded context."""
    queried: bool
    """Whether the question asks for this needle."""


@dataclasses.dataclass(frozen=True)
class NeedleTask:
    context: str
    """Haystack with the needles inserted."""
    question: str
    answer: str
    """Target text: the queried needle sentence(s)."""
    answers: tuple[str, ...]
    """The numbers a correct reply must contain."""
    needles: tuple[Needle, ...]
    context_tokens: int
    """Length of the encoded context."""

    def to_record(self) -> dict[str, Any]:
        """A jsonl record for `lwm data build --fields "[context+question],answer"`."""
        return {
            "context": self.context,
            "question": self.question,
            "answer": self.answer,
            "answers": list(self.answers),
            "needle_depths": [n.token_depth for n in self.needles if n.queried],
            "context_tokens": self.context_tokens,
        }


class Haystack:
    """A source of filler sentences: `noise`, `random`, a directory of `.txt` files, or a `.jsonl`
    file of documents (their `text` field)."""

    def __init__(self, kind: str | pathlib.Path = "noise"):
        self.kind = str(kind)
        self._dir_sents: list[str] | None = None
        if self.kind.endswith(".jsonl") and pathlib.Path(self.kind).is_file():
            self._dir_sents = jsonl_sentences(self.kind)
        elif self.kind not in ("noise", "random"):
            self._dir_sents = text_dir_sentences(self.kind)

    def sentences(self, n: int, rng: np.random.Generator) -> list[str]:
        if self.kind == "noise":
            return noise_sentences(n, offset=int(rng.integers(1 << 16)))
        if self.kind == "random":
            return random_sentences(n, seed=int(rng.integers(1 << 31)))
        src = self._dir_sents
        start = int(rng.integers(len(src)))
        return [src[(start + i) % len(src)] for i in range(n)]


def make_question(keys: Sequence[str], num_values: int) -> str:
    if len(keys) == 1 and num_values == 1:
        return f"What is the special magic {keys[0]} number?"
    if len(keys) == 1:
        return f"What are all the special magic numbers for {keys[0]}?"
    listed = ", ".join(keys[:-1]) + f" and {keys[-1]}"
    return f"What are the special magic numbers for {listed}?"


def make_needle_task(
    tokenizer: Tokenizer,
    num_tokens: int,
    *,
    depth: float | Sequence[float] = 0.5,
    num_keys: int = 1,
    num_values: int = 1,
    num_queries: int = 1,
    haystack: Haystack | str = "noise",
    keys: Sequence[str] = DEFAULT_KEYS,
    seed: int = 0,
    question_template: str = "\nQuestion: {question}\nAnswer:",
) -> NeedleTask:
    """One task whose full example (context, question, answer, BOS/EOS) fits in `num_tokens`.

    `depth`: one fraction for all queried needles (distractors go to seeded random depths), or one
    per needle (key-major order: key 0's values first). `num_keys` keys with `num_values` numbers
    each; the first `num_queries` keys (in a seeded order) are asked.
    """
    if not 1 <= num_queries <= num_keys:
        raise LwmError(f"num_queries must be in [1, num_keys={num_keys}], got {num_queries}")
    if num_values < 1:
        raise LwmError(f"num_values must be >= 1, got {num_values}")
    if num_keys > len(keys):
        raise LwmError(f"{num_keys} needle keys asked for but only {len(keys)} available")
    rng = np.random.default_rng(seed)
    hay = haystack if isinstance(haystack, Haystack) else Haystack(haystack)
    chosen = [keys[i] for i in rng.permutation(len(keys))[:num_keys]]
    values = _distinct_values(rng, num_keys * num_values)
    n_total = num_keys * num_values
    if isinstance(depth, int | float):
        depths = [
            float(depth) if k < num_queries else float(rng.uniform())
            for k in range(num_keys)
            for _ in range(num_values)
        ]
    else:
        depths = [float(d) for d in depth]
        if len(depths) != n_total:
            raise LwmError(f"{len(depths)} depths given for {n_total} needles")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise LwmError(f"needle depths must lie in [0, 1], got {depths}")
    specs = [
        (chosen[k], values[k * num_values + v], depths[k * num_values + v], k < num_queries)
        for k in range(num_keys)
        for v in range(num_values)
    ]
    queried_keys = chosen[:num_queries]
    question = question_template.format(question=make_question(queried_keys, num_values))
    answer_sents = [needle_sentence(k, v) for k, v, _, q in specs if q]
    answer = " ".join(answer_sents)
    needle_texts = [needle_sentence(k, v) for k, v, _, _ in specs]
    overhead = (
        len(tokenizer.encode(question))
        + len(tokenizer.encode(answer))
        + sum(len(tokenizer.encode(t)) for t in needle_texts)
        + 2
    )
    budget = num_tokens - overhead
    if budget < 1:
        raise LwmError(f"num_tokens={num_tokens} leaves no room for a haystack ({overhead} used)")

    # Haystack sentences and their token counts (sentencepiece pieces never span a space, nor do
    # byte-level BPE's, so the tokens of " ".join(s) are the concatenation of each sentence's
    # tokens as it is encoded there: after a space, for the BPE ones).
    sents: list[str] = []
    cum = [0]
    while cum[-1] < budget:
        more = hay.sentences(max(16, (budget - cum[-1]) // 4), rng)
        for s, ids in zip(more, _encode_pieces(tokenizer, more, first=not sents)):
            if cum[-1] + len(ids) > budget:
                break
            sents.append(s)
            cum.append(cum[-1] + len(ids))
        else:
            continue
        break

    # Sentence boundary nearest each depth; stable order for needles at the same boundary.
    total = cum[-1]
    slots = []
    for i, (_, _, d, _) in enumerate(specs):
        target = d * total
        j = bisect.bisect_left(cum, target)
        cands = [c for c in (j - 1, j) if 0 <= c < len(cum)]
        slots.append((min(cands, key=lambda c: (abs(cum[c] - target), c)), i))
    slots.sort()
    pieces: list[str] = []
    starts: dict[int, int] = {}
    prev = 0
    for boundary, i in slots:
        pieces.extend(sents[prev:boundary])
        prev = boundary
        starts[i] = len(pieces)
        pieces.append(needle_texts[i])
    pieces.extend(sents[prev:])
    context = " ".join(pieces)

    piece_ids = _encode_pieces(tokenizer, pieces, first=True)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in piece_ids])]).tolist()
    needles = tuple(
        Needle(k, v, d, int(offsets[starts[i]]), q) for i, (k, v, d, q) in enumerate(specs)
    )
    answers = tuple(v for _, v, _, q in specs if q)
    return NeedleTask(context, question, answer, answers, needles, int(offsets[-1]))


def _encode_pieces(tokenizer: Tokenizer, pieces: list[str], *, first: bool) -> list[list[int]]:
    """The tokens each piece has inside `" ".join(...)`: an HF tokenizer sees the space before all
    but the first piece (a sentencepiece model marks word starts itself)."""
    if tokenizer.kind == "sentencepiece":
        return tokenizer.encode_batch(pieces)
    spaced = [p if first and i == 0 else " " + p for i, p in enumerate(pieces)]
    return tokenizer.encode_batch(spaced)


def _distinct_values(rng: np.random.Generator, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        v = f"{int(rng.integers(1_000_000, 10_000_000)):07d}"
        if v not in out:
            out.append(v)
    return out
