"""Hour-long video QA at LWM's token rate: generate, read at 1 fps, encode, prefill into the cache.

    python scripts/bench_video_qa.py                      # an hour of video, prefill 128K tokens
    python scripts/bench_video_qa.py --max-tokens 0       # prefill every token (~925K)
    python scripts/bench_video_qa.py --quick              # smoke test: 2 minutes of video

Phases (each timed): write a synthetic video of `--seconds` (moving gradients, `--native-fps`),
stream it through the reader at 1 fps, VQGAN-encode the frames in batches with a tiny VQGAN
whose latent is LWM's 16 x 16 (257 tokens per frame with the separator), then prefill LWM's
vision_chat prompt (`--template lwm` layout) into the KV cache of a tiny LLaMA sharded over 8
simulated devices (sp=8), chunk by chunk. The reader must stream: RSS is sampled at every encode
batch; its trend (median of the last quarter minus the first) is printed next to the size all
frames would take (the swing within a run is the encoder's per-batch temporaries). Prints
one JSON line at the end; timings on a shared machine are not measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def synthetic_frames(n: int, size: int):
    """Frame i: a moving colour gradient (cheap, distinct frames), generated one at a time."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        t = i / 97.0
        r = (np.sin(6.28 * (x + t)) + 1) * 127.5
        g = (np.cos(6.28 * (y - 0.5 * t)) + 1) * 127.5
        b = np.full_like(x, (i * 7) % 256)
        yield np.stack([r, g, b], -1).astype(np.uint8)


def _phase(name: str, out: dict) -> None:
    """Progress line per phase (stderr), so a run cut short still reports what it reached."""
    print(json.dumps({"phase": name, **out}), file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=3600, help="video length (default an hour)")
    ap.add_argument("--native-fps", type=float, default=2.0, help="frame rate of the video file")
    ap.add_argument("--resolution", type=int, default=128, help="frame size fed to the VQGAN")
    ap.add_argument("--encode-batch", type=int, default=64)
    ap.add_argument("--prefill-chunk", type=int, default=2048)
    ap.add_argument(
        "--max-tokens", type=int, default=131072, help="prefill at most this many (0 = all)"
    )
    ap.add_argument("--workdir", default=None, help="where the video is written (default: tmp)")
    ap.add_argument("--quick", action="store_true", help="2 minutes of video, 8K tokens")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.max_tokens = 120, 8192

    import jax
    import numpy as np

    from lwm.data.tokenizer import load_tokenizer, train_tokenizer
    from lwm.inference.prompts import LWM_TEMPLATE, lwm_vision_chat_prompt
    from lwm.inference.sampler import Sampler
    from lwm.models.config import ModelConfig
    from lwm.models.transformer import init_model
    from lwm.sharding import make_mesh
    from lwm.video.config import VQGANConfig
    from lwm.video.tokenize import tokenize_video
    from lwm.video.vqgan import init_vqgan, make_encode_fn
    from lwm.video.writer import write_video

    out: dict = {"devices": jax.device_count(), "seconds_of_video": args.seconds}
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_video_qa_"))
    work.mkdir(parents=True, exist_ok=True)
    video = work / f"synthetic_{args.seconds}s.mp4"

    t0 = time.perf_counter()
    n_native = int(args.seconds * args.native_fps)
    if not video.exists():
        write_video(video, synthetic_frames(n_native, args.resolution), fps=args.native_fps)
    out["write_video_s"] = round(time.perf_counter() - t0, 2)
    out["native_frames"] = n_native
    _phase("write", out)

    # A tiny VQGAN with LWM's 16 x 16 latent: 128 px / 2**3.
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
    assert vcfg.latent_size == 16
    encode = make_encode_fn(init_vqgan(vcfg))
    samples = []

    def sampled_encode(frames):
        samples.append(rss_bytes())
        return encode(frames)

    t0 = time.perf_counter()
    tv = tokenize_video(
        sampled_encode,
        video,
        resolution=args.resolution,
        fps=1.0,
        batch_size=args.encode_batch,
        eof_id=8192,
        eov_id=8193,
    )
    out["read_encode_s"] = round(time.perf_counter() - t0, 2)
    out["frames_read"] = len(tv.timestamps)
    out["vision_tokens"] = int(len(tv.tokens))
    out["tokens_per_frame"] = int(len(tv.tokens)) // max(1, len(tv.timestamps))
    # Skip the first few batches (compile, allocator warm-up); the rest must stay flat.
    steady = samples[min(3, len(samples) - 1) :]
    # Encode temporaries make RSS swing per batch; the trend (late vs early median) is what
    # would grow if frames were kept.
    q = max(1, len(steady) // 4)
    out["rss_trend_mb"] = round(
        (float(np.median(steady[-q:])) - float(np.median(steady[:q]))) / 2**20, 1
    )
    out["rss_swing_mb"] = round((max(steady) - min(steady)) / 2**20, 1)
    _phase("read+encode", out)
    out["all_frames_would_be_mb"] = round(len(tv.timestamps) * args.resolution**2 * 3 / 2**20, 1)

    corpus = work / "corpus.txt"
    rng = np.random.default_rng(0)
    words = "you are a helpful assistant user what happens in the video vision frame".split()
    corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(300)) + "\n")
    tok_path = work / "tok.model"
    tok = (
        load_tokenizer(tok_path) if tok_path.exists() else train_tokenizer([corpus], 300, tok_path)
    )
    question = "What happens in the video?"
    tokens, mask = lwm_vision_chat_prompt(tok, LWM_TEMPLATE, question, tv.tokens.tolist())
    total = len(tokens)
    limit = total if args.max_tokens <= 0 else min(total, args.max_tokens)
    # Keep the prompt's shape when cut: head of the prompt, then as many frames as fit.
    tokens, mask = tokens[:limit], mask[:limit]
    out["prompt_tokens_full"] = total
    out["prefilled_tokens"] = limit

    cfg = ModelConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_sequence_length=max(limit, 1024),
        vision_vocab_size=8448,
        vision_eof_id=8192,
        vision_eov_id=8193,
    )
    mesh = make_mesh({"sp": 8})
    model = init_model(cfg, mesh=mesh)
    sampler = Sampler(model, mesh=mesh, prefill_chunk=args.prefill_chunk, cache_block=512)
    t0 = time.perf_counter()
    prefix = sampler.prefill(tokens, vision_mask=mask, reserve=0)
    jax.block_until_ready(prefix.hidden)
    dt = time.perf_counter() - t0
    out["prefill_s"] = round(dt, 2)
    out["prefill_tokens_per_s"] = round(limit / dt, 1)
    out["prefill_chunks"] = sampler.counts["prefill_calls"]
    out["cache_slots"] = prefix.cache.capacity
    out["cache_shards"] = len(prefix.cache.ks[0].sharding.device_set)
    out["peak_rss_mb"] = round(peak_rss_bytes() / 2**20, 1)
    out["loadavg"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
