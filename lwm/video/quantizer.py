"""Vector quantizer: nearest-codebook lookup with a straight-through gradient.

Training signal: the codebook loss ||sg(z) - e||^2 moves codes towards encoder outputs, the
commitment loss ||z - sg(e)||^2 keeps encoder outputs near their codes, and the straight-through
estimator z + sg(e - z) passes decoder gradients to the encoder. A per-code usage EMA (a
`CodeUsage` variable, not trained by the optimizer) drives dead-code restarts: codes whose usage
falls below a threshold are re-seeded from random encoder outputs of the current batch. Usage
starts at zero, so the first restart doubles as a data-dependent codebook initialisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class CodeUsage(nnx.Variable):
    """EMA of how many times each code is picked per step (state, not a trainable param)."""


def code_distances(z_nd: jax.Array, codebook_kd: jax.Array) -> jax.Array:
    """Squared L2 distances [N, K] between vectors and codebook entries (fp32)."""
    z_nd = z_nd.astype(jnp.float32)
    codebook_kd = codebook_kd.astype(jnp.float32)
    return (
        jnp.sum(z_nd**2, axis=-1, keepdims=True)
        - 2.0 * jnp.einsum("nd,kd->nk", z_nd, codebook_kd)
        + jnp.sum(codebook_kd**2, axis=-1)[None, :]
    )


def perplexity(counts_k: jax.Array) -> jax.Array:
    """exp(entropy) of the code histogram: K when all codes are used evenly, 1 when collapsed."""
    p = counts_k / jnp.maximum(jnp.sum(counts_k), 1.0)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


class VectorQuantizer(nnx.Module):
    """Codebook `codebook [K, D]` plus the usage EMA `usage [K]`."""

    def __init__(
        self,
        codebook_size: int,
        embed_dim: int,
        *,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        usage_decay: float = 0.99,
        dead_code_threshold: float = 0.03,
        rngs: nnx.Rngs,
    ):
        self.codebook_size = codebook_size
        self.embed_dim = embed_dim
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.usage_decay = usage_decay
        self.dead_code_threshold = dead_code_threshold
        scale = 1.0 / codebook_size
        self.codebook = nnx.Param(
            jax.random.uniform(
                rngs.params(), (codebook_size, embed_dim), jnp.float32, -scale, scale
            )
        )
        self.usage = CodeUsage(jnp.zeros((codebook_size,), jnp.float32))

    def lookup(self, codes: jax.Array) -> jax.Array:
        """Codebook vectors for integer codes of any shape -> [..., D]."""
        return jnp.take(self.codebook[...], codes, axis=0)

    def encode(self, z_bhwd: jax.Array) -> jax.Array:
        """Nearest code index per position -> int32 [B, h, w]."""
        b, h, w, d = z_bhwd.shape
        dist = code_distances(z_bhwd.reshape(-1, d), self.codebook[...])
        return jnp.argmin(dist, axis=-1).astype(jnp.int32).reshape(b, h, w)

    def __call__(self, z_bhwd: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """Quantizes; returns (straight-through z_q, codes [B, h, w], aux losses and stats)."""
        codes = self.encode(z_bhwd)
        e_bhwd = self.lookup(codes).astype(z_bhwd.dtype)
        z32 = z_bhwd.astype(jnp.float32)
        e32 = e_bhwd.astype(jnp.float32)
        codebook_loss = jnp.mean((jax.lax.stop_gradient(z32) - e32) ** 2)
        commitment_loss = jnp.mean((z32 - jax.lax.stop_gradient(e32)) ** 2)
        z_q = z_bhwd + jax.lax.stop_gradient(e_bhwd - z_bhwd)
        counts = jnp.zeros((self.codebook_size,), jnp.float32).at[codes.reshape(-1)].add(1.0)
        aux = {
            "codebook_loss": codebook_loss,
            "commitment_loss": commitment_loss,
            "vq_loss": self.codebook_weight * codebook_loss
            + self.commitment_weight * commitment_loss,
            "counts": counts,
            "perplexity": perplexity(counts),
        }
        return z_q, codes, aux

    def update_usage(self, counts_k: jax.Array) -> None:
        """Folds one step's code histogram into the usage EMA."""
        decay = self.usage_decay
        self.usage[...] = decay * self.usage[...] + (1.0 - decay) * counts_k

    def restart_dead_codes(self, z_nd: jax.Array, key: jax.Array) -> jax.Array:
        """Re-seeds codes with usage below the threshold from random rows of `z_nd` (encoder
        outputs, gradients stopped); returns how many codes were restarted."""
        if self.dead_code_threshold <= 0:
            return jnp.zeros((), jnp.int32)
        z_nd = jax.lax.stop_gradient(z_nd).astype(jnp.float32)
        k_idx, k_noise = jax.random.split(key)
        idx = jax.random.randint(k_idx, (self.codebook_size,), 0, z_nd.shape[0])
        std = jnp.std(z_nd) + 1e-6
        noise = 0.01 * std * jax.random.normal(k_noise, (self.codebook_size, z_nd.shape[1]))
        candidates = z_nd[idx] + noise
        dead = self.usage[...] < self.dead_code_threshold
        self.codebook[...] = jnp.where(dead[:, None], candidates, self.codebook[...])
        # A restarted code gets a grace period of ~log(thr)/log(decay) steps before it can die.
        self.usage[...] = jnp.where(dead, 1.0, self.usage[...])
        return jnp.sum(dead).astype(jnp.int32)
