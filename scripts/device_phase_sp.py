"""device_check phase `sp`: causal fwd+bwd throughput of the sequence-parallel backends.

ring (zigzag), ulysses (all-to-all over sp) and hybrid (all-to-all groups of sp / 2 x a 2-way
ring) on every device of the process as one `sp` axis, at T = 128K (B 1, 32 heads, 8 kv heads,
head dim 128, bf16; --cpu-dry-run: T = 512, 8 heads, 2 kv heads, head dim 32, fp32). Each record
holds the median seconds after warm-up, tokens/s, and `speed_vs_ring` (the ring's seconds / the
backend's). On one device sp = 1 and all three run the same local kernel (the record says so):
issue 27's goal, ulysses / hybrid >= 1.3x the ring's throughput at 128K, needs 8 GPUs.

`scripts/device_check.py` calls `run_sp(phase, dry)`; `phase` is its Phase (name, rec.emit, left,
guard).
"""

from __future__ import annotations

import statistics
import time

GOAL = ">= 1.3x the ring's throughput at 128K on 8 GPUs (issue 27)"


def shapes(dry: bool) -> dict:
    """The phase's problem: batch, heads, kv heads, head dim, length, chunk, dtype."""
    if dry:
        return dict(b=1, n=8, kh=2, h=32, t=512, chunk=32, dtype="float32")
    return dict(b=1, n=32, kh=8, h=128, t=131072, chunk=1024, dtype="bfloat16")


def _median_s(fn, args, *, iters: int, budget_s: float) -> tuple[float, int, float]:
    """(median seconds, runs, first-call seconds): compile + warm-up, then up to `iters` runs
    while within `budget_s`."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < iters and (not times or sum(times) + first < budget_s):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times), first


def run_sp(ph, dry: bool) -> None:
    """Times ring, ulysses and hybrid fwd+bwd; one record each (errors/skips via `ph.guard`)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lwm.attention import make_attention
    from lwm.attention.config import AttentionConfig
    from lwm.sharding import make_mesh

    s = shapes(dry)
    mesh = make_mesh({"sp": -1})
    sp = mesh.shape["sp"]
    group = sp // 2 if sp > 1 else 1
    dtype = jnp.dtype(s["dtype"])
    spec = NamedSharding(mesh, P(None, "sp", None, None))
    ks = jax.random.split(jax.random.key(0), 4)
    q_shape, kv_shape = (s["b"], s["t"], s["n"], s["h"]), (s["b"], s["t"], s["kh"], s["h"])
    q, do = (jax.device_put(jax.random.normal(k, q_shape, dtype), spec) for k in ks[::3])
    k, v = (jax.device_put(jax.random.normal(k, kv_shape, dtype), spec) for k in ks[1:3])
    note = (
        "1 device: sp = 1, ring, ulysses and hybrid run the same local kernel; the goal needs "
        "8 devices"
        if sp == 1
        else f"sp = {sp} over the process's devices"
    )
    ring_s = None
    for backend in ("ring", "ulysses", "hybrid"):
        cfg = AttentionConfig(
            backend=backend,
            ulysses=group if backend == "hybrid" else 0,
            query_chunk_size=s["chunk"],
            key_chunk_size=s["chunk"],
        )
        what = {
            "name": backend,
            "seq_len": s["t"],
            "sp": sp,
            "ulysses": group if backend == "hybrid" else (sp if backend == "ulysses" else 0),
            "heads": s["n"],
            "kv_heads": s["kh"],
            "head_dim": s["h"],
            "dtype": s["dtype"],
        }

        def one(cfg=cfg, ring_s=ring_s):
            op = make_attention(cfg, causal=True, mesh=mesh)
            op.check(s["t"], mesh)
            op.check_heads(s["n"], s["kh"], mesh)

            def fwd_bwd(q, k, v, do):  # forward included, as training runs it
                _, vjp = jax.vjp(op, q, k, v)
                return vjp(do)

            budget = max(ph.left() / 3, 1.0)
            sec, runs, first = _median_s(jax.jit(fwd_bwd), (q, k, v, do), iters=3, budget_s=budget)
            res = {
                "fwd_bwd_s": sec,
                "tokens_per_s": s["b"] * s["t"] / sec,
                "runs": runs,
                "first_call_s": first,
                "note": note,
            }
            if ring_s:
                res["speed_vs_ring"] = ring_s / sec
                res["goal"] = GOAL
            return res

        res = ph.guard(what, one)
        if backend == "ring" and res:
            ring_s = res["fwd_bwd_s"]
