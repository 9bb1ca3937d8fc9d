"""Saved prefixes: seconds to build a video's prefix (read + VQGAN encode + model prefill, what
`lwm prefill` and every fresh `lwm chat` pay) vs seconds to load the saved one (what
`lwm chat --prefix` pays: manifest, weight fingerprint, cache read into its shardings).

    python scripts/bench_prefix.py                 # 60 s of video at 1 fps, LWM's 257 tokens/frame
    python scripts/bench_prefix.py --seconds 240 --sp 8 --hidden 256 --layers 4

A synthetic video (moving gradients) is written once; a tiny VQGAN with LWM's 16 x 16 latent
encodes it; a small random LLaMA (vision vocabulary 8448) prefills it into its KV cache (any
--kv-dtype). Each side runs `--repeats` times after one warm-up (compiles); the medians of wall
and process CPU seconds are printed side by side with their ratio, then one JSON line. On a
shared machine compare CPU seconds; wall-clock figures need a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def timed(fn):
    """(result, wall seconds, process CPU seconds) of `fn()`."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="video length at 1 fps (frames)")
    ap.add_argument("--resolution", type=int, default=128, help="frame size fed to the VQGAN")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--sp", type=int, default=1, help="shard the cache over sp of 8 devices")
    ap.add_argument("--kv-dtype", default="auto")
    ap.add_argument("--prefill-chunk", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where video and prefixes go (default: tmp)")
    args = ap.parse_args()

    import jax
    import numpy as np
    from bench_video_qa import synthetic_frames

    from lwm.data.tokenizer import train_tokenizer
    from lwm.inference.prefix_fingerprint import params_fingerprint
    from lwm.inference.prefix_store import load_prefix, make_manifest, read_manifest, save_prefix
    from lwm.inference.prompts import DEFAULT_TEMPLATE
    from lwm.inference.sampler import Sampler
    from lwm.inference.video_qa import VideoQA
    from lwm.models.config import ModelConfig
    from lwm.models.transformer import init_model
    from lwm.sharding import make_mesh
    from lwm.video.config import VQGANConfig
    from lwm.video.vqgan import init_vqgan
    from lwm.video.writer import write_video

    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_prefix_"))
    work.mkdir(parents=True, exist_ok=True)
    video = work / f"synthetic_{args.seconds}s.mp4"
    if not video.exists():
        write_video(video, synthetic_frames(args.seconds, args.resolution), fps=1.0)
    corpus = work / "corpus.txt"
    words = "you are a helpful assistant user what happens in the video vision frame".split()
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(300)) + "\n")
    tok = train_tokenizer([corpus], 300, work / "tok.model")

    levels = int(np.log2(args.resolution // 16)) + 1
    vcfg = VQGANConfig(
        name="vqgan_bench",
        resolution=args.resolution,
        base_channels=8,
        channel_multipliers=(1,) * levels,
        num_res_blocks=1,
        norm_groups=4,
        codebook_size=8192,
        embed_dim=8,
    )
    tokens = args.seconds * 257 + 64
    cfg = ModelConfig(
        vocab_size=tok.vocab_size,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_layers=args.layers,
        num_heads=4,
        num_kv_heads=2,
        max_sequence_length=tokens + 2048,
        vision_vocab_size=8448,
        vision_eof_id=8192,
        vision_eov_id=8193,
        kv_dtype=args.kv_dtype,
    )
    mesh = make_mesh({"sp": args.sp, "dp": 8 // args.sp}) if args.sp > 1 else None
    model = init_model(cfg, mesh=mesh)
    sampler = Sampler(model, mesh=mesh, prefill_chunk=args.prefill_chunk)
    qa = VideoQA(sampler, tok, init_vqgan(vcfg), template=DEFAULT_TEMPLATE, encode_batch=32)

    def build():
        ctx = qa.load(video, fps=1.0)
        jax.block_until_ready(ctx.prefix.hidden)
        return ctx

    ctx = build()  # warm-up: compiles the encoder and the prefill chunk
    manifest = make_manifest(
        ctx,
        model=model,
        tokenizer=tok,
        template=DEFAULT_TEMPLATE,
        template_name=None,
        system=None,
        checkpoint="(random)",
        selection={"frames": None, "fps": 1.0, "start": None, "end": None},
        mesh=mesh,
    )
    saved = work / "prefix"
    shutil.rmtree(saved, ignore_errors=True)
    _, save_wall, save_cpu = timed(lambda: save_prefix(saved, ctx.prefix, manifest))

    def load():
        m = read_manifest(saved)
        params_fingerprint(model)
        prefix = load_prefix(saved, m, sampler.config, mesh)
        jax.block_until_ready(prefix.cache.ks[0])
        return prefix

    load()  # warm-up
    builds = [timed(build)[1:] for _ in range(args.repeats)]
    loads = [timed(load)[1:] for _ in range(args.repeats)]
    med = {
        "prefill_wall_s": statistics.median(b[0] for b in builds),
        "prefill_cpu_s": statistics.median(b[1] for b in builds),
        "load_wall_s": statistics.median(x[0] for x in loads),
        "load_cpu_s": statistics.median(x[1] for x in loads),
    }
    size = sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())
    print(
        f"{args.seconds} frames, {manifest.num_tokens} prefix tokens, {manifest.kv_dtype} cache "
        f"of {manifest.capacity} slots ({size / 2**20:.1f} MiB on disk), hidden {args.hidden} x "
        f"{args.layers} layers, sp={args.sp}; medians of {args.repeats} after warm-up:"
    )
    print(f"{'':>10} {'prefill (encode+prefill)':>26} {'load':>10} {'ratio':>8}")
    for kind in ("wall", "cpu"):
        p, lo = med[f"prefill_{kind}_s"], med[f"load_{kind}_s"]
        print(f"{kind + ' s':>10} {p:>26.3f} {lo:>10.3f} {p / lo:>7.1f}x")
    out = {k: round(v, 4) for k, v in med.items()}
    out.update(
        frames=args.seconds,
        prefix_tokens=manifest.num_tokens,
        kv_dtype=manifest.kv_dtype,
        capacity=manifest.capacity,
        disk_mib=round(size / 2**20, 2),
        save_wall_s=round(save_wall, 3),
        save_cpu_s=round(save_cpu, 3),
        loadavg=os.getloadavg(),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
