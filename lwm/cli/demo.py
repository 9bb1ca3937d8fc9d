"""`lwm demo` (and `make demo`): generate data, train a tiny model with ring attention through
growing context stages on 8 simulated CPU devices, evaluate needle retrieval up to 2x the last
stage, and write plots and a summary. `lwm demo --video` (`make demo-video`) does the same for a
vision-language model on real clips (tiny VQGAN, video needle eval). Rerunning resumes;
`--seed N` picks the run's data and init (lwm/demo/seed.py)."""

from __future__ import annotations

import argparse
import sys

DEMO_DEVICES = 8


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="end-to-end demo: data -> ring-attention training in stages -> needle eval -> plots",
        description="Runs the whole pipeline under --workdir (data/, train/, results/); rerun the "
        "same command to resume after an interruption. Override config fields with "
        "--config.a.b=v (e.g. --config.stages.0.steps=100).",
    )
    p.add_argument(
        "--video",
        action="store_true",
        help="the vision-language demo: tiny VQGAN on real clips, video needle eval "
        "(default config demo_video, workdir demo_video_run)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="demo config file or name under configs/ (default: demo, or demo_video)",
    )
    p.add_argument(
        "--workdir",
        default=None,
        help="directory for data, run and results (default: demo_run, or demo_video_run)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the run's seed (default: the config's demo.seed, 0): sets demo.seed (generated "
        "data: corpus, tokenizer, tasks, drills, shuffles) and from it train.seed (init, data "
        "order; vqgan_train.seed too with --video), the same as --config.demo.seed=N; the evals "
        "keep their fixed questions. The workdir records it: a different seed there is refused",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lwm.demo.pipeline import ensure_host_devices

    ensure_host_devices(DEMO_DEVICES)  # before jax is imported

    from lwm.config import load_config
    from lwm.errors import ConfigError

    video = bool(getattr(args, "video", False))
    name = args.config or ("demo_video" if video else "demo")
    workdir = args.workdir or ("demo_video_run" if video else "demo_run")
    overrides = list(args.config_overrides)
    for item in overrides:
        key = item.partition("=")[0]
        if key in ("train.seed", "vqgan_train.seed"):
            raise ConfigError(
                f"--config.{key}: the demo sets it from demo.seed; use --seed N "
                "(or --config.demo.seed=N)"
            )
    config = load_config(name, overrides)
    if "demo" not in config:
        raise ConfigError(f"config {name} has no `demo` section (see configs/demo.py)")
    seed = getattr(args, "seed", None)
    if seed is not None:
        if seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {seed}")
        given = any(o.partition("=")[0] == "demo.seed" for o in overrides)
        if given and config.demo.seed != seed:
            raise ConfigError(f"--seed {seed} and --config.demo.seed={config.demo.seed} disagree")
        with config.demo.unlocked():
            config.demo.seed = seed
    if video and ("vqgan" not in config or "vqgan_train" not in config):
        raise ConfigError(
            f"config {name} has no `vqgan` / `vqgan_train` sections (see configs/demo_video.py)"
        )
    from lwm.training.signals import EXIT_INTERRUPTED, Interrupted

    try:
        if video:
            from lwm.demo.video_pipeline import run_video_demo

            print(run_video_demo(config, workdir))
        else:
            from lwm.demo.pipeline import run_demo

            print(run_demo(config, workdir))
    except Interrupted as e:  # the training or the VQGAN phase
        print(f"lwm demo: {e} (exit {EXIT_INTERRUPTED})", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
