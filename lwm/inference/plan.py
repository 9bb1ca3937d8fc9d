"""Ahead-of-time plan of inference: compile the sampler's prefill chunk and decode step.

`plan_inference` builds the model abstractly on the mesh, a KV cache of `seq_len` slots (the
sampler's capacity bucket) as sharded `ShapeDtypeStruct`s, and lowers + compiles the sampler's
own jitted prefill chunk (`prefill_chunk` tokens) and decode step on them: nothing is allocated,
so a 1M-token prompt of a 7B model on 64 devices can be checked on simulated CPU devices. It
reports per-device weights and KV cache (from the shardings) and XLA's temporaries of each
program; the peak is weights + cache + the larger program's temporaries and outputs not aliased
to the donated cache.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lwm.dtypes import to_dtype
from lwm.models.config import ModelConfig, apply_kv_dtype

LWM_TOKENS_PER_FRAME = 257
"""LWM's vision tokens per frame: 16 x 16 codes + one end-of-frame / end-of-video token."""


def _device_bytes(x: jax.ShapeDtypeStruct) -> int:
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """XLA's per-device buffer assignment of one compiled program."""

    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    generated_code: int
    compile_seconds: float


@dataclasses.dataclass(frozen=True)
class InferencePlan:
    """What `lwm plan --inference` reports."""

    seq_len: int
    capacity: int
    """KV-cache slots (seq_len rounded up to the sampler's bucket)."""
    batch: int
    prefill_chunk: int
    mesh: dict[str, int]
    devices: int
    params: int
    weights: int
    """Per-device parameter bytes."""
    kv_cache: int
    """Per-device bytes of the keys and values (all layers), scales of an 8-bit cache included."""
    kv_scales: int
    """Per-device bytes of those that are the 8-bit cache's scales (0 otherwise)."""
    kv_dtype: str
    """Storage dtype of the cached keys and values (`--kv-dtype`, `auto` resolved)."""
    cache_other: int
    """Per-device bytes of the cache's valid mask and positions."""
    prefill: ProgramMemory
    decode: ProgramMemory
    memory_per_device: int | None

    @property
    def temporaries(self) -> int:
        return max(self.prefill.temporaries, self.decode.temporaries)

    @property
    def total(self) -> int:
        """Peak per-device bytes: weights + cache + the worse program's extra buffers."""

        def extra(p: ProgramMemory) -> int:
            return p.temporaries + max(0, p.outputs - p.aliased) + p.generated_code

        return (
            self.weights
            + self.kv_cache
            + self.cache_other
            + max(map(extra, [self.prefill, self.decode]))
        )

    @property
    def fits(self) -> bool | None:
        return None if self.memory_per_device is None else self.total <= self.memory_per_device

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(total=self.total, fits=self.fits, temporaries=self.temporaries)
        return d


def kv_cache_bytes(cfg: ModelConfig, batch: int, capacity: int) -> int:
    """Total (all devices) bytes of keys + values, 2 x L x B x S x K x H x itemsize of the
    cache's storage dtype (`cfg.kv_dtype`), plus an 8-bit cache's scales."""
    from lwm.cache import kv_cache

    return kv_cache.kv_cache_bytes(cfg, batch, capacity)


def _kv_dtype_name(cfg: ModelConfig) -> str:
    """`--kv-dtype` of `cfg`, `auto` resolved to the compute dtype (the cache may store bf16
    and fp8 as their raw bits, so its arrays' dtypes do not say)."""
    return np.dtype(to_dtype(cfg.dtype)).name if cfg.kv_dtype == "auto" else cfg.kv_dtype


def _program(lowered_fn, *args) -> ProgramMemory:
    t0 = time.perf_counter()
    compiled = lowered_fn.lower(*args).compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    return ProgramMemory(
        int(m.argument_size_in_bytes),
        int(m.output_size_in_bytes),
        int(m.alias_size_in_bytes),
        int(m.temp_size_in_bytes),
        int(m.generated_code_size_in_bytes),
        seconds,
    )


def plan_inference(
    cfg: ModelConfig,
    mesh,
    seq_len: int,
    *,
    batch: int = 1,
    prefill_chunk: int = 512,
    cache_block: int = 256,
    memory_per_device: int | None = None,
) -> InferencePlan:
    """Compiles the sampler's prefill chunk and decode step for a `seq_len`-slot cache."""
    from flax import nnx

    from lwm.cache.kv_cache import bucket, cache_specs
    from lwm.errors import LwmError
    from lwm.inference.sampler import DecodeMode, Sampler
    from lwm.inference.sampling import GREEDY
    from lwm.models.transformer import Transformer, param_shardings

    if seq_len < 1 or batch < 1:
        raise LwmError(f"--seq-len and batch must be >= 1, got {seq_len} and {batch}")
    cfg = cfg.replace(max_sequence_length=max(cfg.max_sequence_length, seq_len))
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), mesh=mesh))
    shardings = param_shardings(model, mesh)
    sampler = Sampler(model, mesh=mesh, prefill_chunk=prefill_chunk, cache_block=cache_block)

    def with_sharding(v, s):
        x = v.get_value()
        return v.replace(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s))

    state = jax.tree.map(
        with_sharding, sampler.state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    sp = sampler.sp
    capacity = bucket(seq_len, cache_block * sp)
    chunk = sampler.chunk_len(seq_len)
    cache = cache_specs(cfg, batch, capacity, mesh)

    def arr(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype)

    i32 = jnp.int32
    prefill = _program(
        sampler.prefill_fn,
        state,
        cache,
        arr((batch, chunk), i32),
        arr((batch, chunk), i32),
        arr((batch, chunk), i32),
        arr((batch, chunk), jnp.bool_),
        arr((), i32),
    )
    steps = 8
    decode = _program(
        sampler.step_fn(DecodeMode(), GREEDY),
        state,
        cache,
        arr((batch,), i32),
        arr((batch,), jnp.bool_),
        arr((), i32),
        arr((), i32),
        jax.eval_shape(lambda: jax.random.key(0)),
        arr((steps, batch), i32),
        arr((steps,), jnp.float32),
    )
    leaves = jax.tree.leaves(state)
    codes = sum(_device_bytes(x) for x in (*cache.ks, *cache.vs))
    return InferencePlan(
        seq_len=seq_len,
        capacity=capacity,
        batch=batch,
        prefill_chunk=chunk,
        mesh={k: int(v) for k, v in mesh.shape.items()},
        devices=int(mesh.size),
        params=sum(int(np.prod(x.shape)) for x in leaves),
        weights=sum(_device_bytes(x) for x in leaves),
        kv_cache=sum(_device_bytes(x) for x in cache.layer_arrays()),
        kv_scales=sum(_device_bytes(x) for x in cache.layer_arrays()) - codes,
        kv_dtype=_kv_dtype_name(cfg),
        cache_other=sum(_device_bytes(x) for x in cache.row_arrays()),
        prefill=prefill,
        decode=decode,
        memory_per_device=memory_per_device,
    )


def format_inference_plan(p: InferencePlan) -> str:
    from lwm.training.plan import format_bytes

    mesh = ",".join(f"{k}={v}" for k, v in p.mesh.items() if v > 1) or "1 device"
    fits = "" if p.fits is None else (" (fits)" if p.fits else " (DOES NOT FIT)")
    budget = "" if p.memory_per_device is None else f" of {format_bytes(p.memory_per_device)}"
    scales = f" + scales {format_bytes(p.kv_scales)}" if p.kv_scales else ""
    lines = [
        f"inference plan: {p.seq_len:,} tokens (cache {p.capacity:,} slots, batch {p.batch}) "
        f"on {p.devices} devices ({mesh}), prefill chunk {p.prefill_chunk}",
        f"  params            {p.params:,}",
        f"  weights / device  {format_bytes(p.weights)}",
        f"  KV cache / device {format_bytes(p.kv_cache)} ({p.kv_dtype}{scales}) "
        f"(+{format_bytes(p.cache_other)} masks)",
        f"  prefill chunk     temporaries {format_bytes(p.prefill.temporaries)}, "
        f"compiled in {p.prefill.compile_seconds:.1f}s",
        f"  decode step       temporaries {format_bytes(p.decode.temporaries)}, "
        f"compiled in {p.decode.compile_seconds:.1f}s",
        f"  peak / device     {format_bytes(p.total)}{budget}{fits}",
        f"  video at LWM's {LWM_TOKENS_PER_FRAME} tokens/frame: "
        f"{p.seq_len // LWM_TOKENS_PER_FRAME:,} frames (1 fps: "
        f"{p.seq_len / LWM_TOKENS_PER_FRAME / 60:.1f} min)",
    ]
    return "\n".join(lines)


def run_plan_cli(args) -> int:
    """`lwm plan --inference --config C --seq-len N [--devices D] [--mesh ...]`."""
    import json

    from lwm.config import load_config
    from lwm.errors import LwmError
    from lwm.inference.runtime import parse_mesh
    from lwm.sharding import make_mesh
    from lwm.training.plan import parse_bytes

    if args.seq_len is None:
        raise LwmError("--inference needs --seq-len N (tokens of prompt + answer)")
    cfg = ModelConfig.from_dict(load_config(args.config, args.config_overrides).model)
    cfg = apply_kv_dtype(cfg, getattr(args, "kv_dtype", None))
    mesh = parse_mesh(args.mesh) or make_mesh({"sp": jax.device_count()})
    budget = None if args.memory_per_device is None else parse_bytes(args.memory_per_device)
    plan = plan_inference(
        cfg,
        mesh,
        args.seq_len,
        batch=args.batch_size or 1,
        prefill_chunk=args.prefill_chunk,
        memory_per_device=budget,
    )
    print(json.dumps(plan.to_dict()) if args.json else format_inference_plan(plan), flush=True)
    return 0
