"""One pre-norm decoder block: x + attn(norm(x)), then x + swiglu(norm(x))."""

from __future__ import annotations

import jax
from flax import nnx

from lwm.attention import AttentionOp
from lwm.cache.slots import LayerCache
from lwm.dtypes import to_dtype
from lwm.layers.mlp import SwiGLU
from lwm.layers.norms import RMSNorm
from lwm.models.attention import Attention
from lwm.models.config import ModelConfig
from lwm.sharding import with_logical_constraint

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nnx.Module):
    """One decoder block of a model `cfg`; `op` is the model's attention backend."""

    def __init__(self, cfg: ModelConfig, op: AttentionOp, *, rngs: nnx.Rngs, mesh=None):
        pd, dt = to_dtype(cfg.param_dtype), to_dtype(cfg.dtype)
        self.attn_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pd, dtype=dt)
        self.attn = Attention(cfg, op, rngs=rngs, mesh=mesh)
        self.mlp_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pd, dtype=dt)
        self.mlp = SwiGLU(
            cfg.hidden_size,
            cfg.intermediate_size,
            rngs=rngs,
            stddev=cfg.initializer_range,
            param_dtype=pd,
            dtype=dt,
            chunk_size=cfg.ffn_chunk_size,
            mesh=mesh,
        )
        self.mesh = mesh

    def __call__(
        self,
        x_btd: jax.Array,
        positions_bt: jax.Array,
        segment_ids_bt: jax.Array | None,
        *,
        cache: LayerCache | None = None,
    ) -> jax.Array | tuple[jax.Array, LayerCache]:
        """`[B, T, D]` -> `[B, T, D]`; with a `cache` (KV-cache decoding), `(x, updated cache)`."""
        names = ("batch", "length", "act_embed")
        h_btd = self.attn(self.attn_norm(x_btd), positions_bt, segment_ids_bt, cache=cache)
        if cache is not None:
            h_btd, cache = h_btd
        x_btd = with_logical_constraint(x_btd + h_btd, names, self.mesh)
        x_btd = x_btd + self.mlp(self.mlp_norm(x_btd))
        x_btd = with_logical_constraint(x_btd, names, self.mesh)
        return x_btd if cache is None else (x_btd, cache)


def apply_block(
    block: Block, x_btd: jax.Array, positions_bt: jax.Array, segment_ids_bt: jax.Array | None
) -> jax.Array:
    return block(x_btd, positions_bt, segment_ids_bt)


def block_fn(remat_policy: str):
    """The per-block function, wrapped in rematerialisation according to the policy."""
    if remat_policy == "none":
        return apply_block
    if remat_policy not in REMAT_POLICIES:
        raise ValueError(
            f"unknown remat_policy {remat_policy!r}; expected none or {sorted(REMAT_POLICIES)}"
        )
    return nnx.remat(apply_block, policy=REMAT_POLICIES[remat_policy])
