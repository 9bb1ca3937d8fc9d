"""Times causal sequence-parallel attention, forward and forward+backward, side by side.

Impls: `lwm` (alias `ring`: lwm's ring, --layout zigzag by default), `ref` (the reference
`ringattention==0.1.2` package, dev extra, contiguous layout), `ulysses` (all-to-all over sp) and
`hybrid` (--ulysses U all-to-all groups x a zigzag ring over sp / U). One JSON line per
measurement: medians of --repeats runs after a warm-up run, as wall-clock seconds (`*_s`) and as
CPU seconds of the whole process (`*_cpu_s`: all threads; with --processes the largest over the
processes; robust to other load on a shared box, where wall-clock ratios are not). Then one
ratio line per comparison: lwm/ref when both ran, and ulysses/ring, hybrid/ring against the ring
in the same run (the ring is added when missing). Examples:

  # one process, 8 simulated CPU devices on the sp axis
  python scripts/bench_attention.py --impl lwm,ref --seq 16384 --heads 4 --dim 64 --devices 8
  # two local processes (jax.distributed over gloo), each pinned to its own core, one device each
  python scripts/bench_attention.py --impl lwm,ref --seq 16384 --heads 4 --dim 64 --processes 2
  # ulysses and hybrid (4-way all-to-all x 2-way ring) vs the zigzag ring, two lengths
  python scripts/bench_attention.py --impl ulysses,hybrid --ulysses 4 --seq 16384,32768 \\
      --heads 8 --dim 64 --devices 8

`ref` has no GQA, so with --kv-heads < --heads its K/V are repeated to all heads (noted in its
JSON line). `ulysses` needs the heads (and kv heads, or their multiples) to split over all of sp:
an impl whose head rules refuse the shape prints one JSON line with `skipped` and the reason.
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

IMPLS = ("lwm", "ref", "ulysses", "hybrid")
ALIASES = {"ring": "lwm"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--impl", action="append", help="lwm (or ring), ref, ulysses, hybrid; comma-separated"
    )
    p.add_argument("--layout", default="zigzag", choices=["zigzag", "striped", "contiguous"])
    p.add_argument("--seq", default="16384", help="global sequence length(s), comma-separated")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads (MHA)")
    p.add_argument("--dim", type=int, default=64, help="head dim")
    p.add_argument("--chunk", type=int, default=512, help="query and key chunk size")
    p.add_argument("--devices", type=int, default=1, help="simulated CPU devices (one process)")
    p.add_argument("--processes", type=int, default=1, help="local processes, one device each")
    p.add_argument(
        "--ulysses", type=int, default=0, help="hybrid's all-to-all group size (default: sp / 2)"
    )
    p.add_argument(
        "--kernel", default="auto", choices=["auto", "xla", "pallas"], help="lwm's step kernel"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs after warm-up (>= 3)")
    p.add_argument("--skip-fwd", action="store_true", help="time forward+backward only")
    p.add_argument("--bidirectional", action="store_true", help="time non-causal attention")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    impls = [ALIASES.get(i, i) for arg in (args.impl or ["lwm,ref"]) for i in arg.split(",") if i]
    bad = sorted(set(impls) - set(IMPLS))
    if bad:
        p.error(f"unknown --impl {bad}; expected some of {', '.join(IMPLS)} (or ring)")
    if {"ulysses", "hybrid"} & set(impls) and "lwm" not in impls:
        impls.insert(0, "lwm")  # their ratios are to the ring of the same run
    args.impl = list(dict.fromkeys(impls))
    try:
        args.seq = [int(s) for s in args.seq.split(",") if s]
    except ValueError:
        p.error(f"--seq must be comma-separated integers, got {args.seq!r}")
    if not args.seq or min(args.seq) <= 0:
        p.error("--seq needs positive lengths")
    args.kv_heads = args.kv_heads or args.heads
    if args.repeats < 3:
        p.error("--repeats must be >= 3")
    if args.processes > 1 and args.devices != 1:
        p.error("--processes uses one device per process; do not combine with --devices")
    if args.ulysses < 0:
        p.error("--ulysses must be >= 0")
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


def timed(fn, *xs, repeats: int) -> tuple[float, float]:
    """(wall, cpu) medians in seconds of `repeats` runs after one warm-up (compile) run. With
    several processes a run's CPU time is the largest over the processes (the critical path:
    with a causal contiguous layout process 0 has the least work)."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    jax.block_until_ready(fn(*xs))
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*xs))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    if jax.process_count() > 1:
        cpus = list(np.max(multihost_utils.process_allgather(np.asarray(cpus)), axis=0))
    return statistics.median(walls), float(statistics.median(cpus))


def attention_fns(args: argparse.Namespace, mesh, causal: bool) -> dict:
    """impl -> `f(q, k, v) -> out` on inputs sharded over sp (random data: layout-agnostic)."""
    import jax.numpy as jnp

    from lwm.attention import make_attention
    from lwm.attention.config import AttentionConfig

    def op(backend: str, **kw):
        cfg = AttentionConfig(
            backend=backend,
            layout=args.layout,
            query_chunk_size=args.chunk,
            key_chunk_size=args.chunk,
            kernel=args.kernel,
            **kw,
        )
        return make_attention(cfg, causal=causal, mesh=mesh)

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

    sp = len(mesh.devices.flat)
    fns = {}
    for impl in args.impl:
        if impl == "ref":
            fns[impl] = ref_fn()
        elif impl == "lwm":
            fns[impl] = op("ring")
        elif impl == "ulysses":
            fns[impl] = op("ulysses")
        else:
            fns[impl] = op("hybrid", ulysses=args.ulysses or max(sp // 2, 1))
    return fns


def ratio_line(num: dict, den: dict, name: str) -> dict:
    line = {"ratio": name, "seq": num["seq"], "devices": num["devices"]}
    line["processes"] = num["processes"]
    for key in ("fwd", "fwd_bwd") if "fwd_s" in num else ("fwd_bwd",):
        line[key] = round(num[f"{key}_s"] / den[f"{key}_s"], 3)
        line[f"{key}_cpu"] = round(num[f"{key}_cpu_s"] / den[f"{key}_cpu_s"], 3)
    return line


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

    from lwm.errors import ConfigError
    from lwm.sharding import make_mesh

    mesh = make_mesh({"sp": -1})
    causal = not args.bidirectional
    dtype = jnp.dtype(args.dtype)
    spec = NamedSharding(mesh, P(None, "sp", None, None))
    fns = attention_fns(args, mesh, causal)
    main = jax.process_index() == 0

    def emit(line: dict) -> None:
        if main:
            print(json.dumps(line), flush=True)

    for seq in args.seq:

        @jax.jit
        def inputs(seq=seq):
            ks = jax.random.split(jax.random.PRNGKey(0), 3)
            shapes = [(args.batch, seq, h, args.dim) for h in (args.heads, args.kv_heads)]
            q = jax.random.normal(ks[0], shapes[0], dtype)
            k, v = (jax.random.normal(key, shapes[1], dtype) for key in ks[1:])
            return jax.lax.with_sharding_constraint((q, k, v), spec)

        q, k, v = inputs()
        results = {}
        for impl, fn in fns.items():
            rec = {
                "impl": impl,
                "layout": "contiguous" if impl in ("ref", "ulysses") else args.layout,
                "causal": causal,
                "seq": seq,
                "batch": args.batch,
                "heads": args.heads,
                "kv_heads": args.kv_heads,
                "dim": args.dim,
                "chunk": args.chunk,
                "dtype": args.dtype,
                "devices": len(jax.devices()),
                "processes": jax.process_count(),
            }
            if impl == "hybrid":
                rec["ulysses"] = fn.config.ulysses
            if impl not in ("ref", "lwm"):
                try:
                    fn.check(seq, mesh)
                    fn.check_heads(args.heads, args.kv_heads, mesh)
                except ConfigError as e:
                    emit({**rec, "skipped": str(e)})
                    continue
            fwd = jax.jit(fn)
            fwd_bwd = jax.jit(jax.grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v)), (0, 1, 2)))
            if not args.skip_fwd:
                rec["fwd_s"], rec["fwd_cpu_s"] = timed(fwd, q, k, v, repeats=args.repeats)
            rec["fwd_bwd_s"], rec["fwd_bwd_cpu_s"] = timed(fwd_bwd, q, k, v, repeats=args.repeats)
            for key in ("fwd_s", "fwd_cpu_s", "fwd_bwd_s", "fwd_bwd_cpu_s"):
                if key in rec:
                    rec[key] = round(rec[key], 4)
            rec["repeats"] = args.repeats
            rec["loadavg_1m"] = round(os.getloadavg()[0], 2)
            if impl == "ref" and args.kv_heads != args.heads:
                rec["kv_heads_repeated"] = True
            results[impl] = rec
            emit(rec)
        if "lwm" in results and "ref" in results:
            emit({**ratio_line(results["lwm"], results["ref"], "lwm/ref"), "layout": args.layout})
        for impl in ("ulysses", "hybrid"):
            if impl in results and "lwm" in results:
                emit(ratio_line(results[impl], results["lwm"], f"{impl}/ring"))
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
