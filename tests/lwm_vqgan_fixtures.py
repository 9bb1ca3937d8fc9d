"""Test helpers that produce LWM's VQGAN weight format from its description.

LWM's VQGAN (LargeWorldModel/LWM `lwm/vqgan.py`) is a flax-linen `@nn.compact` model saved with
`pickle.dump(params)`. `LinenLWMVQGAN` below is an independent linen model written from that
description (encoder: conv, per level `num_res_blocks` ResnetBlocks + a pad-(0,1) stride-2 conv,
a 2-block mid stage, GroupNorm/silu/conv; decoder: conv, 2-block mid, per level (coarsest first)
`num_res_blocks + 1` ResnetBlocks + nearest-x2 and conv, GroupNorm/silu/conv; 1x1 quant convs),
with LWM's class names and no explicit names, so linen's automatic `<Class>_<n>` names are
the oracle for the parameter paths. `lwm_layout_from_state` writes an
lwm VQGAN's params under those names by hand.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class ResnetBlock(nn.Module):
    out: int | None
    groups: int

    @nn.compact
    def __call__(self, x):
        out = self.out or x.shape[-1]
        h = nn.Conv(out, [3, 3])(nn.silu(nn.GroupNorm(num_groups=self.groups)(x)))
        h = nn.Conv(out, [3, 3])(nn.silu(nn.GroupNorm(num_groups=self.groups)(h)))
        if out != x.shape[-1]:
            x = nn.Conv(out, [1, 1])(x)
        return x + h


class Downsample(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
        return nn.Conv(x.shape[-1], [3, 3], strides=[2, 2], padding="VALID")(x)


class Upsample(nn.Module):
    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")
        return nn.Conv(c, [3, 3])(x)


class MidBlock(nn.Module):
    groups: int

    @nn.compact
    def __call__(self, x):
        x = ResnetBlock(None, self.groups)(x)
        return ResnetBlock(None, self.groups)(x)


class DownsamplingBlock(nn.Module):
    width: int
    n: int
    last: bool
    groups: int

    @nn.compact
    def __call__(self, x):
        for _ in range(self.n):
            x = ResnetBlock(self.width, self.groups)(x)
        return x if self.last else Downsample()(x)


class UpsamplingBlock(nn.Module):
    width: int
    n: int
    first: bool
    groups: int

    @nn.compact
    def __call__(self, x):
        for _ in range(self.n + 1):
            x = ResnetBlock(self.width, self.groups)(x)
        return x if self.first else Upsample()(x)


class LinenLWMVQGAN(nn.Module):
    """LWM's VQGAN architecture, names as linen auto-assigns them in LWM's module."""

    base: int
    mults: tuple
    n: int
    groups: int
    z: int
    k: int

    def setup(self):
        self.quant_conv = nn.Conv(self.z, [1, 1])
        self.post_quant_conv = nn.Conv(self.z, [1, 1])
        self.encoder = Encoder(self.base, self.mults, self.n, self.groups, self.z)
        self.decoder = Decoder(self.base, self.mults, self.n, self.groups)
        self.quantize = VectorQuantizer(self.k, self.z)

    def encode(self, x):
        z = self.quant_conv(self.encoder(x))
        return self.quantize(z)

    def decode(self, codes):
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))

    def __call__(self, x):
        return self.decode(self.encode(x))


class VectorQuantizer(nn.Module):
    k: int
    d: int

    def setup(self):
        self.embeddings = self.param(
            "embeddings", nn.initializers.uniform(2.0 / self.k), (self.k, self.d)
        )

    def lookup(self, codes):
        return self.embeddings[codes]

    def __call__(self, z):
        flat = z.reshape(-1, z.shape[-1])
        e = self.embeddings
        d = (flat**2).sum(1, keepdims=True) + (e.T**2).sum(0, keepdims=True) - 2 * flat @ e.T
        return jnp.argmin(d, axis=1).reshape(z.shape[:-1])


class Encoder(nn.Module):
    base: int
    mults: tuple
    n: int
    groups: int
    z: int

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.base, [3, 3])(x)
        for i, m in enumerate(self.mults):
            x = DownsamplingBlock(self.base * m, self.n, i == len(self.mults) - 1, self.groups)(x)
        x = MidBlock(self.groups)(x)
        x = nn.silu(nn.GroupNorm(num_groups=self.groups)(x))
        return nn.Conv(self.z, [3, 3])(x)


class Decoder(nn.Module):
    base: int
    mults: tuple
    n: int
    groups: int

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.base * self.mults[-1], [3, 3])(x)
        x = MidBlock(self.groups)(x)
        for i in reversed(range(len(self.mults))):
            x = UpsamplingBlock(self.base * self.mults[i], self.n, i == 0, self.groups)(x)
        x = nn.silu(nn.GroupNorm(num_groups=self.groups)(x))
        return nn.Conv(3, [3, 3])(x)


def _np_tree(tree):
    return jax.tree.map(lambda a: np.asarray(a), tree)


def lwm_layout_from_state(state: dict, num_levels: int) -> dict:
    """An lwm VQGAN `state_tree` (string keys) re-written under LWM's names and nesting."""

    def conv(node):
        return {"kernel": node["kernel"], "bias": node["bias"]}

    def norm(node):
        return {"scale": node["scale"], "bias": node["bias"]}

    def res(node):
        out = {
            "GroupNorm_0": norm(node["norm1"]),
            "Conv_0": conv(node["conv1"]),
            "GroupNorm_1": norm(node["norm2"]),
            "Conv_1": conv(node["conv2"]),
        }
        if node.get("shortcut"):
            out["Conv_2"] = conv(node["shortcut"])
        return out

    def blocks(level):
        return {f"ResnetBlock_{r}": res(b) for r, b in sorted(level["blocks"].items())}

    def mid(m):
        return {f"ResnetBlock_{r}": res(b) for r, b in sorted(m.items())}

    enc, dec = state["encoder"], state["decoder"]
    e = {"Conv_0": conv(enc["conv_in"]), "MidBlock_0": mid(enc["mid"])}
    for lvl in range(num_levels):
        level = enc["down"][str(lvl)]
        b = blocks(level)
        if level.get("downsample"):
            b["Downsample_0"] = {"Conv_0": conv(level["downsample"])}
        e[f"DownsamplingBlock_{lvl}"] = b
    e["GroupNorm_0"], e["Conv_1"] = norm(enc["norm_out"]), conv(enc["conv_out"])
    d = {"Conv_0": conv(dec["conv_in"]), "MidBlock_0": mid(dec["mid"])}
    for k, lvl in enumerate(reversed(range(num_levels))):
        level = dec["up"][str(lvl)]
        b = blocks(level)
        if level.get("upsample"):
            b["Upsample_0"] = {"Conv_0": conv(level["upsample"])}
        d[f"UpsamplingBlock_{k}"] = b
    d["GroupNorm_0"], d["Conv_1"] = norm(dec["norm_out"]), conv(dec["conv_out"])
    return _np_tree(
        {
            "encoder": e,
            "decoder": d,
            "quant_conv": conv(state["quant_conv"]),
            "post_quant_conv": conv(state["post_quant_conv"]),
            "quantize": {"embeddings": state["quantizer"]["codebook"]},
        }
    )
