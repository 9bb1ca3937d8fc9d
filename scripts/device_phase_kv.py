"""device_check's `kvdtype` phase (`--phases kvdtype`): decode tokens/s of the `1b` preset with
32K and 128K tokens in the KV cache, stored as bf16 vs int8 vs float8_e4m3fn (8-bit codes plus
a bf16 scale per token and kv head, `lwm.cache.quant`). One record per (kv dtype, context): the
tokens/s of `steps` greedy decode steps after a compile call, the cache bytes on the device and
the speed relative to the bf16 cache at the same context. `--cpu-dry-run`: the `debug` preset at
128 tokens.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

KV_DTYPES = ("bfloat16", "int8", "float8_e4m3fn")


def shapes(dry: bool) -> tuple[str, list[int], int]:
    """(preset, contexts, decode steps)."""
    return ("debug", [128], 4) if dry else ("1b", [32768, 131072], 64)


def run_kvdtype(ph, dry: bool, model_config: Callable) -> None:
    """Emits one record per (kv dtype, context) through `ph` (device_check's `Phase`);
    `model_config(preset, seq_len, train=False)` is device_check's model config builder."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lwm.cache.kv_cache import init_cache, kv_cache_bytes
    from lwm.inference.sampler import Sampler
    from lwm.models.transformer import Transformer

    preset, contexts, steps = shapes(dry)
    base = model_config(preset, max(contexts) + 2 * steps, train=False)
    holder = {}

    def build():
        holder["model"] = Transformer(base, rngs=nnx.Rngs(0))
        return None

    ph.guard({"name": f"kvdtype-{preset}-init"}, build)
    if "model" not in holder:
        return
    bf16_tps = {}
    for ctx in contexts:
        for kv in KV_DTYPES:

            def one(ctx=ctx, kv=kv):
                cfg = base.replace(kv_dtype=kv)  # the cache decides the kernel, not the model
                capacity = ctx + 2 * steps + 256
                sampler = Sampler(holder["model"], max_cache_len=capacity)

                def filled_cache():  # `ctx` valid slots: decode cost follows them, not values
                    cache = init_cache(cfg, 1, capacity, None)
                    valid = jnp.zeros((1, capacity), jnp.int32).at[:, :ctx].set(1)
                    pos = jnp.full((1,), ctx, jnp.int32)
                    return dataclasses.replace(cache, valid=valid, next_pos=pos)

                hidden = jnp.zeros((1, cfg.hidden_size), jnp.bfloat16)
                t0 = time.perf_counter()
                sampler.decode(filled_cache(), ctx, hidden, steps)  # compile (donated cache)
                first = time.perf_counter() - t0
                cache = filled_cache()
                jax.block_until_ready(cache)
                t0 = time.perf_counter()
                gen = sampler.decode(cache, ctx, hidden, steps)
                jax.block_until_ready(gen.tokens)
                tps = steps / (time.perf_counter() - t0)
                out = {
                    "tokens_per_s": tps,
                    "steps": steps,
                    "first_call_s": first,
                    "cache_bytes": kv_cache_bytes(cfg, 1, capacity),
                }
                if kv == "bfloat16":
                    bf16_tps[ctx] = tps
                elif ctx in bf16_tps:
                    out["speed_vs_bf16"] = tps / bf16_tps[ctx]
                return out

            ph.guard({"name": f"decode-{preset}", "kv_dtype": kv, "context": ctx}, one)
