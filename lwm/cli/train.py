"""`lwm train --config configs/X.py --workdir DIR [--config.a.b=v]`: run or resume training."""

from __future__ import annotations

import argparse
import sys

from lwm.checkpoint.policy import add_strict_arg

EXIT_CODES = (
    "exit status: 0 done (or --max-steps reached, checkpoint saved); 2 bad input (one line, "
    "nothing changed; a run that fails before its first step removes what it created); 3 another "
    "process of a multi-process job died (rerun every process to resume from the last "
    "checkpoint); 73 the workdir is in use by another lwm process (one line naming its host and "
    "pid; nothing changed; its lock, WORKDIR/.lwm.lock, is released when that process exits, "
    "kill -9 included); 74 a write failed (disk full, quota, permission, read-only filesystem: "
    "one line naming the path and the free space; no unfinished checkpoint is left; rerun once "
    "fixed, it resumes from the last committed checkpoint); 75 interrupted by SIGTERM or SIGINT "
    "(Ctrl-C) after saving the current step: resumable, rerun the same command; 130 a second "
    "Ctrl-C: stopped without saving (a rerun resumes from the last periodic checkpoint)"
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train (or resume) a model through the config's stages",
        description="Train a model through the configured stages, resuming from the workdir's "
        "latest checkpoint. Multi-process: run the same command on every host (LWM_DISTRIBUTED=1) "
        "or use scripts/launch_local.sh N -- train ...",
        epilog=EXIT_CODES,
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
    add_strict_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lwm.errors import LwmError

    if args.max_steps is not None and args.max_steps < 1:
        raise LwmError(f"--max-steps must be >= 1, got {args.max_steps}")

    from lwm.training.workdir import check_workdir_usable

    check_workdir_usable(args.workdir)  # before jax starts: a file or read-only place, one line

    from lwm.training.distributed import maybe_initialize_distributed

    maybe_initialize_distributed()

    from lwm.config import load_config
    from lwm.training.signals import EXIT_INTERRUPTED, take_stop_signal
    from lwm.training.trainer import train

    config = load_config(args.config, args.config_overrides)
    if args.init_from is not None:
        import ml_collections

        with config.unlocked():
            if "train" not in config:
                config.train = ml_collections.ConfigDict()
            with config.train.unlocked():
                config.train.init_from = args.init_from
    try:
        result = train(config, args.workdir, max_steps=args.max_steps, strict=args.strict)
    except Exception as e:  # noqa: BLE001 - a dead peer: one line and out, no shutdown hang
        from lwm.training.peer_watchdog import exit_on_peer_failure

        exit_on_peer_failure(e, "train")
        raise
    signal_name = take_stop_signal()
    by_max_steps = args.max_steps is not None and result.step >= args.max_steps
    if result.preempted and (signal_name or not by_max_steps):
        why = signal_name or "another process's signal"
        print(
            f"lwm train: interrupted by {why} at step {result.step}: checkpoint saved, "
            f"resumable (exit {EXIT_INTERRUPTED}; rerun the same command to continue)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0
