"""Decode tokens/s at long context: lwm's KV-cache sampler vs HF transformers (torch CPU).

Both run the same weights (a random HF LLaMA, converted with `lwm.interop.hf_convert`) and the
same greedy decoding from the same prompt. Prefill is excluded from the decode timing on both
sides: lwm times `Sampler.decode` after `Sampler.start`; transformers times its token-by-token
loop with a `DynamicCache` after a prefill forward. The two alternate run by run (so a busy
machine slows both alike). One JSON line per context with the median of --repeats timed runs
after a warm-up run each, the ratio lwm/transformers and whether the greedy tokens agree.
Example (the issue's measurement):

  python scripts/bench_decode.py --contexts 2048 8192 --new-tokens 32

With `--capacity C` it measures instead what a decode step costs as the cache's capacity grows
past its filled slots (lwm alone, a random model): steps at `--filled` tokens in a C-slot cache
vs in a cache of exactly the filled size, alternating, medians after a warm-up run (per step: a
long call minus a short one, so per-request costs such as freeing the cache cancel); CPU time of
this process (robust on a shared machine) and wall clock; `--kv-dtype` picks the cache storage and
`--devices N` shards the slots over N simulated CPU devices (sp=N). Target: ratio within 1.1.

  python scripts/bench_decode.py --capacity 65536 --filled 4096 --kv-dtype int8 --devices 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up run")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--cache-block", type=int, default=1024, help="lwm cache attention key block")
    p.add_argument("--prefill-chunk", type=int, default=1024)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0 = torch default). On a shared, busy machine use 1: torch's "
        "multi-threaded decode stalls when its cores are taken (~10x slower), which would "
        "inflate the ratio",
    )
    p.add_argument("--capacity", type=int, default=None, help="capacity mode (see above)")
    p.add_argument("--filled", type=int, default=4096, help="capacity mode: filled slots")
    p.add_argument("--kv-dtype", default="auto", help="capacity mode: the cache's kv dtype")
    p.add_argument("--devices", type=int, default=1, help="capacity mode: sp over N CPU devices")
    return p.parse_args(argv)


def capacity_bench(args) -> None:
    """Decode steps at `--filled` slots: a `--capacity`-slot cache vs a `--filled`-slot one."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from lwm.cache.kv_cache import init_cache, map_fields, place
    from lwm.inference.sampler import Sampler
    from lwm.models.config import ModelConfig
    from lwm.models.transformer import Transformer
    from lwm.sharding import make_mesh

    cfg = ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        max_sequence_length=args.capacity + args.new_tokens + 16,
        kv_dtype=args.kv_dtype,
    )
    mesh = make_mesh({"sp": args.devices}) if args.devices > 1 else None
    model = Transformer(cfg, rngs=nnx.Rngs(0), mesh=mesh)
    rng = np.random.default_rng(0)
    runs = {}
    for name, capacity in (("big", args.capacity), ("exact", args.filled + args.new_tokens)):
        capacity = -(-capacity // (256 * args.devices)) * 256 * args.devices
        sampler = Sampler(model, mesh=mesh, max_cache_len=capacity)
        empty = init_cache(cfg, 1, capacity, mesh)

        def fill(x, axes, filled=args.filled):
            if axes == ("batch", "length"):  # the valid mask: the first `filled` slots
                return x.at[:, :filled].set(1)
            if "length" not in axes:
                return x
            # Keys, values, scales: small random entries of the stored dtype (bits included).
            return jnp.asarray(rng.integers(0, 100, x.shape)).astype(x.dtype)

        filled = place(map_fields(fill, empty), mesh)
        filled = dataclasses.replace(filled, next_pos=jnp.full((1,), args.filled, jnp.int32))
        hidden = jnp.asarray(rng.standard_normal((1, cfg.hidden_size)), jnp.float32)
        runs[name] = (sampler, filled, hidden, capacity)
    # Per step: a long and a short decode call, the difference over the extra steps. A call's
    # fixed costs (the first head, releasing the donated cache at the end: unmapping a 64K-slot
    # cache's pages takes ~0.2 s here) are per request, not per step, and cancel out.
    short = max(2, args.new_tokens // 4)
    times = {name: ([], []) for name in runs}
    for i in range(args.repeats + 1):
        for name, (sampler, filled, hidden, _) in runs.items():
            took = []
            for n in (args.new_tokens, short):
                cache = jax.tree.map(jnp.copy, filled)
                jax.block_until_ready(cache)
                c0, w0 = time.process_time(), time.perf_counter()
                sampler.decode(cache, args.filled, hidden, n)
                took.append((time.process_time() - c0, time.perf_counter() - w0))
            if i:
                times[name][0].append(took[0][0] - took[1][0])
                times[name][1].append(took[0][1] - took[1][1])
    steps = args.new_tokens - short
    med = {n: [statistics.median(t) / steps * 1e3 for t in ts] for n, ts in times.items()}
    record = {
        "bench": "decode_capacity",
        "filled": args.filled,
        "capacity": runs["big"][3],
        "exact_capacity": runs["exact"][3],
        "kv_dtype": args.kv_dtype,
        "devices": args.devices,
        "cpu_ms_per_step": {
            "capacity": round(med["big"][0], 3),
            "exact": round(med["exact"][0], 3),
        },
        "wall_ms_per_step": {
            "capacity": round(med["big"][1], 3),
            "exact": round(med["exact"][1], 3),
        },
        "ratio_cpu": round(med["big"][0] / med["exact"][0], 3),
        "ratio_wall": round(med["big"][1] / med["exact"][1], 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(record), flush=True)


def build_checkpoints(args, root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lwm.interop.hf_convert import convert_from_hf

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.contexts) + args.new_tokens + 16,
        rope_theta=1e6,
    )
    hf_dir = root / "hf"
    LlamaForCausalLM(cfg).save_pretrained(hf_dir)
    return hf_dir, convert_from_hf(hf_dir, root / "lwm")


def lwm_runner(args, ckpt) -> Callable[[list[int]], tuple[float, list[int]]]:
    """One timed lwm decode of a prompt (prefill and cache setup untimed)."""
    import jax

    import lwm
    from lwm.inference.sampler import Sampler

    sampler = Sampler(
        lwm.load_model(ckpt), prefill_chunk=args.prefill_chunk, cache_block=args.cache_block
    )

    def run(prompt: list[int]) -> tuple[float, list[int]]:
        cache, length, hidden = sampler.start([prompt], max_new_tokens=args.new_tokens)
        jax.block_until_ready((cache, hidden))
        t0 = time.perf_counter()
        gen = sampler.decode(cache, length, hidden, args.new_tokens)
        return time.perf_counter() - t0, gen.tokens[0].tolist()

    return run


def hf_runner(args, hf_dir) -> Callable[[list[int]], tuple[float, list[int]]]:
    """One timed transformers decode (token by token with a `DynamicCache`, prefill untimed)."""
    import torch
    from transformers import DynamicCache, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()

    def run(prompt: list[int]) -> tuple[float, list[int]]:
        with torch.no_grad():
            cache = DynamicCache()
            out = model(torch.as_tensor([prompt]), past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            got = [int(tok)]
            t0 = time.perf_counter()
            for _ in range(args.new_tokens - 1):
                out = model(tok, past_key_values=out.past_key_values, use_cache=True)
                tok = out.logits[:, -1].argmax(-1, keepdim=True)
                got.append(int(tok))
            return time.perf_counter() - t0, got

    return run


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.capacity is not None:
        if args.devices > 1:  # before jax is imported
            flag = f"--xla_force_host_platform_device_count={args.devices}"
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
        capacity_bench(args)
        return 0
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, ckpt = build_checkpoints(args, pathlib.Path(tmp))
        runners = {"lwm": lwm_runner(args, ckpt), "transformers": hf_runner(args, hf_dir)}
        for ctx in args.contexts:
            prompt = np.random.default_rng(ctx).integers(3, args.vocab, ctx).tolist()
            # Runs alternate between the two (the first of each warms up and compiles), so load
            # from other processes hits both sides alike.
            times = {name: [] for name in runners}
            tokens = {}
            for i in range(args.repeats + 1):
                for name, run in runners.items():
                    dt, tokens[name] = run(prompt)
                    if i:
                        times[name].append(dt)
            lwm_times, hf_times = times["lwm"], times["transformers"]
            lwm_tokens, hf_tokens = tokens["lwm"], tokens["transformers"]
            # Both time new_tokens - 1 decode steps (the first token comes from the prefill).
            steps = args.new_tokens - 1
            lwm_tps = steps / statistics.median(lwm_times)
            hf_tps = steps / statistics.median(hf_times)
            record = {
                "bench": "decode",
                "context": ctx,
                "new_tokens": args.new_tokens,
                "model": {
                    "hidden": args.hidden,
                    "layers": args.layers,
                    "heads": args.heads,
                    "kv_heads": args.kv_heads,
                    "vocab": args.vocab,
                },
                "lwm_tokens_per_s": round(lwm_tps, 2),
                "transformers_tokens_per_s": round(hf_tps, 2),
                "ratio_lwm_over_transformers": round(lwm_tps / hf_tps, 3),
                "greedy_tokens_match": lwm_tokens == hf_tokens,
                "torch_threads": torch.get_num_threads(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
            print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
