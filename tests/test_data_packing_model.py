"""Packing is real through the model: with ring attention over 8 simulated devices, the logits of
document B in a packed row do not depend on the document A packed before it."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lwm.data.packing import materialize_row
from lwm.models.config import ModelConfig
from lwm.models.transformer import Transformer
from lwm.sharding import make_mesh

SEQ = 64
RING_READY = importlib.util.find_spec("lwm.attention.ring") is not None


def _example(tokens):
    n = len(tokens)
    return {
        "tokens": np.asarray(tokens, np.int32),
        "loss_mask": np.ones(n, np.uint8),
        "vision_mask": np.zeros(n, np.uint8),
    }


def _batch(a_tokens, b_tokens):
    """Row 0: A then B (packed); row 1: B alone. Built by the loader's own row code."""
    exs = {0: _example(a_tokens), 1: _example(b_tokens)}
    na, nb = len(a_tokens) - 1, len(b_tokens) - 1
    rows = [
        materialize_row([(0, 0, na), (1, 0, nb)], exs, SEQ, pad_id=0),
        materialize_row([(1, 0, nb)], exs, SEQ, pad_id=0),
    ]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}, na, nb


@pytest.fixture(scope="module")
def forward():
    # dense-attention packing is covered by the model's own tests; this is the ring path.
    if not RING_READY:
        pytest.skip("ring backend not yet available")
    cfg = ModelConfig.from_dict(
        dict(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=48,
            num_layers=1,
            num_heads=4,
            num_kv_heads=2,
            attention={"backend": "ring", "query_chunk_size": 8, "key_chunk_size": 8},
        )
    )
    mesh = make_mesh({"dp": 1, "fsdp": 2, "tp": 1, "sp": 4})
    model = Transformer(cfg, rngs=nnx.Rngs(0), mesh=mesh)

    @nnx.jit
    def fwd(m, tokens, positions, segment_ids):
        return m(tokens, positions_bt=positions, segment_ids_bt=segment_ids).logits

    def run(batch, *, segments=True):
        seg = batch["segment_ids"]
        if not segments:
            batch = {**batch, "positions": np.broadcast_to(np.arange(SEQ), (2, SEQ))}
        return np.asarray(
            fwd(
                model,
                jnp.asarray(batch["tokens"]),
                jnp.asarray(batch["positions"]),
                # Control: one segment over all real tokens (same compiled function).
                jnp.asarray(seg if segments else (seg > 0).astype(np.int32)),
            )
        )

    return run


def test_document_b_ignores_document_a(forward):
    rng = np.random.default_rng(0)
    a1, a2 = rng.integers(3, 97, 24), rng.integers(3, 97, 24)
    b = rng.integers(3, 97, 31)
    batch1, na, nb = _batch(a1, b)
    batch2, _, _ = _batch(a2, b)
    # Positions restart in each segment; padding is segment 0.
    assert batch1["positions"][0, na : na + nb].tolist() == list(range(nb))
    assert batch1["segment_ids"][0].tolist() == [1] * na + [2] * nb + [0] * (SEQ - na - nb)
    out1, out2 = forward(batch1), forward(batch2)
    assert out1.dtype == np.float32
    assert not np.allclose(out1[0, :na], out2[0, :na])  # A's logits do change
    np.testing.assert_array_equal(out1[0, na : na + nb], out2[0, na : na + nb])  # B's: bit-exact
    # And B packed after A equals B alone at the start of a row.
    np.testing.assert_allclose(out1[0, na : na + nb], out1[1, :nb], atol=2e-5, rtol=2e-5)


def test_one_segment_lets_documents_leak(forward):
    """Control: the same rows as one segment let B see A (so the test above has teeth)."""
    rng = np.random.default_rng(1)
    a1, a2 = rng.integers(3, 97, 24), rng.integers(3, 97, 24)
    b = rng.integers(3, 97, 31)
    (batch1, na, nb), (batch2, _, _) = _batch(a1, b), _batch(a2, b)
    out1, out2 = forward(batch1, segments=False), forward(batch2, segments=False)
    assert not np.allclose(out1[0, na : na + nb], out2[0, na : na + nb], atol=1e-4)
    assert len(jax.devices()) == 8
