"""`lwm generate-video --checkpoint C --vqgan V --prompt TEXT --frames N --out x.mp4`.

Classifier-free guided VQ-code generation (see `lwm.inference.video_generation`), decoded by the
VQGAN and written as H.264 mp4 (`--frames 1` with a .png/.jpg --out writes an image).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from lwm.inference.runtime import add_model_args

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate-video", help="generate a video (or image) from text")
    add_model_args(p)
    p.add_argument("--vqgan", required=True, help="VQGAN checkpoint (lwm vqgan train)")
    p.add_argument("--prompt", required=True, help="what the video shows")
    p.add_argument("--frames", type=int, default=8, help="frames to generate (1 = an image)")
    p.add_argument("--out", required=True, help="output .mp4 (or .png/.jpg for one frame)")
    p.add_argument("--fps", type=float, default=4.0, help="frame rate of the written video")
    p.add_argument("--guidance-first", type=float, default=5.0, help="CFG scale, first frame")
    p.add_argument("--guidance-rest", type=float, default=1.0, help="CFG scale, later frames")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=100, help="0 = all codes")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from lwm.errors import LwmError
    from lwm.inference.runtime import (
        load_model_from_args,
        load_template,
        load_tokenizer,
        make_sampler,
    )
    from lwm.inference.video_generation import VideoGenerationConfig, generate_video
    from lwm.inference.video_qa import check_vision_model
    from lwm.models.io import read_model_config
    from lwm.video.vqgan_checkpoint import load_vqgan

    out = pathlib.Path(args.out)
    if out.exists() and not args.overwrite:
        raise LwmError(f"{out}: already exists (pass --overwrite to replace it)")
    image = out.suffix.lower() in IMAGE_SUFFIXES
    if image and args.frames != 1:
        raise LwmError(f"{out}: an image output needs --frames 1, got {args.frames}")
    config = VideoGenerationConfig(
        n_frames=args.frames,
        guidance_first=args.guidance_first,
        guidance_rest=args.guidance_rest,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
    )
    _ = config.sampling  # validates the sampling flags before anything is loaded
    cfg = read_model_config(args.checkpoint, strict=args.strict)
    check_vision_model(cfg, 0, where=str(args.checkpoint))
    load_template(args)  # a bad --template fails before anything is loaded
    tokenizer = load_tokenizer(args.tokenizer, args.checkpoint)
    template = load_template(args, tokenizer)
    vqgan = load_vqgan(args.vqgan)
    model, mesh = load_model_from_args(args)
    sampler = make_sampler(model, mesh, args)

    def on_frame(i):
        print(f"[frame {i}/{args.frames}]", file=sys.stderr, flush=True)

    frames = generate_video(
        sampler,
        tokenizer,
        vqgan,
        args.prompt,
        config=config,
        template=template,
        seed=args.seed,
        on_frame=on_frame,
    )
    if image:
        from PIL import Image

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
        Image.fromarray(frames[0]).save(tmp)
        tmp.replace(out)
    else:
        from lwm.video.writer import write_video

        write_video(out, frames, fps=args.fps, overwrite=args.overwrite)
    print(f"wrote {out} ({len(frames)} frames, {frames.shape[1]}x{frames.shape[2]})")
    return 0
