"""A step-addressed synthetic data source with the data loader's interface.

Batch `i` is a pure function of `(seed, seq_len, i)`, so the iterator state is just `{"index": i}`
and a resumed run sees exactly the batches an uninterrupted one would. Rows are learnable
arithmetic progressions (`tok[t+1] = tok[t] + stride mod V`), packed as two documents per row with
trailing padding; with `vision_fraction > 0` the second document is made of vision codes, which
exercises the split text/vision loss.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from lwm.errors import ConfigError
from lwm.sharding import logical_to_sharding


def synthetic_batch(
    index: int,
    *,
    seed: int,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    vision_vocab_size: int = 0,
    vision_fraction: float = 0.0,
) -> dict[str, np.ndarray]:
    """Host numpy batch number `index` (all arrays `[B, T]`)."""
    rng = np.random.default_rng([seed, seq_len, index])
    b, t = batch_size, seq_len
    tokens = np.zeros((b, t + 1), np.int32)
    vision = np.zeros((b, t + 1), bool)
    segment_ids = np.zeros((b, t + 1), np.int32)
    positions = np.zeros((b, t + 1), np.int32)
    for r in range(b):
        pad = int(rng.integers(0, max(1, t // 8)))
        used = t + 1 - pad
        split = int(rng.integers(max(2, used // 4), max(3, 3 * used // 4)))
        for seg, (lo, hi) in enumerate(((0, split), (split, used)), start=1):
            n = hi - lo
            is_vision = seg == 2 and vision_vocab_size > 0 and rng.random() < vision_fraction
            vocab = vision_vocab_size if is_vision else vocab_size
            start, stride = rng.integers(0, vocab), rng.integers(1, 8)
            tokens[r, lo:hi] = (start + stride * np.arange(n)) % vocab
            vision[r, lo:hi] = is_vision
            segment_ids[r, lo:hi] = seg
            positions[r, lo:hi] = np.arange(n)
    same_doc = (segment_ids[:, :-1] == segment_ids[:, 1:]) & (segment_ids[:, :-1] > 0)
    return {
        "tokens": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": same_doc.astype(np.float32),
        "vision_mask": vision[:, :-1],
        "target_vision_mask": vision[:, 1:],
        "segment_ids": segment_ids[:, :-1],
        "positions": positions[:, :-1],
    }


class SyntheticIterator(Iterator[dict[str, jax.Array]]):
    """Yields global jax Arrays sharded batch over (dp, fsdp) and length over sp."""

    def __init__(self, *, mesh: Mesh, seed: int, batch_size: int, seq_len: int, **batch_kw: Any):
        self.mesh, self.seed, self.batch_size, self.seq_len = mesh, seed, batch_size, seq_len
        self.batch_kw = batch_kw
        self.index = 0
        self.sharding = logical_to_sharding(("batch", "length"), (batch_size, seq_len), mesh)

    def __next__(self) -> dict[str, jax.Array]:
        host = synthetic_batch(
            self.index,
            seed=self.seed,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            **self.batch_kw,
        )
        self.index += 1
        # Every process computes the (cheap) global batch and contributes its addressable shards.
        return {
            k: jax.make_array_from_callback(v.shape, self.sharding, lambda idx, v=v: v[idx])
            for k, v in host.items()
        }

    def get_state(self) -> dict[str, Any]:
        return {"source": "synthetic", "index": self.index, "seq_len": self.seq_len}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("source") != "synthetic":
            raise ConfigError(f"data state {dict(state)} is not from the synthetic source")
        self.index = int(state["index"])


def make_synthetic_iterator(
    *,
    seq_len: int,
    global_batch_size: int,
    mesh: Mesh,
    seed: int,
    vocab_size: int,
    vision_vocab_size: int = 0,
    vision_fraction: float = 0.0,
) -> SyntheticIterator:
    """`vision_fraction`: share of rows whose 2nd document is vision (`data.vision_fraction`)."""
    return SyntheticIterator(
        mesh=mesh,
        seed=seed,
        batch_size=global_batch_size,
        seq_len=seq_len,
        vocab_size=vocab_size,
        vision_vocab_size=vision_vocab_size,
        vision_fraction=vision_fraction,
    )
