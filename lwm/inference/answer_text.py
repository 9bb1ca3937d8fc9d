"""Generated ids -> text: cut at the first stop id, skip ids the tokenizer lacks.

A model's vocabulary can be larger than its tokenizer's (embedding tables padded to a multiple of
64 or 128, as Qwen2.5's and many converted models' are): a random or badly trained model can emit
such an id, and decoding it would crash sentencepiece. It has no text, so it prints as nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from lwm.inference.sampling import EosIds, eos_set


def until_stop(ids: Iterable[int], stop_ids: EosIds) -> list[int]:
    """The ids before the first stop id (the answer proper, as transformers' `generate` stops)."""
    stops = eos_set(stop_ids)
    out = []
    for i in ids:
        if int(i) in stops:
            break
        out.append(int(i))
    return out


def known_ids(tokenizer, ids: Iterable[int]) -> list[int]:
    """The ids that the tokenizer has a piece for."""
    n = tokenizer.vocab_size
    return [int(i) for i in ids if 0 <= int(i) < n]


def answer_text(tokenizer, ids: Iterable[int], stop_ids: EosIds = None) -> str:
    """The text of generated ids up to the first stop id (special tokens skipped)."""
    return tokenizer.decode(known_ids(tokenizer, until_stop(ids, stop_ids)))
