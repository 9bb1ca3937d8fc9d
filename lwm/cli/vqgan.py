"""`lwm vqgan train --config configs/vqgan_*.py --workdir DIR` (resumes an existing workdir)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("vqgan", help="train a VQGAN video tokenizer")
    sub = parser.add_subparsers(dest="vqgan_command", metavar="ACTION", required=True)
    tr = sub.add_parser(
        "train",
        help="train (or resume) a VQGAN; override fields with --config.section.field=value",
    )
    tr.add_argument("--config", required=True, help="config file or preset name (vqgan_small)")
    tr.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, samples/")
    tr.add_argument("--data", nargs="+", help="videos/images/dirs (replaces data.paths)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=_train)


def _train(args) -> int:
    import dataclasses
    import sys

    from lwm.config import load_config
    from lwm.errors import ConfigError
    from lwm.sharding import make_mesh
    from lwm.training.signals import EXIT_INTERRUPTED
    from lwm.video.config import VQGANConfig
    from lwm.video.vqgan_train import (
        FrameDataConfig,
        VQGANInterrupted,
        VQGANTrainConfig,
        train_vqgan,
    )

    cfg = load_config(args.config, args.config_overrides)
    for section in ("vqgan", "train", "data"):
        if section not in cfg:
            raise ConfigError(f"config {args.config} has no '{section}' section")
    vcfg = VQGANConfig.from_dict(cfg.vqgan)
    tcfg = VQGANTrainConfig.from_dict(cfg.train)
    dcfg = FrameDataConfig.from_dict(cfg.data)
    if args.data:
        dcfg = dataclasses.replace(dcfg, paths=tuple(args.data))
    mesh = make_mesh(dict(cfg.get("mesh", {"dp": 1})), None) if "mesh" in cfg else None
    try:
        last = train_vqgan(
            vcfg, tcfg, dcfg, args.workdir, show_progress=not args.no_progress, mesh=mesh
        )
    except VQGANInterrupted as e:
        print(f"lwm vqgan train: {e} (exit {EXIT_INTERRUPTED})", file=sys.stderr)
        return EXIT_INTERRUPTED
    summary = " ".join(f"{k}={v:.4g}" for k, v in last.items())
    print(f"done: {summary}")
    return 0
