"""Multi-head / grouped-query self-attention layer: projections, RoPE, a pluggable backend.

The layer owns the weights; the attention computation itself is an `AttentionOp` (dense,
blockwise or ring, see `lwm.attention`). Given a `LayerCache` (KV-cache decoding), the same
projections and RoPE feed `lwm.attention.cached.attend_cached` instead, which attends to the cache
and writes the chunk's keys/values into it: one forward path for training and decoding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lwm.attention import AttentionOp
from lwm.attention.cached import attend_cached
from lwm.cache.slots import LayerCache
from lwm.dtypes import to_dtype
from lwm.layers.params import normal_param, zeros_param
from lwm.layers.rotary import apply_rope
from lwm.models.config import ModelConfig
from lwm.sharding import with_logical_constraint


class Attention(nnx.Module):
    """Self-attention of a model `cfg` (a family's variant is in its config: q/k/v biases with
    `attention_bias`, the RoPE frequencies with `rope_scaling`); `op` computes the attention."""

    def __init__(self, cfg: ModelConfig, op: AttentionOp, *, rngs: nnx.Rngs, mesh=None):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pd, std = to_dtype(cfg.param_dtype), cfg.initializer_range
        self.wq = normal_param(
            rngs, (d, n, h), ("embed", "heads", "head_dim"), stddev=std, dtype=pd
        )
        self.wk = normal_param(
            rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), stddev=std, dtype=pd
        )
        self.wv = normal_param(
            rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), stddev=std, dtype=pd
        )
        self.wo = normal_param(
            rngs, (n, h, d), ("heads", "head_dim", "embed"), stddev=std, dtype=pd
        )
        if cfg.attention_bias:
            self.bq = zeros_param((n, h), ("heads", "head_dim"), dtype=pd)
            self.bk = zeros_param((k, h), ("kv_heads", "head_dim"), dtype=pd)
            self.bv = zeros_param((k, h), ("kv_heads", "head_dim"), dtype=pd)
        else:
            self.bq = self.bk = self.bv = None
        self.op = op
        self.rope_theta = cfg.rope_theta
        self.rope_scaling = cfg.rope_scaling
        self.dtype = to_dtype(cfg.dtype)
        self.mesh = mesh

    def project(self, x_btd: jax.Array, w: nnx.Param, b: nnx.Param | None) -> jax.Array:
        """`x @ w (+ b)`: `[B, T, D]` -> `[B, T, heads, H]` in the compute dtype."""
        y_btnh = jnp.einsum("btd,dnh->btnh", x_btd, w[...].astype(self.dtype))
        return y_btnh if b is None else y_btnh + b[...].astype(self.dtype)

    def project_qkv(
        self, x_btd: jax.Array, positions_bt: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries `[B,T,N,H]`, keys and values `[B,T,K,H]`, RoPE applied to q and k."""
        x_btd = x_btd.astype(self.dtype)
        q_btnh = self.project(x_btd, self.wq, self.bq)
        k_btkh = self.project(x_btd, self.wk, self.bk)
        v_btkh = self.project(x_btd, self.wv, self.bv)
        rope = dict(theta=self.rope_theta, scaling=self.rope_scaling)
        q_btnh = apply_rope(q_btnh, positions_bt, **rope)
        k_btkh = apply_rope(k_btkh, positions_bt, **rope)
        q_btnh = with_logical_constraint(
            q_btnh, ("batch", "length", "act_heads", "head_dim"), self.mesh
        )
        k_btkh = with_logical_constraint(
            k_btkh, ("batch", "length", "act_kv_heads", "head_dim"), self.mesh
        )
        v_btkh = with_logical_constraint(
            v_btkh, ("batch", "length", "act_kv_heads", "head_dim"), self.mesh
        )
        return q_btnh, k_btkh, v_btkh

    def project_out(self, out_btnh: jax.Array) -> jax.Array:
        """`[B, T, N, H]` -> `[B, T, D]`. Heads and head_dim are merged into one contracting
        axis first (free reshapes of contiguous axes): XLA:CPU lowers a dot with two contracting
        axes to a naive loop, ~18x slower than the matmul (2.2 vs 40 GB/s of weights streamed
        in decode: half of a SmolLM2-135M decode step)."""
        b, t, n, h = out_btnh.shape
        out_btk = out_btnh.astype(self.dtype).reshape(b, t, n * h)
        wo_kd = self.wo[...].astype(self.dtype).reshape(n * h, -1)
        return jnp.einsum("btk,kd->btd", out_btk, wo_kd)

    def __call__(
        self,
        x_btd: jax.Array,
        positions_bt: jax.Array,
        segment_ids_bt: jax.Array | None = None,
        *,
        cache: LayerCache | None = None,
    ) -> jax.Array | tuple[jax.Array, LayerCache]:
        """`[B, T, D]` -> `[B, T, D]`; with a `cache`, `(out, updated cache)` (segment ids are
        then unused: the cache's valid slots mask padding)."""
        q_btnh, k_btkh, v_btkh = self.project_qkv(x_btd, positions_bt)
        if cache is None:
            return self.project_out(self.op(q_btnh, k_btkh, v_btkh, segment_ids_bt))
        out_btnh, cache = attend_cached(q_btnh, k_btkh, v_btkh, cache)
        return self.project_out(out_btnh), cache
