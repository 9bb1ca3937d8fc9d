"""`lwm video-needle`: VideoNIAH-style needle eval over a grid of video lengths x needle depths.

A command of its own rather than a mode of `lwm needle`: it takes a VQGAN, haystack videos, frame
selection and needle options, and none of the text eval's needle/haystack knobs apply.
"""

from __future__ import annotations

import argparse
import sys

from lwm.checkpoint.policy import add_strict_arg
from lwm.inference.runtime import add_kv_dtype_arg
from lwm.video.policy import add_allow_short_arg


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "video-needle",
        help="video needle-in-a-haystack eval: accuracy heatmap over video length x depth",
        description="Builds long videos from real clips (--haystack), inserts a synthetic needle "
        "image (a coloured square or a digit) as --needle-frames consecutive frames at each depth, "
        "asks about it in LWM's video QA template and counts a greedy answer correct when the "
        "expected word appears in it. Lengths are in frames. Results go to OUT/results.jsonl "
        "(rerunning resumes), OUT/heatmap.png and OUT/summary.json.",
    )
    p.add_argument("--checkpoint", required=True, help="vision model checkpoint or workdir")
    p.add_argument("--vqgan", required=True, help="VQGAN checkpoint (lwm vqgan train)")
    p.add_argument(
        "--tokenizer",
        help="a sentencepiece .model, a tokenizer.json or a directory (default: the one in "
        "CHECKPOINT: tokenizer.json, else tokenizer.model)",
    )
    p.add_argument(
        "--haystack",
        required=True,
        action="append",
        help="video file or directory of videos (repeatable); clips are concatenated and looped",
    )
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--fps", type=float, default=None, help="frames per second read (default 1)")
    sel.add_argument("--clip-frames", type=int, default=None, help="frames evenly spaced per clip")
    p.add_argument("--max-frames", type=int, default=None, help="cap on haystack frames read")
    p.add_argument("--lengths", required=True, help="video lengths in frames, e.g. 64,256,1k")
    p.add_argument("--depths", default="0:1:11", help="fractions 0,0.5,1 or start:stop:count")
    p.add_argument("--samples", type=int, default=1, help="samples per (length, depth) cell")
    p.add_argument("--needle", choices=["colour", "digit"], default="colour", help="needle kind")
    p.add_argument("--needle-frames", type=int, default=1, help="consecutive needle frames")
    p.add_argument(
        "--caption",
        action="store_true",
        help="state what the needle (and distractors) stand for in text after the video; ask it",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="results directory (resumed if it exists)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results in --out from a different run (other grid, model or options)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="prompts answered together")
    p.add_argument("--encode-batch", type=int, default=16, help="frames per VQGAN encode call")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: answer length + 8")
    p.add_argument("--mesh", default=None, help="e.g. sp=8 (default: sp over all devices for ring)")
    p.add_argument("--prefill-chunk", type=int, default=512)
    add_kv_dtype_arg(p)
    p.add_argument(
        "--drop-static",
        type=float,
        metavar="THRESH",
        default=None,
        help="drop a haystack frame whose VQ codes differ from the last kept frame's in fewer "
        "than THRESH (0-1) of positions before the prompt (the needle must survive on its own)",
    )
    p.add_argument(
        "--template",
        default=None,
        help="'auto' (default): the model's own chat template when its tokenizer ships one (the "
        "video first in the user message, then the question), else lwm's video QA layout; or a "
        "JSON file overriding prompt template fields",
    )
    p.add_argument(
        "--system",
        default=None,
        help="system sentence of the prompt template (with a chat template: a system message)",
    )
    p.add_argument(
        "--skip-too-long",
        action="store_true",
        help="skip lengths whose prompts exceed the checkpoint's max_sequence_length",
    )
    p.add_argument("--title", default=None, help="heatmap title")
    add_strict_arg(p)
    add_allow_short_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lwm.cli.data import parse_lengths
    from lwm.errors import LwmError
    from lwm.evals.needle import parse_depths
    from lwm.evals.video_needle_task import VideoNeedleSpec

    if args.drop_static is not None:  # a bad threshold fails before the out dir is made
        from lwm.video.static_drop import check_threshold

        check_threshold(args.drop_static)
    lengths = parse_lengths(args.lengths)
    depths = parse_depths(args.depths)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise LwmError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    spec = VideoNeedleSpec(
        haystack=tuple(args.haystack),
        fps=args.fps,
        clip_frames=args.clip_frames,
        max_frames=args.max_frames,
        needle=args.needle,
        needle_frames=args.needle_frames,
        caption=args.caption,
        seed=args.seed,
    )
    from lwm.evals.video_needle import evaluate_video_needles
    from lwm.inference.runtime import load_template, load_tokenizer

    load_template(args)  # a bad --template fails before anything is loaded
    tokenizer = load_tokenizer(args.tokenizer, args.checkpoint)
    from lwm.workdir_lock import workdir_lock

    with workdir_lock(args.out, "lwm video-needle"):  # one process per --out
        table = evaluate_video_needles(
            args.checkpoint,
            args.vqgan,
            tokenizer,
            spec,
            lengths=lengths,
            depths=depths,
            samples=args.samples,
            out_dir=args.out,
            template=load_template(args, tokenizer),
            batch_size=args.batch_size,
            encode_batch=args.encode_batch,
            max_new_tokens=args.max_new_tokens,
            mesh_spec=args.mesh,
            prefill_chunk=args.prefill_chunk,
            skip_too_long=args.skip_too_long,
            warn=lambda m: print(f"lwm video-needle: warning: {m}", file=sys.stderr),
            title=args.title,
            overwrite=args.overwrite,
            strict=args.strict,
            allow_short=args.allow_short,
            kv_dtype=args.kv_dtype,
            drop_static=args.drop_static,
        )
    print(table)
    return 0
