"""`lwm demo` (and `make demo`): generate data, train a tiny model with ring attention through
growing context stages on 8 simulated CPU devices, evaluate needle retrieval up to 2x the last
stage, and write plots and a summary. `lwm demo --video` (`make demo-video`) does the same for a
vision-language model on real clips (tiny VQGAN, video needle eval). Rerunning resumes."""

from __future__ import annotations

import argparse

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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lwm.demo.pipeline import ensure_host_devices

    ensure_host_devices(DEMO_DEVICES)  # before jax is imported

    from lwm.config import load_config
    from lwm.errors import ConfigError

    video = bool(getattr(args, "video", False))
    name = args.config or ("demo_video" if video else "demo")
    workdir = args.workdir or ("demo_video_run" if video else "demo_run")
    config = load_config(name, args.config_overrides)
    if "demo" not in config:
        raise ConfigError(f"config {name} has no `demo` section (see configs/demo.py)")
    if video:
        from lwm.demo.video_pipeline import run_video_demo

        if "vqgan" not in config or "vqgan_train" not in config:
            raise ConfigError(
                f"config {name} has no `vqgan` / `vqgan_train` sections (see configs/demo_video.py)"
            )
        print(run_video_demo(config, workdir))
        return 0
    from lwm.demo.pipeline import run_demo

    print(run_demo(config, workdir))
    return 0
