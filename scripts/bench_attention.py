"""Times causal ring attention, forward and forward+backward: lwm vs the reference package.

One JSON line per measurement (median of --repeats runs after a warm-up run), then, when both
impls ran, one line with the lwm/ref ratios. Examples:

  # one process, 8 simulated CPU devices on the sp axis
  python scripts/bench_attention.py --impl lwm,ref --seq 16384 --heads 4 --dim 64 --devices 8
  # two local processes (jax.distributed over gloo), each pinned to its own core, one device each
  python scripts/bench_attention.py --impl lwm,ref --seq 16384 --heads 4 --dim 64 --processes 2

`ref` is `ringattention==0.1.2` (dev extra), contiguous layout; it has no GQA, so with
--kv-heads < --heads its K/V are repeated to all heads (noted in its JSON line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--impl", action="append", help="lwm, ref or lwm,ref (repeatable)")
    p.add_argument("--layout", default="zigzag", choices=["zigzag", "striped", "contiguous"])
    p.add_argument("--seq", type=int, default=16384, help="global sequence length")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads (MHA)")
    p.add_argument("--dim", type=int, default=64, help="head dim")
    p.add_argument("--chunk", type=int, default=512, help="query and key chunk size")
    p.add_argument("--devices", type=int, default=1, help="simulated CPU devices (one process)")
    p.add_argument("--processes", type=int, default=1, help="local processes, one device each")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after warm-up (>= 3)")
    p.add_argument("--bidirectional", action="store_true", help="time non-causal attention")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    impls = [i for arg in (args.impl or ["lwm,ref"]) for i in arg.split(",") if i]
    bad = sorted(set(impls) - {"lwm", "ref"})
    if bad:
        p.error(f"unknown --impl {bad}; expected lwm and/or ref")
    args.impl = list(dict.fromkeys(impls))
    args.kv_heads = args.kv_heads or args.heads
    if args.repeats < 3:
        p.error("--repeats must be >= 3")
    if args.processes > 1 and args.devices != 1:
        p.error("--processes uses one device per process; do not combine with --devices")
    return args


def launch_processes(args: argparse.Namespace, argv: list[str]) -> int:
    """Starts args.processes copies of this script as jax.distributed workers, pinned to cores."""
    import portpicker

    port = portpicker.pick_unused_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.setdefault("JAX_PLATFORMS", "cpu")
    cores = os.cpu_count() or 1
    procs = []
    for i in range(args.processes):
        cmd = [sys.executable, __file__, *argv, "--worker", str(i), "--port", str(port)]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", str(i % cores), *cmd]
        out = None if i == 0 else subprocess.DEVNULL
        procs.append(subprocess.Popen(cmd, env=env, stdout=out))
    return max(p.wait() for p in procs)


def run(args: argparse.Namespace) -> None:
    if args.worker is None:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if args.worker is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=args.processes,
            process_id=args.worker,
        )
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lwm.attention.ring import ring_attention
    from lwm.sharding import make_mesh

    mesh = make_mesh({"sp": -1})
    causal = not args.bidirectional
    dtype = jnp.dtype(args.dtype)
    spec = NamedSharding(mesh, P(None, "sp", None, None))

    @jax.jit
    def inputs():
        ks = jax.random.split(jax.random.PRNGKey(0), 3)
        shapes = [(args.batch, args.seq, h, args.dim) for h in (args.heads, args.kv_heads)]
        q = jax.random.normal(ks[0], shapes[0], dtype)
        k, v = (jax.random.normal(key, shapes[1], dtype) for key in ks[1:])
        return jax.lax.with_sharding_constraint((q, k, v), spec)

    q, k, v = inputs()

    def lwm_fn(q, k, v):
        return ring_attention(
            q,
            k,
            v,
            mesh=mesh,
            causal=causal,
            query_chunk_size=args.chunk,
            key_chunk_size=args.chunk,
            layout=args.layout,
        )

    def ref_fn():
        from lwm.attention.reference import reference_ring_attention

        attn = reference_ring_attention(
            mesh, causal=causal, query_chunk_size=args.chunk, key_chunk_size=args.chunk
        )
        groups = args.heads // args.kv_heads

        def fn(q, k, v):
            if groups > 1:
                k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
            return attn(q, k, v)

        return fn

    def timed(fn) -> float:
        jax.block_until_ready(fn(q, k, v))  # warm-up (compile)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(q, k, v))
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    results = {}
    for impl in args.impl:
        fn = lwm_fn if impl == "lwm" else ref_fn()
        fwd = jax.jit(fn)
        fwd_bwd = jax.jit(jax.grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v)), (0, 1, 2)))
        rec = {
            "impl": impl,
            "layout": args.layout if impl == "lwm" else "contiguous",
            "causal": causal,
            "seq": args.seq,
            "batch": args.batch,
            "heads": args.heads,
            "kv_heads": args.kv_heads,
            "dim": args.dim,
            "chunk": args.chunk,
            "dtype": args.dtype,
            "devices": len(jax.devices()),
            "processes": jax.process_count(),
            "fwd_s": round(timed(fwd), 4),
            "fwd_bwd_s": round(timed(fwd_bwd), 4),
            "repeats": args.repeats,
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
        if impl == "ref" and args.kv_heads != args.heads:
            rec["kv_heads_repeated"] = True
        results[impl] = rec
        if jax.process_index() == 0:
            print(json.dumps(rec), flush=True)
    if len(results) == 2 and jax.process_index() == 0:
        lwm, ref = results["lwm"], results["ref"]
        ratio = {
            "ratio": "lwm/ref",
            "layout": args.layout,
            "seq": args.seq,
            "devices": lwm["devices"],
            "processes": lwm["processes"],
            "fwd": round(lwm["fwd_s"] / ref["fwd_s"], 3),
            "fwd_bwd": round(lwm["fwd_bwd_s"] / ref["fwd_bwd_s"], 3),
        }
        print(json.dumps(ratio), flush=True)
    if args.worker is not None:
        jax.distributed.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.processes > 1 and args.worker is None:
        return launch_processes(args, argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
