"""VQGAN image tokenizer (Flax NNX): convolutional encoder -> vector quantizer -> decoder.

Shape as LWM's tokenizer: 256x256 RGB -> 16x16 codes from an 8192 x 64 codebook, level widths
128 * (1, 2, 2, 4, 6), residual blocks, no attention layers. Frames are NHWC floats in [-1, 1]
(uint8 is accepted and rescaled). The model is data-parallel only: its params are replicated and
the batch is sharded, so params carry no logical-axis metadata.

Parameter naming (paths in `nnx.state(model)`; kernels are HWIO, i.e. [kh, kw, in, out]; `L` =
number of levels, `R` = num_res_blocks, `Rd` = decoder_blocks, `Rm` = mid_blocks; LWM: R = 2,
Rd = 3, Rm = 2). `lwm.interop.lwm_vqgan` maps LWM's released weights onto these:

| path                                              | shape               | role                   |
|---------------------------------------------------|---------------------|------------------------|
| encoder.conv_in.{kernel,bias}                     | [3,3,3,C0], [C0]    | stem                   |
| encoder.down.{l}.blocks.{r}.norm1.{scale,bias}    | [Cin]               | GroupNorm              |
| encoder.down.{l}.blocks.{r}.conv1.{kernel,bias}   | [3,3,Cin,Cl]        | ResBlock conv 1        |
| encoder.down.{l}.blocks.{r}.norm2 / conv2         | [Cl], [3,3,Cl,Cl]   | ResBlock norm/conv 2   |
| encoder.down.{l}.blocks.{r}.shortcut.{kernel,bias}| [1,1,Cin,Cl]        | only when Cin != Cl    |
| encoder.down.{l}.downsample.{kernel,bias}         | [3,3,Cl,Cl]         | stride 2, pad (0,1)    |
| encoder.mid.{r}.*                                 | as ResBlock         | Rm blocks at C_{L-1}   |
| encoder.norm_out, encoder.conv_out                | [C], [3,3,C,D]      | to embed_dim D         |
| quant_conv.{kernel,bias}                          | [1,1,D,D]           | pre-quantization 1x1   |
| quantizer.codebook                                | [K, D]              | codebook               |
| quantizer.usage                                   | [K]                 | usage EMA (not trained)|
| post_quant_conv.{kernel,bias}                     | [1,1,D,D]           | post-quantization 1x1  |
| decoder.conv_in                                   | [3,3,D,C_{L-1}]     | stem                   |
| decoder.mid.{r}.*                                 | as ResBlock         | Rm blocks              |
| decoder.up.{l}.blocks.{r}.*                       | as ResBlock         | Rd per level, 0=finest |
| decoder.up.{l}.upsample.{kernel,bias}             | [3,3,Cl,Cl]         | nearest x2 then conv   |
| decoder.norm_out, decoder.conv_out                | [C0], [3,3,C0,3]    | to RGB                 |

ResBlock: x + conv2(swish(norm2(conv1(swish(norm1(x)))))), with a 1x1 `shortcut` on x when the
width changes. Decoder level l (l = L-1 first) runs its blocks then, for l > 0, upsamples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm.dtypes import to_dtype
from lwm.errors import LwmError
from lwm.video.config import VQGANConfig
from lwm.video.quantizer import VectorQuantizer

# LeCun-normal without truncation: same scale as flax's default, far cheaper to initialise
# (the truncated normal's erfinv dominated init time of the many small convs).
_KERNEL_INIT = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")


def _conv(cin: int, cout: int, k: int, rngs: nnx.Rngs, dtype, **kw) -> nnx.Conv:
    return nnx.Conv(cin, cout, (k, k), dtype=dtype, kernel_init=_KERNEL_INIT, rngs=rngs, **kw)


class ResBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, groups: int, *, dtype, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(cin, num_groups=groups, dtype=dtype, rngs=rngs)
        self.conv1 = _conv(cin, cout, 3, rngs, dtype)
        self.norm2 = nnx.GroupNorm(cout, num_groups=groups, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(cout, cout, 3, rngs, dtype)
        self.shortcut = _conv(cin, cout, 1, rngs, dtype) if cin != cout else None

    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        h = self.conv1(nnx.swish(self.norm1(x_bhwc)))
        h = self.conv2(nnx.swish(self.norm2(h)))
        skip = x_bhwc if self.shortcut is None else self.shortcut(x_bhwc)
        return skip + h


class DownLevel(nnx.Module):
    def __init__(self, cin, cout, n_blocks, groups, downsample, *, dtype, rngs):
        self.blocks = nnx.List(
            [
                ResBlock(cin if i == 0 else cout, cout, groups, dtype=dtype, rngs=rngs)
                for i in range(n_blocks)
            ]
        )
        # Asymmetric padding (0, 1) with a 3x3 stride-2 conv halves even sizes exactly.
        self.downsample = (
            _conv(cout, cout, 3, rngs, dtype, strides=(2, 2), padding=((0, 1), (0, 1)))
            if downsample
            else None
        )

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class UpLevel(nnx.Module):
    def __init__(self, cin, cout, n_blocks, groups, upsample, *, dtype, rngs):
        self.blocks = nnx.List(
            [
                ResBlock(cin if i == 0 else cout, cout, groups, dtype=dtype, rngs=rngs)
                for i in range(n_blocks)
            ]
        )
        self.upsample = _conv(cout, cout, 3, rngs, dtype) if upsample else None

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        if self.upsample is not None:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest x2
            x = self.upsample(x)
        return x


class Encoder(nnx.Module):
    def __init__(self, cfg: VQGANConfig, *, rngs: nnx.Rngs):
        dt = to_dtype(cfg.dtype)
        widths = [cfg.base_channels * m for m in cfg.channel_multipliers]
        g = cfg.norm_groups
        self.conv_in = _conv(cfg.in_channels, widths[0], 3, rngs, dt)
        levels, cin = [], widths[0]
        for i, w in enumerate(widths):
            down = i < len(widths) - 1
            levels.append(DownLevel(cin, w, cfg.num_res_blocks, g, down, dtype=dt, rngs=rngs))
            cin = w
        self.down = nnx.List(levels)
        self.mid = nnx.List(
            [ResBlock(cin, cin, g, dtype=dt, rngs=rngs) for _ in range(cfg.mid_blocks)]
        )
        self.norm_out = nnx.GroupNorm(cin, num_groups=g, dtype=dt, rngs=rngs)
        self.conv_out = _conv(cin, cfg.embed_dim, 3, rngs, dt)

    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        x = self.conv_in(x_bhwc)
        for level in self.down:
            x = level(x)
        for block in self.mid:
            x = block(x)
        return self.conv_out(nnx.swish(self.norm_out(x)))


class Decoder(nnx.Module):
    def __init__(self, cfg: VQGANConfig, *, rngs: nnx.Rngs):
        dt = to_dtype(cfg.dtype)
        widths = [cfg.base_channels * m for m in cfg.channel_multipliers]
        g = cfg.norm_groups
        top = widths[-1]
        self.conv_in = _conv(cfg.embed_dim, top, 3, rngs, dt)
        self.mid = nnx.List(
            [ResBlock(top, top, g, dtype=dt, rngs=rngs) for _ in range(cfg.mid_blocks)]
        )
        # up[l] works at level l's width; built finest-first so indices match the encoder.
        levels = []
        for i, w in enumerate(widths):
            cin = widths[i + 1] if i + 1 < len(widths) else top
            levels.append(UpLevel(cin, w, cfg.decoder_blocks, g, i > 0, dtype=dt, rngs=rngs))
        self.up = nnx.List(levels)
        self.norm_out = nnx.GroupNorm(widths[0], num_groups=g, dtype=dt, rngs=rngs)
        self.conv_out = _conv(widths[0], cfg.in_channels, 3, rngs, dt)

    def __call__(self, z_bhwd: jax.Array) -> jax.Array:
        x = self.conv_in(z_bhwd)
        for block in self.mid:
            x = block(x)
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(nnx.swish(self.norm_out(x)))


def to_model_range(frames: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]; floats pass through (assumed already in [-1, 1])."""
    if frames.dtype == jnp.uint8:
        return frames.astype(jnp.float32) / 127.5 - 1.0
    return frames.astype(jnp.float32)


def to_uint8(frames: jax.Array) -> jax.Array:
    """float [-1, 1] -> uint8 [0, 255] (clipped, rounded)."""
    return jnp.clip(jnp.round((frames.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


class VQGAN(nnx.Module):
    """Encoder, quantizer and decoder. `encode` -> codes [B, h, w]; `decode` -> frames [B, H, W, 3]
    in [-1, 1] (unclipped); `__call__` reconstructs and returns the quantizer's aux losses."""

    def __init__(self, cfg: VQGANConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = to_dtype(cfg.dtype)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.quant_conv = _conv(cfg.embed_dim, cfg.embed_dim, 1, rngs, dt)
        self.quantizer = VectorQuantizer(
            cfg.codebook_size,
            cfg.embed_dim,
            commitment_weight=cfg.commitment_weight,
            codebook_weight=cfg.codebook_weight,
            usage_decay=cfg.usage_decay,
            dead_code_threshold=cfg.dead_code_threshold,
            rngs=rngs,
        )
        self.post_quant_conv = _conv(cfg.embed_dim, cfg.embed_dim, 1, rngs, dt)
        self.decoder = Decoder(cfg, rngs=rngs)

    def check_frames(self, frames: jax.Array) -> None:
        r, c = self.cfg.resolution, self.cfg.in_channels
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (r, r, c):
            raise LwmError(
                f"VQGAN {self.cfg.name} expects frames [B, {r}, {r}, {c}], "
                f"got {tuple(frames.shape)}"
            )

    def encode_latents(self, frames_bhwc: jax.Array) -> jax.Array:
        """Continuous pre-quantization latents [B, h, w, D]."""
        self.check_frames(frames_bhwc)
        return self.quant_conv(self.encoder(to_model_range(frames_bhwc)))

    def encode(self, frames_bhwc: jax.Array) -> jax.Array:
        """Frames (float in [-1, 1] or uint8) -> int32 codes [B, h, w]."""
        return self.quantizer.encode(self.encode_latents(frames_bhwc))

    def decode_latents(self, z_bhwd: jax.Array) -> jax.Array:
        return self.decoder(self.post_quant_conv(z_bhwd))

    def decode(self, codes_bhw: jax.Array) -> jax.Array:
        """Codes [B, h, w] -> frames [B, H, W, 3], float in about [-1, 1]."""
        codes_bhw = jnp.asarray(codes_bhw)
        if codes_bhw.ndim != 3:
            raise LwmError(f"VQGAN.decode expects codes [B, h, w], got {tuple(codes_bhw.shape)}")
        return self.decode_latents(self.quantizer.lookup(codes_bhw))

    def __call__(
        self, frames_bhwc: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]:
        """Reconstruction pass for training: (recon [-1,1], codes, latents z, quantizer aux)."""
        z = self.encode_latents(frames_bhwc)
        z_q, codes, aux = self.quantizer(z)
        return self.decode_latents(z_q), codes, z, aux


def numpy_init(module_fn, seed: int = 0):
    """Builds `module_fn()` abstractly and fills its state from a numpy RNG: kernels LeCun-normal
    (std 1/sqrt(fan_in)), norm scales 1, biases 0, a codebook uniform in +-1/K, usage 0.

    Same distributions as the modules' own initialisers, but with no XLA compile per parameter
    shape, which dominated start-up time of these conv nets on CPU (tens of seconds).
    """
    model = nnx.eval_shape(module_fn)
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            std = 1.0 / np.sqrt(np.prod(x.shape[:-1]))
            return (rng.standard_normal(x.shape, np.float32) * std).astype(x.dtype)
        if name == "scale":
            return np.ones(x.shape, x.dtype)
        if name == "codebook":
            k = x.shape[0]
            return rng.uniform(-1.0 / k, 1.0 / k, x.shape).astype(x.dtype)
        return np.zeros(x.shape, x.dtype)

    state = nnx.state(model)
    pure = jax.tree_util.tree_map_with_path(fill, state.to_pure_dict())
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return model


def init_vqgan(cfg: VQGANConfig, seed: int = 0) -> VQGAN:
    """A freshly initialised VQGAN (see `numpy_init`)."""
    return numpy_init(lambda: VQGAN(cfg, rngs=nnx.Rngs(0)), seed)


@functools.partial(jax.jit, static_argnums=0)
def _encode_pure(graphdef, state, frames):
    return nnx.merge(graphdef, state).encode(frames)


@functools.partial(jax.jit, static_argnums=0)
def _decode_pure(graphdef, state, codes):
    return to_uint8(nnx.merge(graphdef, state).decode(codes))


def make_encode_fn(model: VQGAN):
    """A compiled `frames [B, H, W, 3] (uint8 or float) -> codes [B, h, w]` for inference. The
    state is captured once (no per-call graph traversal); compiles are shared by all models of
    the same config and input shape."""
    graphdef, state = nnx.split(model)

    def fn(frames):
        model.check_frames(frames)
        return _encode_pure(graphdef, state, frames)

    return fn


def make_decode_fn(model: VQGAN):
    """A compiled `codes [B, h, w] -> uint8 frames [B, H, W, 3]` for inference."""
    graphdef, state = nnx.split(model)
    return lambda codes: _decode_pure(graphdef, state, jnp.asarray(codes, jnp.int32))
