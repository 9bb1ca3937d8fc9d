"""Token selection from logits: greedy, temperature, top-k and top-p (nucleus), inside jit."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lwm.errors import LwmError

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen (hashable: one compiled decode step per config)."""

    temperature: float = 0.0
    """Softmax temperature; 0 = greedy (argmax, deterministic)."""
    top_k: int = 0
    """Sample only among the k most likely tokens; 0 = no limit."""
    top_p: float = 1.0
    """Sample only from the smallest set of tokens whose probability reaches p; 1 = no limit."""

    def __post_init__(self):
        if not self.temperature >= 0:
            raise LwmError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise LwmError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise LwmError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingConfig()
"""The default: greedy decoding."""


def filter_logits(logits_bv: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets every logit outside the top-k / top-p set to -inf (ties at the border are kept)."""
    logits_bv = logits_bv.astype(jnp.float32)
    v = logits_bv.shape[-1]
    if 0 < top_k < v:
        kth = jax.lax.top_k(logits_bv, top_k)[0][..., -1:]
        logits_bv = jnp.where(logits_bv < kth, NEG_INF, logits_bv)
    if top_p < 1.0:
        sorted_bv = jnp.sort(logits_bv, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_bv, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        keep = before < top_p  # the first token always stays
        threshold = jnp.min(jnp.where(keep, sorted_bv, jnp.inf), axis=-1, keepdims=True)
        logits_bv = jnp.where(logits_bv < threshold, NEG_INF, logits_bv)
    return logits_bv


def sample_logits(logits_bv: jax.Array, key: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Next token ids `[B]` (int32) from logits `[B, V]`."""
    if cfg.greedy:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    logits_bv = filter_logits(logits_bv, top_k=cfg.top_k, top_p=cfg.top_p)
    return jax.random.categorical(key, logits_bv / cfg.temperature, axis=-1).astype(jnp.int32)


EosIds = int | Sequence[int] | None
"""Where generation stops: no id, one id, or several (Llama-3: `<|eot_id|>`, `<|end_of_text|>`)."""


def eos_set(eos_id: EosIds) -> frozenset[int]:
    """The stop ids of an `EosIds` as a set (empty: never stop early)."""
    if eos_id is None:
        return frozenset()
    if isinstance(eos_id, int | np.integer):
        return frozenset((int(eos_id),))
    return frozenset(int(i) for i in eos_id)


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def pad_rows(x: np.ndarray, fill) -> np.ndarray:
    """`x` with its first axis padded with `fill` to a power of two (at least 16)."""
    rows = next_pow2(max(x.shape[0], 16))
    pad = np.full((rows - x.shape[0], *x.shape[1:]), fill, x.dtype)
    return np.concatenate([x, pad])


def cut_rows(
    rows: list[list[int]], prompt_lengths: Sequence[int], max_len: int, eos_id: EosIds
) -> list[list[int]]:
    """Generated rows cut after their first stop id and where prompt + row reach `max_len`."""
    stops, out = eos_set(eos_id), []
    for row, n in zip(rows, prompt_lengths):
        row = row[: max(0, max_len - n)]
        ends = [i for i, t in enumerate(row) if t in stops]
        out.append(row[: ends[0] + 1] if ends else row)
    return out
