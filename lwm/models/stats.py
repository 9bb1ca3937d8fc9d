"""Parameter counts and FLOPs of a model config, computed without allocating anything."""

from __future__ import annotations

import math

import jax
from flax import nnx

from lwm.models.config import ModelConfig


def param_count(cfg: ModelConfig) -> int:
    from lwm.models.transformer import Transformer

    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def flops_per_token(cfg: ModelConfig, seq_len: int, *, causal: bool = True) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), counting matmuls only.

    Attention scores and values cost 2·2·T·H·N per token forward; causal halves the useful part.
    """
    d, f, n, k, h, v = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size,
    )
    proj = 2 * d * (n * h + 2 * k * h) + 2 * n * h * d
    mlp = 2 * 3 * d * f
    attn = 2 * 2 * seq_len * n * h * (0.5 if causal else 1.0)
    head = 2 * d * v
    return 3.0 * (cfg.num_layers * (proj + mlp + attn) + head)
