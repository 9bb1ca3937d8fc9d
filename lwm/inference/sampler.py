"""KV-cache sampler: chunked prefill, jitted single-token decode, text and vision decoding.

Flow of `generate`: prompts are left-padded into a batch (positions count real tokens only), the
prompt is prefilled into the cache `prefill_chunk` tokens at a time (peak activation memory is
bounded by the chunk, not the prompt), then one token per step is decoded against the cache by a
function compiled once per (batch, cache capacity bucket). The host reads each step's tokens one
step late, so the device always has the next step queued (no per-token sync stall).

Shared prefixes (a video in `lwm chat`): `prefill(prefix)` caches it once; `generate_from(prefix,
suffixes)` copies that one-row cache to the suffix batch and only prefills the suffixes.

Vision decoding (LWM): the vision head's logits are restricted to the VQ codes, an end-of-frame
code is forced after every frame's codes and end-of-video after the last frame; classifier-free
guidance runs the unconditional prompts as the second half of the same batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lwm.attention.cached import check_cache
from lwm.cache.kv_cache import KVCache, bucket, grow, init_cache, repeat_rows
from lwm.cache.slots import CacheSlots
from lwm.errors import LwmError
from lwm.inference.sampling import (
    GREEDY,
    EosIds,
    SamplingConfig,
    cut_rows,
    eos_set,
    next_pow2,
    pad_rows,
    sample_logits,
)
from lwm.models.transformer import Transformer

StreamFn = Callable[[int, np.ndarray], None]


@dataclasses.dataclass(frozen=True)
class DecodeMode:
    """Static description of what a decode step predicts (part of the compile key)."""

    output: str = "text"
    """Head used for the next token: `text` or `vision`."""
    num_codes: int = 0
    """Vision mode: sample only codes `[0, num_codes)` (the VQ codebook); 0 = whole head."""
    guided: bool = False
    """Classifier-free guidance: the batch is [conditional rows; unconditional rows]."""


@dataclasses.dataclass
class Prefix:
    """A prefilled one-row prefix, reusable by any number of `generate_from` calls."""

    cache: KVCache
    length: int
    """Cache slots used (padding included)."""
    num_tokens: int
    """Real tokens in the prefix (the position of the next token)."""
    hidden: jax.Array
    """Final hidden state of the prefix's last token `[1, D]`."""


@dataclasses.dataclass
class Generation:
    """Raw output of the decode loop, before EOS cutting."""

    tokens: np.ndarray
    """`[B, steps]` int32 generated tokens."""
    logits: np.ndarray | None = None
    """`[B, steps, V]` logits each token was chosen from (with `return_logits`)."""


class Sampler:
    """Generates tokens from a `Transformer` with a KV cache (see the module docstring).

    `max_cache_len` fixes the cache capacity (one decode compile for every request); without it
    the capacity is the needed length rounded up to a multiple of `cache_block * sp`.
    `prefill_chunk` bounds the tokens per prefill step (default 512). `cache_block` is the key
    block of the cache attention (empty blocks beyond the written slots are skipped).
    """

    def __init__(
        self,
        model: Transformer,
        *,
        mesh: Mesh | None = None,
        max_cache_len: int | None = None,
        prefill_chunk: int | None = None,
        cache_block: int = 256,
    ):
        self.config = model.config
        self.mesh = mesh if mesh is not None else model.mesh
        check_cache(model.config.attention, max_cache_len, self.mesh)
        self.max_cache_len = max_cache_len
        self.prefill_chunk = int(prefill_chunk or 512)
        if self.prefill_chunk < 1 or cache_block < 1:
            raise LwmError(
                f"prefill_chunk ({prefill_chunk}) and cache_block ({cache_block}) must be >= 1"
            )
        self.cache_block = cache_block
        self.sp = self.mesh.shape.get("sp", 1) if self.mesh is not None else 1
        self.graphdef, self.state = nnx.split(model)
        self.counts = {"prefill_tokens": 0, "prefill_calls": 0, "decode_steps": 0}
        """Work done so far (tests count prefills to check prefix reuse)."""

    # ------------------------------------------------------------------ compiled pieces

    def _model(self, state) -> Transformer:
        return nnx.merge(self.graphdef, state)

    def _forward(self, state, cache: KVCache, tokens, positions, valid, vision, start):
        """The model on `T` new tokens written at cache slots `[start, start + T)`: the updated
        cache and the final-norm hidden state of the chunk's last slot `[B, D]` (left padding
        aligns every row's newest token to that slot)."""
        slots = CacheSlots.for_chunk(
            cache.valid, valid, start, mesh=self.mesh, key_block=self.cache_block
        )
        hidden_btd, cache = self._model(state).hidden_states(
            tokens,
            positions_bt=positions,
            vision_mask_bt=vision if self.config.has_vision else None,
            cache=cache,
            cache_slots=slots,
        )
        return cache, hidden_btd[:, -1]

    @functools.cached_property
    def prefill_fn(self):
        """The jitted prefill chunk `(state, cache, tokens, positions, valid, vision, start) ->
        (cache, last hidden [B, D])`, the cache donated (`lwm plan --inference` compiles it)."""
        return jax.jit(self._forward, donate_argnums=(1,))

    def _head(self, state, hidden_bd, key, forced_b, scale, mode: DecodeMode, sampling):
        model = self._model(state)
        logits_bv = model.logits(hidden_bd[:, None], mode.output)[:, 0].astype(jnp.float32)
        pick = logits_bv
        if mode.num_codes:
            allowed = jnp.arange(pick.shape[-1]) < mode.num_codes
            pick = jnp.where(allowed, pick, -jnp.inf)
        if mode.guided:
            half = pick.shape[0] // 2
            cond, uncond = pick[:half], pick[half:]
            guided = jnp.where(jnp.isfinite(cond), uncond + scale * (cond - uncond), -jnp.inf)
            tok = sample_logits(guided, key, sampling)
            tok = jnp.concatenate([tok, tok])
        else:
            tok = sample_logits(pick, key, sampling)
        return logits_bv, jnp.where(forced_b >= 0, forced_b, tok).astype(jnp.int32)

    @functools.cache  # noqa: B019 - one compiled head per (mode, sampling)
    def _head_fn(self, mode: DecodeMode, sampling: SamplingConfig):
        return jax.jit(functools.partial(self._head, mode=mode, sampling=sampling))

    @functools.cache  # noqa: B019 - one compiled step per (mode, sampling)
    def step_fn(self, mode: DecodeMode, sampling: SamplingConfig):
        """The jitted decode step `(state, cache, token, vision, first_slot, i, key, forced,
        scales) -> (cache, logits, next token)`, the cache donated."""

        def step(state, cache, token_b, vision_b, first_slot, i, key, forced_sb, scales_s):
            # Step i feeds token i - 1 at slot first_slot + i - 1; per-step inputs are indexed
            # on device so the host sends one scalar per step.
            slot = first_slot + i - 1
            key = jax.random.fold_in(key, i)
            forced_b, scale = forced_sb[i], scales_s[i]
            positions = cache.next_pos[:, None]
            valid = jnp.ones_like(token_b)[:, None]
            cache, hidden = self._forward(
                state, cache, token_b[:, None], positions, valid, vision_b[:, None], slot
            )
            logits, nxt = self._head(state, hidden, key, forced_b, scale, mode, sampling)
            return cache, logits, nxt

        return jax.jit(step, donate_argnums=(1,))

    # ------------------------------------------------------------------ prefill

    def _capacity(self, needed: int) -> int:
        if self.max_cache_len is not None:
            if needed > self.max_cache_len:
                raise LwmError(
                    f"request needs {needed} cache slots but max_cache_len is {self.max_cache_len}"
                )
            return self.max_cache_len
        return bucket(needed, self.cache_block * self.sp)

    def chunk_len(self, longest: int) -> int:
        """The prefill chunk for prompts of up to `longest` tokens."""
        chunk = min(self.prefill_chunk, next_pow2(max(longest, 16)))
        ffn = self.config.ffn_chunk_size
        if ffn and chunk > ffn and chunk % (ffn * self.sp):
            chunk = ffn  # the blockwise FFN needs chunk % (sp x ffn_chunk_size) == 0
        return chunk

    def _prefill_rows(
        self,
        cache: KVCache,
        start_slot: int,
        rows: Sequence[Sequence[int]],
        vision_rows: Sequence[Sequence[bool]] | None,
        start_pos: Sequence[int],
        chunk: int,
    ) -> tuple[KVCache, int, jax.Array]:
        """Left-pads `rows` to a multiple of `chunk` and runs them chunk by chunk from
        `start_slot`. Returns the cache, the slots used and the last hidden state `[B, D]`."""
        b = len(rows)
        longest = max(len(r) for r in rows)
        width = -(-longest // chunk) * chunk
        tokens = np.zeros((b, width), np.int32)
        vision = np.zeros((b, width), bool)
        valid = np.zeros((b, width), np.int32)
        positions = np.zeros((b, width), np.int32)
        for i, row in enumerate(rows):
            n = len(row)
            if n:
                tokens[i, width - n :] = row
                valid[i, width - n :] = 1
                positions[i, width - n :] = start_pos[i] + np.arange(n)
                if vision_rows is not None:
                    vision[i, width - n :] = np.asarray(vision_rows[i], bool)
        hidden = None
        for c in range(0, width, chunk):
            sl = slice(c, c + chunk)
            cache, hidden = self.prefill_fn(
                self.state,
                cache,
                jnp.asarray(tokens[:, sl]),
                jnp.asarray(positions[:, sl]),
                jnp.asarray(valid[:, sl]),
                jnp.asarray(vision[:, sl]),
                jnp.int32(start_slot + c),
            )
            self.counts["prefill_calls"] += 1
        self.counts["prefill_tokens"] += int(valid.sum())
        return cache, width, hidden

    def _check_length(self, n: int) -> None:
        limit = self.config.max_sequence_length
        if n > limit:
            raise LwmError(
                f"prompt of {n} tokens is longer than the model's max_sequence_length {limit} "
                "(pass --truncate to keep the last tokens)"
            )

    def _truncate(self, prompts, max_new_tokens: int) -> list[list[int]]:
        """Prompts over max_sequence_length keep their last tokens, leaving room for the answer."""
        limit = self.config.max_sequence_length
        keep = max(1, limit - max_new_tokens)
        return [list(p)[-keep:] if len(p) > limit else list(p) for p in prompts]

    def prefill(
        self,
        prefix_tokens: Sequence[int],
        *,
        vision_mask: Sequence[bool] | None = None,
        reserve: int = 1024,
    ) -> Prefix:
        """Caches one shared prefix (e.g. a system prompt and a video) for `generate_from`.

        Without a fixed `max_cache_len`, `reserve` extra slots are allocated for suffixes and
        answers (the cache grows later if a request needs more)."""
        tokens = [int(t) for t in prefix_tokens]
        if not tokens:
            raise LwmError("prefill needs at least one token")
        if vision_mask is not None and len(vision_mask) != len(tokens):
            raise LwmError(
                f"vision_mask has {len(vision_mask)} entries for {len(tokens)} prefix tokens"
            )
        self._check_length(len(tokens))
        chunk = self.chunk_len(len(tokens))
        width = -(-len(tokens) // chunk) * chunk
        needed = width if self.max_cache_len is not None else width + reserve
        cache = init_cache(self.config, 1, self._capacity(needed), self.mesh)
        vis = None if vision_mask is None else [list(vision_mask)]
        cache, used, hidden = self._prefill_rows(cache, 0, [tokens], vis, [0], chunk)
        return Prefix(cache, used, len(tokens), hidden)

    # ------------------------------------------------------------------ decode loop

    def decode(
        self,
        cache: KVCache,
        length: int,
        hidden: jax.Array,
        steps: int,
        *,
        mode: DecodeMode = DecodeMode(),
        sampling: SamplingConfig = GREEDY,
        seed: int = 0,
        forced: np.ndarray | None = None,
        scales: np.ndarray | None = None,
        eos_id: EosIds = None,
        stream: StreamFn | None = None,
        return_logits: bool = False,
    ) -> Generation:
        """Generates `steps` tokens after the prefilled `length` slots.

        `forced[i, b] >= 0` replaces row b's i-th token (end-of-frame codes); `scales[i]` is the
        guidance scale of step i. Stops early once every row has produced one of `eos_id` (an id
        or several: Llama-3 stops on `<|eot_id|>` and `<|end_of_text|>`).
        """
        stops = eos_set(eos_id)
        b = cache.batch
        head = self._head_fn(mode, sampling)
        step_fn = self.step_fn(mode, sampling)
        key = jax.random.key(seed)
        forced = np.full((steps, b), -1, np.int32) if forced is None else forced
        scales = np.ones((steps,), np.float32) if scales is None else scales
        vision_b = jnp.full((b,), mode.output == "vision")
        logits, tok = head(
            self.state,
            hidden,
            jax.random.fold_in(key, 0),
            jnp.asarray(forced[0]),
            jnp.float32(scales[0]),
        )
        pending = [(tok, logits)]
        out_tokens, out_logits = [], []
        done = np.zeros((b,), bool)

        def collect():
            t, lg = pending.pop(0)
            t = np.asarray(t)
            out_tokens.append(t)
            if return_logits:
                out_logits.append(np.asarray(lg))
            if stream is not None:
                stream(len(out_tokens) - 1, t)
            if stops:
                done[:] |= np.isin(t, stops)

        # Padded to a power of two: the step's compile key holds their shapes, and a new step
        # count must not recompile it (needle budgets and --max-new-tokens vary per request).
        forced_dev = jnp.asarray(pad_rows(np.asarray(forced, np.int32), -1))
        scales_dev = jnp.asarray(pad_rows(np.asarray(scales, np.float32), 1.0))
        first_slot = jnp.int32(length)
        for i in range(1, steps):
            cache, logits, tok = step_fn(
                self.state,
                cache,
                tok,
                vision_b,
                first_slot,
                np.int32(i),
                key,
                forced_dev,
                scales_dev,
            )
            self.counts["decode_steps"] += 1
            pending.append((tok, logits))
            collect()  # the previous step's tokens, read while this step runs
            if done.all():
                pending.clear()
                break
        while pending:
            collect()
        tokens = np.stack(out_tokens, axis=1) if out_tokens else np.zeros((b, 0), np.int32)
        logits = np.stack(out_logits, axis=1) if return_logits else None
        return Generation(tokens, logits)

    # ------------------------------------------------------------------ public API

    def start(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        vision_masks: Sequence[Sequence[bool]] | None = None,
        truncate: bool = False,
    ) -> tuple[KVCache, int, jax.Array]:
        """Prefills a batch of prompts into a fresh cache sized for `max_new_tokens` more."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise LwmError("every prompt needs at least one token")
        if vision_masks is not None and [len(m) for m in vision_masks] != [len(p) for p in prompts]:
            raise LwmError("vision_masks must have one entry per prompt token")
        if vision_masks is not None and truncate:
            raise LwmError("truncate is not supported together with vision masks")
        if truncate:
            prompts = self._truncate(prompts, max_new_tokens)
        for p in prompts:
            self._check_length(len(p))
        chunk = self.chunk_len(max(len(p) for p in prompts))
        width = -(-max(len(p) for p in prompts) // chunk) * chunk
        cache = init_cache(
            self.config, len(prompts), self._capacity(width + max_new_tokens), self.mesh
        )
        return self._prefill_rows(cache, 0, prompts, vision_masks, [0] * len(prompts), chunk)

    def _steps(self, max_new_tokens: int, shortest: int) -> int:
        if max_new_tokens < 1:
            raise LwmError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        return max(1, min(max_new_tokens, self.config.max_sequence_length - shortest))

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        sampling: SamplingConfig = GREEDY,
        eos_id: EosIds = None,
        seed: int = 0,
        vision_masks: Sequence[Sequence[bool]] | None = None,
        truncate: bool = False,
        stream: StreamFn | None = None,
    ) -> list[list[int]]:
        """Generated text tokens per prompt (prompt excluded), cut after EOS (EOS included).

        A prompt longer than `max_sequence_length` is an error unless `truncate` (then its last
        `max_sequence_length - max_new_tokens` tokens are kept); generation also stops at
        `max_sequence_length` (per row)."""
        if max_new_tokens < 1:
            raise LwmError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if truncate and vision_masks is None:
            prompts = self._truncate(prompts, max_new_tokens)
        cache, length, hidden = self.start(
            prompts, max_new_tokens=max_new_tokens, vision_masks=vision_masks, truncate=truncate
        )
        lengths = [len(p) for p in prompts]
        return self._decode_rows(
            cache, length, hidden, lengths, max_new_tokens, sampling, seed, eos_id, stream
        )

    def extend(
        self, prefix: Prefix, suffixes: Sequence[Sequence[int]], *, max_new_tokens: int
    ) -> tuple[KVCache, int, jax.Array]:
        """The prefix's cache copied to one row per suffix, with the suffixes prefilled."""
        if not suffixes:
            raise LwmError("generate_from needs at least one suffix")
        for s in suffixes:
            self._check_length(prefix.num_tokens + len(s))
        longest = max(len(s) for s in suffixes)
        if longest == 0:  # answer right after the prefix
            if len(suffixes) > 1:
                raise LwmError("empty suffixes cannot be batched with others")
            cache = repeat_rows(prefix.cache, 1, self.mesh)
            cache = grow(cache, self._capacity(prefix.length + max_new_tokens), self.mesh)
            return cache, prefix.length, prefix.hidden
        if min(len(s) for s in suffixes) == 0:
            raise LwmError("empty suffixes cannot be batched with others")
        chunk = self.chunk_len(longest)
        width = -(-longest // chunk) * chunk
        cache = repeat_rows(prefix.cache, len(suffixes), self.mesh)
        cache = grow(cache, self._capacity(prefix.length + width + max_new_tokens), self.mesh)
        rows = [list(s) for s in suffixes]
        cache, used, hidden = self._prefill_rows(
            cache, prefix.length, rows, None, [prefix.num_tokens] * len(rows), chunk
        )
        return cache, prefix.length + used, hidden

    def generate_from(
        self,
        prefix: Prefix,
        suffixes: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        sampling: SamplingConfig = GREEDY,
        eos_id: EosIds = None,
        seed: int = 0,
        stream: StreamFn | None = None,
    ) -> list[list[int]]:
        """Answers every suffix after the cached `prefix` (which is not modified), batched."""
        if max_new_tokens < 1:
            raise LwmError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        cache, length, hidden = self.extend(prefix, suffixes, max_new_tokens=max_new_tokens)
        lengths = [prefix.num_tokens + len(s) for s in suffixes]
        return self._decode_rows(
            cache, length, hidden, lengths, max_new_tokens, sampling, seed, eos_id, stream
        )

    def _decode_rows(
        self, cache, length, hidden, lengths, max_new_tokens, sampling, seed, eos_id, stream
    ) -> list[list[int]]:
        """Decodes after prefilled rows of `lengths` real tokens and cuts each row at EOS."""
        gen = self.decode(
            cache,
            length,
            hidden,
            self._steps(max_new_tokens, min(lengths)),
            sampling=sampling,
            seed=seed,
            eos_id=eos_id,
            stream=stream,
        )
        return cut_rows(gen.tokens.tolist(), lengths, self.config.max_sequence_length, eos_id)
