"""`lwm plan --config X [--stage i] [--devices N] [--memory-per-device 16GiB]`: compile the train
step ahead of time and report per-device memory, parameters and FLOPs (nothing is allocated)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

_CHILD_ENV = "LWM_PLAN_CHILD"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="compile the train step on abstract shapes: per-device memory, params, FLOPs",
        description="Compile each stage's train step ahead of time for its mesh "
        "(jit(...).lower(...).compile() on abstract shapes, nothing allocated) and print XLA's "
        "per-device memory (arguments, outputs, temporaries), parameter count, FLOPs per step, "
        "and whether it fits --memory-per-device. --devices N simulates an N-device CPU mesh, so "
        "a pod-sized run can be planned on a laptop.",
    )
    p.add_argument("--config", required=True, help="config file or preset name under configs/")
    p.add_argument("--stage", type=int, default=None, help="plan only this stage (default: all)")
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="simulate this many CPU devices (re-runs itself in a subprocess if jax is already "
        "initialised with another count)",
    )
    p.add_argument(
        "--memory-per-device",
        default=None,
        help="per-device memory budget, e.g. 16GiB, 95G; reports fits / does not fit",
    )
    p.add_argument("--seq-len", type=int, default=None, help="override the stage's seq_len")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="override the stage's batch size in sequences (default with --seq-len: keep "
        "batch_tokens, at least one sequence per dp*fsdp shard)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per stage on stdout")
    p.add_argument(
        "--inference",
        action="store_true",
        help="plan inference instead: compile the sampler's prefill chunk and decode step for a "
        "--seq-len token KV cache; per-device weights, KV cache, temporaries",
    )
    p.add_argument("--mesh", default=None, help="with --inference: e.g. tp=8,sp=8 (default sp=all)")
    p.add_argument("--prefill-chunk", type=int, default=512, help="with --inference")
    from lwm.inference.runtime import add_kv_dtype_arg

    add_kv_dtype_arg(p)  # with --inference
    p.add_argument(
        "--compare-sp",
        action="store_true",
        help="compare sequence-parallel attention (ring, ulysses, hybrid) for the stage: bytes "
        "each device sends per layer and per step, collective rounds, which schemes cannot run "
        "and why, and each possible scheme's compiled train-step memory (a config with mesh "
        "sp=1 is compared with fsdp folded into sp; the hybrid's group: "
        "--config.model.attention.ulysses=U, default the largest that fits)",
    )
    p.set_defaults(func=run)


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line of this invocation (for re-running it in a subprocess)."""
    out = ["plan", "--config", args.config]
    for flag, value in (
        ("--stage", args.stage),
        ("--devices", args.devices),
        ("--memory-per-device", args.memory_per_device),
        ("--seq-len", args.seq_len),
        ("--batch-size", args.batch_size),
    ):
        if value is not None:
            out += [flag, str(value)]
    if args.json:
        out.append("--json")
    if getattr(args, "compare_sp", False):
        out.append("--compare-sp")
    if args.inference:
        out += ["--inference", "--prefill-chunk", str(args.prefill_chunk)]
        out += ["--mesh", args.mesh] if args.mesh else []
        out += ["--kv-dtype", args.kv_dtype] if getattr(args, "kv_dtype", None) else []
    return out + [f"--config.{o}" for o in args.config_overrides]


def _use_devices(n: int) -> bool:
    """Makes jax see `n` CPU devices; False if jax is already initialised with another count."""
    from lwm.errors import LwmError

    if n < 1:
        raise LwmError(f"--devices must be >= 1, got {n}")
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return jax.device_count() == n and jax.default_backend() == "cpu"
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)
    return True


def _rerun_with_devices(args: argparse.Namespace) -> int:
    if os.environ.get(_CHILD_ENV):
        from lwm.errors import LwmError

        raise LwmError(f"could not get {args.devices} simulated devices")
    flags = re.sub(
        r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")
    )
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={args.devices}".strip(),
        **{_CHILD_ENV: "1"},
    )
    cmd = [sys.executable, "-m", "lwm.cli.main", *_argv(args)]
    return subprocess.run(cmd, env=env, check=False).returncode


def run(args: argparse.Namespace) -> int:
    if args.devices is not None and not _use_devices(args.devices):
        return _rerun_with_devices(args)

    if getattr(args, "compare_sp", False) and args.inference:
        from lwm.errors import LwmError

        raise LwmError("--compare-sp compares training schemes; it does not take --inference")
    if args.inference:
        from lwm.inference.plan import run_plan_cli

        return run_plan_cli(args)
    if getattr(args, "compare_sp", False):
        return _compare_sp(args)
    from lwm.config import load_config
    from lwm.training.plan import format_plan, parse_bytes, plan_stage
    from lwm.training.run_spec import parse_run

    budget = None if args.memory_per_device is None else parse_bytes(args.memory_per_device)
    # Shapes are checked per planned stage, after --seq-len / --batch-size are applied.
    spec = parse_run(load_config(args.config, args.config_overrides), check_shapes=False)
    stages = range(len(spec.stages)) if args.stage is None else [args.stage]
    for i in stages:
        plan = plan_stage(
            spec, i, seq_len=args.seq_len, batch_size=args.batch_size, memory_per_device=budget
        )
        if args.json:
            print(json.dumps(plan.to_dict()), flush=True)
        else:
            print(format_plan(plan), flush=True)
    return 0


def _compare_sp(args: argparse.Namespace) -> int:
    from lwm.config import load_config
    from lwm.training.plan import parse_bytes
    from lwm.training.run_spec import parse_run
    from lwm.training.sp_compare import compare_sp, format_comparison

    budget = None if args.memory_per_device is None else parse_bytes(args.memory_per_device)
    spec = parse_run(load_config(args.config, args.config_overrides), check_shapes=False)
    stages = range(len(spec.stages)) if args.stage is None else [args.stage]
    for i in stages:
        c = compare_sp(
            spec, i, seq_len=args.seq_len, batch_size=args.batch_size, memory_per_device=budget
        )
        print(json.dumps(c.to_dict()) if args.json else format_comparison(c), flush=True)
    return 0
