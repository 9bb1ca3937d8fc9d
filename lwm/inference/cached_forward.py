"""The transformer's forward pass over a chunk of new tokens, reading and extending a KV cache.

It reuses the model's own modules (embedding, norms, `Attention.project_qkv` / `project_out`,
SwiGLU, heads) and replaces only the attention computation with `cached_attention`, so cached and
uncached runs share every weight and every op except the attention kernel. Works for looped and
scanned (`scan_layers`) models alike (layers are unrolled either way, see `_layer_blocks`); a pure
function of (model, cache, inputs), jitted by the sampler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from lwm.errors import ConfigError
from lwm.inference.cached_attention import (
    DENSE_MAX_QUERIES,
    cached_attention,
    decode_attention,
)
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


def _layer_blocks(model: Transformer) -> list[Block]:
    """The model's blocks one by one. A scanned model's stacked block is sliced per layer, so
    every layer reads and writes its own cache buffer (a scan over layers would carry a stacked
    cache and copy each layer out of it on every step)."""
    if not model.config.scan_layers:
        return list(model.blocks)
    graphdef, stacked = nnx.split(model.blocks)
    return [
        nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], stacked))
        for i in range(model.config.num_layers)
    ]


def _after(x_bkth: jax.Array, dep_btnh: jax.Array) -> jax.Array:
    """`x` unchanged, but data-dependent on `dep` (`dep > inf` is false, NaN included, and XLA
    does not fold it). Writing the new keys only after the attention output exists orders the
    in-place cache update after every read of the old cache; without a data dependency XLA
    cannot prove that order and copies each layer's cache instead."""
    b, k, t, h = x_bkth.shape
    dep = dep_btnh.reshape(b, t, k, -1, h)[:, :, :, 0].transpose(0, 2, 1, 3).astype(x_bkth.dtype)
    return jnp.where(dep > jnp.inf, dep, x_bkth)


def _block_step(
    block: Block,
    x_btd,
    positions_bt,
    k_bksh,
    v_bksh,
    start,
    old_valid_bs,
    valid_bt,
    valid_bs,
    q_slots_t,
    mesh,
    key_block,
):
    """One block on the chunk; writes its keys/values at slots `[start, start + T)` of this
    layer's cache (in place: the cache is donated by the jitted callers).

    Decode-sized chunks attend to the cache as it was plus their own keys, and write afterwards,
    so the update never forces a copy of the layer cache (see `decode_attention`). Prefill
    chunks write first and run the blockwise kernel over the updated cache.
    """
    q_btnh, k_btkh, v_btkh = block.attn.project_qkv(block.attn_norm(x_btd), positions_bt)
    k_new = k_btkh.transpose(0, 2, 1, 3).astype(k_bksh.dtype)  # head-major [B, K, T, H]
    v_new = v_btkh.transpose(0, 2, 1, 3).astype(v_bksh.dtype)
    at = (0, 0, start, 0)
    if q_btnh.shape[1] <= DENSE_MAX_QUERIES:
        out_btnh = decode_attention(
            q_btnh, k_bksh, v_bksh, old_valid_bs, k_new, v_new, valid_bt, q_slots_t, mesh=mesh
        )
        k_bksh = lax.dynamic_update_slice(k_bksh, _after(k_new, out_btnh), at)
        v_bksh = lax.dynamic_update_slice(v_bksh, _after(v_new, out_btnh), at)
    else:
        k_bksh = lax.dynamic_update_slice(k_bksh, k_new, at)
        v_bksh = lax.dynamic_update_slice(v_bksh, v_new, at)
        out_btnh = cached_attention(
            q_btnh, k_bksh, v_bksh, valid_bs, q_slots_t, mesh=mesh, key_block=key_block
        )
    x_btd = with_logical_constraint(x_btd + block.attn.project_out(out_btnh), ACT, mesh)
    x_btd = x_btd + block.mlp(block.mlp_norm(x_btd))
    return with_logical_constraint(x_btd, ACT, mesh), k_bksh, v_bksh


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
    ks, vs = list(cache.ks), list(cache.vs)
    for layer, block in enumerate(_layer_blocks(model)):
        x_btd, ks[layer], vs[layer] = _block_step(
            block,
            x_btd,
            positions_bt,
            ks[layer],
            vs[layer],
            start,
            cache.valid,
            valid_bt,
            valid_bs,
            q_slots_t,
            mesh,
            key_block,
        )
    hidden_bd = model.final_norm(x_btd[:, -1:])[:, 0]
    positions_last = positions_bt[:, -1] + 1
    next_pos = jnp.where(valid_bt[:, -1] > 0, positions_last, cache.next_pos)
    return KVCache(tuple(ks), tuple(vs), valid_bs, next_pos.astype(jnp.int32)), hidden_bd
