"""VQGAN training losses and metrics: reconstruction, PSNR, and an optional patch-GAN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def reconstruction_loss(
    x_bhwc: jax.Array, recon_bhwc: jax.Array, *, l1_weight: float, l2_weight: float
) -> jax.Array:
    """Weighted L1 + L2 (mean over pixels) between frames in [-1, 1]."""
    diff = recon_bhwc.astype(jnp.float32) - x_bhwc.astype(jnp.float32)
    return l1_weight * jnp.mean(jnp.abs(diff)) + l2_weight * jnp.mean(diff**2)


def psnr(x_bhwc: jax.Array, recon_bhwc: jax.Array) -> jax.Array:
    """Per-image PSNR [B] in dB of uint8 frames (or [-1, 1] floats, compared as uint8 after
    clipping and rounding, so it is the PSNR of what a user would see)."""

    def u8(a):
        if a.dtype == jnp.uint8:
            return a.astype(jnp.float32)
        return jnp.round(jnp.clip((a.astype(jnp.float32) + 1.0) * 127.5, 0.0, 255.0))

    mse = jnp.mean((u8(x_bhwc) - u8(recon_bhwc)) ** 2, axis=(1, 2, 3))
    return 10.0 * jnp.log10(255.0**2 / jnp.maximum(mse, 1e-10))


class PatchDiscriminator(nnx.Module):
    """PatchGAN: stride-2 4x4 convs with GroupNorm and leaky ReLU, one logit per patch."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3, *, rngs):
        convs, norms = [], []
        cin = in_channels
        for i in range(layers):
            cout = channels * min(2**i, 8)
            convs.append(nnx.Conv(cin, cout, (4, 4), strides=(2, 2), rngs=rngs))
            norms.append(
                nnx.GroupNorm(cout, num_groups=min(32, cout // 4), rngs=rngs) if i else None
            )
            cin = cout
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.head = nnx.Conv(cin, 1, (4, 4), rngs=rngs)

    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        x = x_bhwc
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)
            if norm is not None:
                x = norm(x)
            x = nnx.leaky_relu(x, 0.2)
        return self.head(x)


def hinge_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    return 0.5 * (jnp.mean(nnx.relu(1.0 - real_logits)) + jnp.mean(nnx.relu(1.0 + fake_logits)))


def generator_adv_loss(fake_logits: jax.Array) -> jax.Array:
    return -jnp.mean(fake_logits)
