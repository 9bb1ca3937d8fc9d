"""The LLaMA / LWM decoder: embeddings (text + optional vision), blocks, final norm, heads.

Callers pass tokens in natural sequence order; when the attention backend uses a load-balanced
layout (ring attention, zigzag/striped), the model permutes tokens, positions, segment ids and the
vision mask into that layout once at entry and restores natural order once on the final hidden
states, so logits, losses and caches never see the permutation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from lwm.attention import make_attention
from lwm.attention.cached import LayerCache
from lwm.dtypes import to_dtype
from lwm.layers.embed import Embedder
from lwm.layers.norms import RMSNorm
from lwm.layers.params import normal_param
from lwm.models.block import Block, block_fn
from lwm.models.config import ModelConfig
from lwm.sharding import logical_to_sharding, with_logical_constraint

Output = Literal["text", "vision", "both"]


class Transformer(nnx.Module):
    """Decoder-only LLaMA with LWM's vision extension. See `ModelConfig` for the knobs."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, mesh: Mesh | None = None):
        self.config = cfg
        self.mesh = mesh
        self.attention_op = make_attention(cfg.attention, causal=True, mesh=mesh)
        pd, dt, std = to_dtype(cfg.param_dtype), to_dtype(cfg.dtype), cfg.initializer_range
        self.embed = Embedder(
            cfg.vocab_size,
            cfg.vision_vocab_size,
            cfg.hidden_size,
            rngs=rngs,
            stddev=std,
            param_dtype=pd,
            dtype=dt,
            mesh=mesh,
        )
        if cfg.scan_layers:

            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make_blocks(rngs: nnx.Rngs) -> Block:
                return Block(cfg, self.attention_op, rngs=rngs, mesh=mesh)

            self.blocks = make_blocks(rngs)
        else:
            self.blocks = nnx.List(
                [Block(cfg, self.attention_op, rngs=rngs, mesh=mesh) for _ in range(cfg.num_layers)]
            )
        self.final_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pd, dtype=dt)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else normal_param(
                rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), stddev=std, dtype=pd
            )
        )
        self.vision_head = (
            normal_param(
                rngs,
                (cfg.hidden_size, cfg.vision_vocab_size),
                ("embed", "vocab"),
                stddev=std,
                dtype=pd,
            )
            if cfg.has_vision
            else None
        )

    def layer_blocks(self) -> list[Block]:
        """The blocks one by one. A scanned model's stacked block is sliced per layer, so in
        cached decoding every layer reads and writes its own cache buffer (a scan over layers
        would carry a stacked cache and copy each layer out of it on every step)."""
        if not self.config.scan_layers:
            return list(self.blocks)
        graphdef, stacked = nnx.split(self.blocks)
        return [
            nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], stacked))
            for i in range(self.config.num_layers)
        ]

    def hidden_states(
        self,
        tokens_bt: jax.Array,
        *,
        positions_bt: jax.Array | None = None,
        segment_ids_bt: jax.Array | None = None,
        vision_mask_bt: jax.Array | None = None,
        cache: Sequence[LayerCache] | None = None,
    ) -> jax.Array | tuple[jax.Array, tuple[LayerCache, ...]]:
        """Final-norm hidden states `[B, T, D]` in natural order.

        With `cache` (one `LayerCache` per layer, KV-cache decoding) the tokens are a chunk
        written at the cache's slots; returns `(hidden, updated caches)`. The cache attention
        shards over the mesh itself, so no layout permutation is applied then.
        """
        b, t = tokens_bt.shape
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        op = self.attention_op
        if cache is None:
            tokens_bt = op.to_layout(tokens_bt)
            positions_bt = op.to_layout(positions_bt)
            if segment_ids_bt is not None:
                segment_ids_bt = op.to_layout(segment_ids_bt)
            if vision_mask_bt is not None:
                vision_mask_bt = op.to_layout(vision_mask_bt)
        x_btd = self.embed(tokens_bt, vision_mask_bt)
        x_btd = with_logical_constraint(x_btd, ("batch", "length", "act_embed"), self.mesh)
        if cache is not None:
            if len(cache) != self.config.num_layers:
                raise ValueError(f"{len(cache)} layer caches for {self.config.num_layers} layers")
            new_cache = []
            for block, layer_cache in zip(self.layer_blocks(), cache, strict=True):
                x_btd, layer_cache = block(x_btd, positions_bt, None, cache=layer_cache)
                new_cache.append(layer_cache)
            return self.final_norm(x_btd), tuple(new_cache)
        fn = block_fn(self.config.remat_policy)
        if self.config.scan_layers:

            @nnx.scan(in_axes=(nnx.Carry, 0, None, None), out_axes=nnx.Carry)
            def run(x, block, pos, seg):
                return fn(block, x, pos, seg)

            x_btd = run(x_btd, self.blocks, positions_bt, segment_ids_bt)
        else:
            for block in self.blocks:
                x_btd = fn(block, x_btd, positions_bt, segment_ids_bt)
        x_btd = self.final_norm(x_btd)
        return op.from_layout(x_btd)

    def text_head_weight(self) -> jax.Array:
        """`[D, V]` text output projection (the transposed embedding table when tied)."""
        if self.lm_head is None:
            return self.embed.text[...].T
        return self.lm_head[...]

    def logits(self, hidden_btd: jax.Array, output: Output = "text"):
        """Projects hidden states to text logits, vision logits, or `(text, vision)`."""
        dt = to_dtype(self.config.dtype)
        names = ("batch", "length", "act_vocab")

        def project(w_dv):
            logits = jnp.einsum("btd,dv->btv", hidden_btd.astype(dt), w_dv.astype(dt))
            return with_logical_constraint(logits, names, self.mesh)

        if output in ("vision", "both") and self.vision_head is None:
            raise ValueError("this model has no vision head (vision_vocab_size = 0)")
        if output == "text":
            return project(self.text_head_weight())
        if output == "vision":
            return project(self.vision_head[...])
        if output == "both":
            return project(self.text_head_weight()), project(self.vision_head[...])
        raise ValueError(f"output must be text, vision or both, got {output!r}")

    def __call__(
        self,
        tokens_bt: jax.Array,
        *,
        positions_bt: jax.Array | None = None,
        segment_ids_bt: jax.Array | None = None,
        vision_mask_bt: jax.Array | None = None,
        output: Output = "text",
        cache: Sequence[LayerCache] | None = None,
    ):
        """Logits (`output` picks text, vision or both); with `cache`, `(logits, new cache)`."""
        hidden = self.hidden_states(
            tokens_bt,
            positions_bt=positions_bt,
            segment_ids_bt=segment_ids_bt,
            vision_mask_bt=vision_mask_bt,
            cache=cache,
        )
        if cache is None:
            return self.logits(hidden, output)
        hidden_btd, cache = hidden
        return self.logits(hidden_btd, output), cache


def _logical_axes(variable: nnx.Variable) -> tuple | None:
    return variable.get_metadata().get("logical_axes")


def param_shardings(model: nnx.Module, mesh: Mesh):
    """NamedShardings for every Variable in `model`'s state, from its logical-axis metadata.

    Scanned (stacked) layers have one more dimension than their names: it is the `layers` axis.
    """

    def sharding(v):
        names = _logical_axes(v) if isinstance(v, nnx.Variable) else None
        shape = v.get_value().shape if isinstance(v, nnx.Variable) else jnp.shape(v)
        if names is None:
            names = (None,) * len(shape)
        names = tuple(names)
        if len(shape) == len(names) + 1:
            names = ("layers",) + names
        return logical_to_sharding(names, shape, mesh)

    state = nnx.state(model)
    return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def init_model(cfg: ModelConfig, *, seed: int = 0, mesh: Mesh | None = None) -> Transformer:
    """Initialises a model; on a mesh, each parameter is created directly in its sharding."""
    if mesh is None or mesh.size == 1:
        return Transformer(cfg, rngs=nnx.Rngs(seed), mesh=mesh)
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed), mesh=mesh))
    graphdef, _ = nnx.split(abstract)

    def create():
        return nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed), mesh=mesh))

    state = jax.jit(create, out_shardings=param_shardings(abstract, mesh))()
    return nnx.merge(graphdef, state)
