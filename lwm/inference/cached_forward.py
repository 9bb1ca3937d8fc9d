"""The transformer's forward pass over a chunk of new tokens, reading and extending a KV cache.

It reuses the model's own modules (embedding, norms, `Attention.project_qkv` / `project_out`,
SwiGLU, heads) and replaces only the attention computation with `cached_attention`, so cached and
uncached runs share every weight and every op except the attention kernel. Works for looped and
scanned (`scan_layers`) models alike; a pure function of (model, cache, inputs), jitted by the
sampler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from lwm.errors import ConfigError
from lwm.inference.cached_attention import cached_attention
from lwm.inference.kv_cache import KVCache
from lwm.models.block import Block
from lwm.models.transformer import Transformer
from lwm.sharding import with_logical_constraint

ACT = ("batch", "length", "act_embed")


def check_supported(model: Transformer) -> None:
    """Rejects configurations the cached path cannot reproduce exactly."""
    if model.config.attention.causal_block_size:
        raise ConfigError(
            "KV-cache decoding needs token-causal attention; this model uses "
            f"causal_block_size={model.config.attention.causal_block_size}"
        )


def _block_step(
    block: Block,
    x_btd,
    positions_bt,
    k_lbskh,
    v_lbskh,
    layer,
    start,
    valid_bs,
    q_slots_t,
    mesh,
    key_block,
):
    """One block on the chunk; writes its keys/values at `[layer, :, start:start+T]`."""
    q_btnh, k_btkh, v_btkh = block.attn.project_qkv(block.attn_norm(x_btd), positions_bt)
    at = (layer, 0, start, 0, 0)
    k_lbskh = lax.dynamic_update_slice(k_lbskh, k_btkh[None].astype(k_lbskh.dtype), at)
    v_lbskh = lax.dynamic_update_slice(v_lbskh, v_btkh[None].astype(v_lbskh.dtype), at)
    out_btnh = cached_attention(
        q_btnh,
        k_lbskh[layer],
        v_lbskh[layer],
        valid_bs,
        q_slots_t,
        mesh=mesh,
        key_block=key_block,
    )
    x_btd = with_logical_constraint(x_btd + block.attn.project_out(out_btnh), ACT, mesh)
    x_btd = x_btd + block.mlp(block.mlp_norm(x_btd))
    return with_logical_constraint(x_btd, ACT, mesh), k_lbskh, v_lbskh


def forward_chunk(
    model: Transformer,
    cache: KVCache,
    tokens_bt: jax.Array,
    positions_bt: jax.Array,
    valid_bt: jax.Array,
    vision_mask_bt: jax.Array | None,
    start: jax.Array,
    *,
    mesh=None,
    key_block: int = 512,
) -> tuple[KVCache, jax.Array]:
    """Runs `T` new tokens written at cache slots `[start, start + T)`.

    Returns the updated cache and the final-norm hidden state of the chunk's last slot `[B, D]`
    (left padding aligns every row's newest token to that slot). `mesh` shards the cache
    attention; it must be the mesh the model's parameters live on (or None).
    """
    t = tokens_bt.shape[1]
    valid_bs = lax.dynamic_update_slice(cache.valid, valid_bt.astype(jnp.int32), (0, start))
    q_slots_t = start + jnp.arange(t, dtype=jnp.int32)
    x_btd = model.embed(tokens_bt, vision_mask_bt if model.config.has_vision else None)
    x_btd = with_logical_constraint(x_btd, ACT, mesh)
    k, v = cache.k, cache.v
    if model.config.scan_layers:
        graphdef, stacked = nnx.split(model.blocks)

        def body(carry, xs):
            x, k, v = carry
            layer_state, layer = xs
            block = nnx.merge(graphdef, layer_state)
            return _block_step(
                block, x, positions_bt, k, v, layer, start, valid_bs, q_slots_t, mesh, key_block
            ), None

        layers = jnp.arange(model.config.num_layers, dtype=jnp.int32)
        (x_btd, k, v), _ = lax.scan(body, (x_btd, k, v), (stacked, layers))
    else:
        for layer, block in enumerate(model.blocks):
            x_btd, k, v = _block_step(
                block, x_btd, positions_bt, k, v, layer, start, valid_bs, q_slots_t, mesh, key_block
            )
    hidden_bd = model.final_norm(x_btd[:, -1:])[:, 0]
    positions_last = positions_bt[:, -1] + 1
    next_pos = jnp.where(valid_bt[:, -1] > 0, positions_last, cache.next_pos)
    return KVCache(k, v, valid_bs, next_pos.astype(jnp.int32)), hidden_bd
