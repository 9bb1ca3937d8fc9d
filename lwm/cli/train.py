"""`lwm train --config configs/X.py --workdir DIR [--config.a.b=v]`: run or resume training."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train (or resume) a model through the config's stages",
        description="Train a model through the configured stages, resuming from the workdir's "
        "latest checkpoint. Multi-process: run the same command on every host (LWM_DISTRIBUTED=1) "
        "or use scripts/launch_local.sh N -- train ...",
    )
    p.add_argument("--config", required=True, help="config file or preset name under configs/")
    p.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics.jsonl)")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this global step with a checkpoint (resume later)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="DIR",
        help="start stage 1 from this lwm checkpoint's params (sets train.init_from; a workdir "
        "with its own checkpoint resumes instead)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lwm.training.distributed import maybe_initialize_distributed

    maybe_initialize_distributed()

    from lwm.config import load_config
    from lwm.training.trainer import train

    config = load_config(args.config, args.config_overrides)
    if args.init_from is not None:
        import ml_collections

        with config.unlocked():
            if "train" not in config:
                config.train = ml_collections.ConfigDict()
            with config.train.unlocked():
                config.train.init_from = args.init_from
    train(config, args.workdir, max_steps=args.max_steps)
    return 0
