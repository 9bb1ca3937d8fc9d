"""`lwm demo` (and `make demo`): generate data, train a tiny model with ring attention through
growing context stages on 8 simulated CPU devices, evaluate needle retrieval up to 2x the last
stage, and write plots and a summary. Rerunning resumes."""

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
    p.add_argument("--config", default="demo", help="demo config file or name under configs/")
    p.add_argument("--workdir", default="demo_run", help="directory for data, run and results")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lwm.demo.pipeline import ensure_host_devices

    ensure_host_devices(DEMO_DEVICES)  # before jax is imported

    from lwm.config import load_config
    from lwm.demo.pipeline import run_demo
    from lwm.errors import ConfigError

    config = load_config(args.config, args.config_overrides)
    if "demo" not in config:
        raise ConfigError(f"config {args.config} has no `demo` section (see configs/demo.py)")
    print(run_demo(config, args.workdir))
    return 0
