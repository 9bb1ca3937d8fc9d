"""Training throughput and MFU of a ~20M-parameter model at 8K tokens on 8 simulated devices.

    python scripts/bench_train.py                 # tokens/s and MFU, ring attention over sp=8
    python scripts/bench_train.py --plan          # per-device memory, T = 8K..1M, ring vs dense
    python scripts/bench_train.py --backend hybrid --ulysses 4   # hybrid vs ring, side by side
    python scripts/bench_train.py --backend ulysses               # ulysses vs ring, side by side

Throughput: the real train step (trainer's optimizer, schedule, loss and shardings) on synthetic
batches; medians over timed steps after warm-up. MFU = useful model FLOPs per second (6 x matmul
params per token + causal attention, lwm/training/flops.py) / the matmul peak measured in the same
run the way the step runs: independent matmuls on all simulated devices at once, sampled before
and after the timed steps. One JSON line per figure on stdout. `--backend ulysses|hybrid` also
times the ring in the same run and ends with a `vs_ring` line: the ratios of tokens/s, of MFU and
of CPU seconds per step (the process's CPU time, all threads: robust to other load on a shared
box, where wall-clock figures are not).
"""

from __future__ import annotations

import argparse
import os
import sys

DEVICES = 8


def _setup_devices(n: int) -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def bench_config(args: argparse.Namespace):
    """The benchmark run config: a ~22M-param model (d=512, 4 layers, vocab 8192), one stage."""
    import ml_collections

    from lwm.models.presets import base_config
    from lwm.training.config import default_train_section

    config = base_config("debug")
    config.model.update(
        dict(
            vocab_size=8192,
            hidden_size=512,
            intermediate_size=1536,
            num_layers=4,
            num_heads=8,
            num_kv_heads=8,
            head_dim=0,  # recomputed: hidden_size // num_heads
            max_sequence_length=max(args.seq_len, 8192),
        )
    )
    config.model.attention.update(
        dict(
            backend=args.backend,
            query_chunk_size=args.chunk,
            key_chunk_size=args.chunk,
            layout="zigzag",
        )
    )
    if args.backend == "hybrid":
        config.model.attention.ulysses = args.ulysses or max(args.devices // 2, 1)
    config.mesh = ml_collections.ConfigDict(dict(dp=1, fsdp=1, tp=1, sp=-1))
    config.train = default_train_section(
        seq_len=args.seq_len,
        batch_tokens=args.seq_len * args.batch,
        steps=args.warmup + args.steps,
        warmup_steps=2,
        progress_bar=False,
    )
    config.stages = []
    config.data = ml_collections.ConfigDict(dict(source="synthetic", vision_fraction=0.0))
    return config


def emit(record: dict) -> None:
    import json

    print(json.dumps(record), flush=True)


def run_throughput(args: argparse.Namespace, backend: str) -> dict:
    import time

    import jax
    import numpy as np

    from lwm.sharding import make_mesh
    from lwm.training import flops as flops_lib
    from lwm.training.data_source import make_data_iterator
    from lwm.training.run_spec import parse_run
    from lwm.training.stages import stage_model_config, stage_optimizer, stage_step_fn
    from lwm.training.train_state import count_params, init_params, model_def, rng_data
    from lwm.training.train_step import batch_shardings, jit_train_step, state_shardings

    args.backend = backend
    spec = parse_run(bench_config(args))
    st = spec.stages[0]
    mesh = make_mesh(spec.mesh_sizes[0])
    mdef = model_def(stage_model_config(spec.model, st), mesh)
    optimizer = stage_optimizer(spec.train, mdef)
    st_sh = state_shardings(mdef, optimizer, mesh)
    params = init_params(mdef, 0, mesh)
    state = {
        "step": jax.numpy.asarray(0, jax.numpy.int32),
        "params": params,
        "opt_state": jax.jit(optimizer.init, out_shardings=st_sh["opt_state"])(params),
        "rng": rng_data(0),
    }
    state = jax.device_put(state, st_sh)
    step = jit_train_step(
        stage_step_fn(spec.train, st, mdef, optimizer, 0),
        st_sh,
        batch_shardings(mesh, st.batch_size, st.seq_len),
        mesh,
    )
    data = make_data_iterator(spec, st, mesh, mdef.config)
    batches = [next(data) for _ in range(4)]  # host-side data generation stays out of the timing

    peaks = [flops_lib.measure_matmul_peak(mesh, n=args.matmul_n)]
    t0 = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for i in range(1, args.warmup):
        state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics)
    times, cpu_times = [], []
    for i in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        state, metrics = step(state, batches[i % len(batches)])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peaks.append(flops_lib.measure_matmul_peak(mesh, n=args.matmul_n))

    step_s = float(np.median(times))
    tokens = st.batch_tokens
    tps = tokens / step_s
    fpt = flops_lib.train_flops_per_token(mdef.config, st.seq_len)
    peak = float(np.median(peaks))
    common = dict(
        backend=backend,
        seq_len=st.seq_len,
        batch=st.batch_size,
        mesh=dict(mesh.shape),
        params=count_params(state["params"]),
        devices=mesh.size,
    )
    if backend == "hybrid":
        common["ulysses"] = mdef.config.attention.ulysses
    emit(
        dict(
            metric="train_tokens_per_s",
            value=tps,
            step_s_median=step_s,
            step_s_all=[round(t, 4) for t in times],
            step_cpu_s_median=float(np.median(cpu_times)),
            compile_and_first_step_s=compile_s,
            loss=float(metrics["loss"]),
            **common,
        )
    )
    emit(
        dict(
            metric="matmul_peak_flops",
            value=peak,
            samples=peaks,
            n=args.matmul_n,
            how=f"independent {args.matmul_n}^2 fp32 matmuls on all {mesh.size} devices at once",
        )
    )
    result = dict(
        metric="mfu",
        value=flops_lib.mfu(tps, fpt, peak),
        model_flops_per_token=fpt,
        model_flops_per_s=tps * fpt,
        target=0.45,
        tokens_per_s=tps,
        step_cpu_s_median=float(np.median(cpu_times)),
        **common,
    )
    emit(result)
    return result


def emit_vs_ring(ring: dict, other: dict) -> None:
    """One line comparing `other` (ulysses or hybrid) with the ring measured in the same run."""
    emit(
        dict(
            metric="vs_ring",
            backend=other["backend"],
            seq_len=other["seq_len"],
            devices=other["devices"],
            tokens_per_s_ratio=round(other["tokens_per_s"] / ring["tokens_per_s"], 3),
            mfu_ratio=round(other["value"] / ring["value"], 3),
            step_cpu_s_ratio=round(other["step_cpu_s_median"] / ring["step_cpu_s_median"], 3),
            mfu=round(other["value"], 4),
            ring_mfu=round(ring["value"], 4),
            **({"ulysses": other["ulysses"]} if "ulysses" in other else {}),
        )
    )


def run_plan(args: argparse.Namespace) -> None:
    from lwm.training.plan import plan_stage
    from lwm.training.run_spec import parse_run

    for t in args.plan_lengths:
        for backend in ("ring", "dense"):
            args.backend = backend
            spec = parse_run(bench_config(args), check_shapes=False)
            try:
                p = plan_stage(spec, 0, seq_len=t, batch_size=args.batch)
            except Exception as e:  # noqa: BLE001 - report and go on with the other sizes
                emit(
                    dict(
                        metric="plan", backend=backend, seq_len=t, error=f"{type(e).__name__}: {e}"
                    )
                )
                continue
            m = p.memory
            emit(
                dict(
                    metric="plan",
                    backend=backend,
                    seq_len=t,
                    tokens_per_device=t * args.batch // p.devices,
                    mesh=p.mesh,
                    arguments=m.arguments,
                    outputs=m.outputs,
                    temporaries=m.temporaries,
                    total=m.total,
                    total_gib=round(m.total / 2**30, 4),
                    compile_s=round(p.compile_seconds, 1),
                )
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=1, help="sequences per step")
    ap.add_argument(
        "--backend", default="ring", choices=("ring", "dense", "blockwise", "ulysses", "hybrid")
    )
    ap.add_argument(
        "--ulysses", type=int, default=0, help="hybrid's all-to-all group (default: devices / 2)"
    )
    ap.add_argument("--chunk", type=int, default=512, help="query/key chunk size")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps (incl. the compile)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--matmul-n", type=int, default=1024, help="matmul size of the peak probe")
    ap.add_argument("--devices", type=int, default=DEVICES, help="simulated CPU devices")
    ap.add_argument("--plan", action="store_true", help="per-device memory vs T, ring vs dense")
    ap.add_argument(
        "--plan-lengths",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[8192, 32768, 131072, 1048576],
    )
    args = ap.parse_args(argv)
    _setup_devices(args.devices)
    if args.plan:
        run_plan(args)
        return 0
    if args.backend in ("ulysses", "hybrid"):  # side by side with the ring, no fallback
        backend = args.backend
        ring = run_throughput(args, "ring")
        emit_vs_ring(ring, run_throughput(args, backend))
        return 0
    try:
        run_throughput(args, args.backend)
    except Exception as e:  # noqa: BLE001 - a broken backend must not hide the figure entirely
        if args.backend == "dense":
            raise
        print(
            f"bench_train: {args.backend} attention failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); measuring dense attention instead",
            file=sys.stderr,
        )
        run_throughput(args, "dense")
    return 0


if __name__ == "__main__":
    sys.exit(main())
