"""Rotary position embeddings in the rotate-half layout (as HF LLaMA).

The two halves of each head's feature vector form the (real, imaginary) pairs: feature i pairs with
feature i + h/2. Meta's original LLaMA and EasyLM/LWM checkpoints pair adjacent features (2i, 2i+1)
instead; `interleaved_to_half_permutation` maps q/k projection columns from that layout to ours.
Angles are computed from explicit positions, so packed segments (positions restarting at 0) and
load-balanced layouts (positions permuted with the tokens) need nothing special.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lwm.layers.rope_scaling import RopeScaling, rope_attention_factor, scaled_inv_freq


def apply_rope(
    x_btnh: jax.Array,
    positions_bt: jax.Array,
    *,
    theta: float,
    scaling: RopeScaling | None = None,
) -> jax.Array:
    """Rotates q or k `[B, T, N, H]` by angles position × inv_freq (fp32 math); `scaling` picks
    the family's frequencies and cos/sin factor (`lwm.layers.rope_scaling`; None = plain RoPE).
    A YaRN factor multiplies both q and k, so the attention logits scale by its square (HF
    scales cos and sin the same way)."""
    h = x_btnh.shape[-1]
    inv_freq_f = scaled_inv_freq(h, theta, scaling)
    angles_btf = positions_bt.astype(jnp.float32)[..., None] * inv_freq_f
    cos_bt1f = jnp.cos(angles_btf)[:, :, None, :]
    sin_bt1f = jnp.sin(angles_btf)[:, :, None, :]
    factor = rope_attention_factor(scaling)
    if factor != 1.0:
        cos_bt1f, sin_bt1f = cos_bt1f * factor, sin_bt1f * factor
    x = x_btnh.astype(jnp.float32)
    x1, x2 = x[..., : h // 2], x[..., h // 2 :]
    out = jnp.concatenate([x1 * cos_bt1f - x2 * sin_bt1f, x2 * cos_bt1f + x1 * sin_bt1f], axis=-1)
    return out.astype(x_btnh.dtype)


def interleaved_to_half_permutation(head_dim: int) -> np.ndarray:
    """Index array p with `w_half[..., j] = w_interleaved[..., p[j]]` within one head."""
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])
