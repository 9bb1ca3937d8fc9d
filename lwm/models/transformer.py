"""The LLaMA / LWM decoder: embeddings (text + optional vision), blocks, final norm, heads.

Callers pass tokens in natural sequence order; when the attention backend uses a load-balanced
layout (ring attention, zigzag/striped), the model permutes tokens, positions, segment ids and the
vision mask into that layout once at entry and restores natural order once on the final hidden
states, so logits, losses and caches never see the permutation.

Every call returns a `ModelOutput`. KV-cache decoding (Gemma style): `cache = model.init_cache(B,
S)`, then `model(tokens, positions_bt=..., cache=cache, cache_slots=...)` writes the chunk at
`cache_slots` (`lwm.cache.slots.CacheSlots`) and returns the updated cache in the output.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from lwm.attention import make_attention
from lwm.cache.kv_cache import KVCache, init_cache
from lwm.cache.slots import CacheSlots
from lwm.dtypes import to_dtype
from lwm.layers.embed import Embedder
from lwm.layers.norms import RMSNorm
from lwm.layers.params import normal_param
from lwm.models.block import Block, block_fn
from lwm.models.config import ModelConfig
from lwm.models.layer_weights import LayerWeights, gather_axes
from lwm.models.output import ModelOutput
from lwm.sharding import logical_to_sharding, with_logical_constraint

Output = Literal["text", "vision", "both"]
Head = Literal["text", "vision"]


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

    def init_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty KV cache of `capacity` slots for `batch` rows, sharded on the model's mesh."""
        return init_cache(self.config, batch, capacity, self.mesh)

    def hidden_states(
        self,
        tokens_bt: jax.Array,
        *,
        positions_bt: jax.Array | None = None,
        segment_ids_bt: jax.Array | None = None,
        vision_mask_bt: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_slots: CacheSlots | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states `[B, T, D]` in natural order, and the updated cache.

        With `cache` (KV-cache decoding) the tokens are a chunk written at `cache_slots`; the
        cache attention shards over the mesh itself, so no layout permutation is applied then.
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
        # A cached chunk is small: look it up in the table as sharded and move the chunk's
        # activations, not the whole table (training gathers the table, see `Embedder`).
        x_btd = self.embed(tokens_bt, vision_mask_bt, gather_table=cache is None)
        x_btd = with_logical_constraint(x_btd, ("batch", "length", "act_embed"), self.mesh)
        if cache is not None:
            if cache_slots is None:
                raise ValueError("a cache needs cache_slots (where the chunk is written)")
            if cache.num_layers != self.config.num_layers:
                raise ValueError(
                    f"{cache.num_layers} layer caches for {self.config.num_layers} layers"
                )
            new_layers = []
            n = self.config.num_layers
            weights = LayerWeights(
                self.blocks,
                scanned=self.config.scan_layers,
                mesh=self.mesh,
                axes=gather_axes(x_btd.shape, self.mesh),
            )
            block = weights.fetch(0, x_btd)
            for i, layer_cache in enumerate(cache.layers(cache_slots)):
                # The next layer's weights are gathered while this one runs, not before.
                nxt = weights.fetch(i + 1, x_btd) if i + 1 < n else None
                x_btd, layer_cache = block(x_btd, positions_bt, None, cache=layer_cache)
                new_layers.append(layer_cache)
                block = nxt
            cache = cache.advance(new_layers, cache_slots, positions_bt)
            return self.final_norm(x_btd), cache
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
        return op.from_layout(x_btd), None

    def text_head_weight(self) -> jax.Array:
        """`[D, V]` text output projection (the transposed embedding table when tied)."""
        if self.lm_head is None:
            return self.embed.text[...].T
        return self.lm_head[...]

    def logits(self, hidden_btd: jax.Array, head: Head = "text") -> jax.Array:
        """Projects hidden states `[B, T, D]` through the text or the vision head."""
        if head == "vision" and self.vision_head is None:
            raise ValueError("this model has no vision head (vision_vocab_size = 0)")
        if head not in ("text", "vision"):
            raise ValueError(f"head must be text or vision, got {head!r}")
        w_dv = self.text_head_weight() if head == "text" else self.vision_head[...]
        dt = to_dtype(self.config.dtype)
        logits = jnp.einsum("btd,dv->btv", hidden_btd.astype(dt), w_dv.astype(dt))
        return with_logical_constraint(logits, ("batch", "length", "act_vocab"), self.mesh)

    def __call__(
        self,
        tokens_bt: jax.Array,
        *,
        positions_bt: jax.Array | None = None,
        segment_ids_bt: jax.Array | None = None,
        vision_mask_bt: jax.Array | None = None,
        output: Output = "text",
        cache: KVCache | None = None,
        cache_slots: CacheSlots | None = None,
    ) -> ModelOutput:
        """The logits `output` picks (text, vision or both) and, with `cache`, the updated
        cache, as one `ModelOutput`."""
        if output not in ("text", "vision", "both"):
            raise ValueError(f"output must be text, vision or both, got {output!r}")
        if output != "text" and self.vision_head is None:
            raise ValueError("this model has no vision head (vision_vocab_size = 0)")
        hidden_btd, cache = self.hidden_states(
            tokens_bt,
            positions_bt=positions_bt,
            segment_ids_bt=segment_ids_bt,
            vision_mask_bt=vision_mask_bt,
            cache=cache,
            cache_slots=cache_slots,
        )
        text = self.logits(hidden_btd, "text") if output in ("text", "both") else None
        vision = self.logits(hidden_btd, "vision") if output in ("vision", "both") else None
        return ModelOutput(logits=text, vision_logits=vision, cache=cache)


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
