"""`lwm video tokenize` (videos -> jsonl of vision codes) and `lwm video reconstruct` (-> mp4)."""

from __future__ import annotations

import argparse
import pathlib
import sys

from lwm.video.policy import add_allow_short_arg


def _selection_args(p: argparse.ArgumentParser) -> None:
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--frames", type=int, help="N frames evenly spaced over the video/range")
    sel.add_argument("--fps", type=float, help="sample F frames per second")
    p.add_argument("--start", type=float, help="start of the time range (seconds)")
    p.add_argument("--end", type=float, help="end of the time range (seconds, exclusive)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per VQGAN call")
    p.add_argument("--vqgan", required=True, help="VQGAN checkpoint (workdir or checkpoints/)")
    p.add_argument("--preset", help="refuse a checkpoint that is not this VQGAN preset")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("video", help="tokenize videos into VQ codes, reconstruct")
    sub = parser.add_subparsers(dest="video_command", metavar="ACTION", required=True)

    tok = sub.add_parser("tokenize", help="videos/images -> one jsonl record of codes each")
    tok.add_argument("--input", nargs="+", required=True, help="files and/or directories")
    tok.add_argument("--out", required=True, help="output .jsonl")
    _selection_args(tok)
    tok.add_argument("--captions", help="jsonl of {'video': name, ...caption fields}")
    tok.add_argument("--eof-id", type=int, default=8192, help="end-of-frame code (LWM: 8192)")
    tok.add_argument("--eov-id", type=int, default=8193, help="end-of-video code (LWM: 8193)")
    tok.add_argument("--skip-bad", action="store_true", help="report and skip unreadable inputs")
    tok.add_argument("--resume", action="store_true", help="append to an existing --out")
    tok.add_argument(
        "--overwrite", action="store_true", help="replace an --out an earlier tokenize wrote"
    )
    tok.add_argument("--no-progress", action="store_true", help="no progress bars")
    tok.add_argument(
        "--drop-static",
        type=float,
        metavar="THRESH",
        help="drop a frame whose codes differ from the last kept frame's in fewer than THRESH "
        "(0-1) of positions; records keep the dropped frames' timestamps (dropped_timestamps)",
    )
    add_allow_short_arg(tok)
    tok.set_defaults(func=_tokenize)

    rec = sub.add_parser("reconstruct", help="round-trip a video through the VQGAN to mp4")
    rec.add_argument("--input", required=True, help="video or image")
    rec.add_argument("--out", required=True, help="output .mp4")
    _selection_args(rec)
    rec.add_argument("--side-by-side", action="store_true", help="original | reconstruction")
    rec.add_argument("--out-fps", type=float, help="frame rate of the written mp4")
    rec.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    rec.set_defaults(func=_reconstruct)


def _is_tokenize_output(path: pathlib.Path) -> bool:
    from lwm.data.output_guard import first_json_record

    rec = first_json_record(path)
    return isinstance(rec, dict) and "vision" in rec and "source" in rec


def _check_tokenize_out(args) -> None:
    """Before any work: --out is no input (a video, a directory of them, --captions) and
    --overwrite / --resume touch only a jsonl an earlier `video tokenize` wrote."""
    from lwm.data.output_guard import check_out_not_input, check_replaceable_file

    out = pathlib.Path(args.out)
    inputs = [*args.input, *([args.captions] if args.captions else [])]
    check_out_not_input(out, inputs, inside_ok=True)  # a .jsonl beside the videos is not read
    if (args.overwrite or args.resume) and (out.exists() or out.is_symlink()):
        check_replaceable_file(out, _is_tokenize_output, "lwm video tokenize")


def _tokenize(args) -> int:
    from lwm.video.static_drop import check_threshold
    from lwm.video.tokenize import load_captions_file, tokenize_files
    from lwm.video.vqgan import make_encode_fn
    from lwm.video.vqgan_checkpoint import load_vqgan

    if args.drop_static is not None:
        check_threshold(args.drop_static)  # before anything is read or written
    _check_tokenize_out(args)
    vqgan = load_vqgan(args.vqgan, expect=args.preset)
    captions = load_captions_file(args.captions) if args.captions else None
    report = tokenize_files(
        make_encode_fn(vqgan),
        args.input,
        args.out,
        resolution=vqgan.cfg.resolution,
        codebook_size=vqgan.cfg.codebook_size,
        skip_bad=args.skip_bad,
        resume=args.resume,
        overwrite=args.overwrite,
        captions=captions,
        show_progress=not args.no_progress,
        frames=args.frames,
        fps=args.fps,
        start=args.start,
        end=args.end,
        batch_size=args.batch_size,
        eof_id=args.eof_id,
        eov_id=args.eov_id,
        allow_short=args.allow_short,
        drop_static=args.drop_static,
    )
    print(
        f"wrote {len(report.written)} records to {args.out}"
        + (f", {len(report.already_done)} already there" if report.already_done else "")
        + (f", skipped {len(report.skipped_bad)} bad inputs" if report.skipped_bad else "")
    )
    for _path, err in report.skipped_bad:
        print(f"skipped: {err}", file=sys.stderr)
    return 0


def _reconstruct(args) -> int:
    from lwm.video.reconstruct import reconstruct_video
    from lwm.video.vqgan_checkpoint import load_vqgan

    vqgan = load_vqgan(args.vqgan, expect=args.preset)
    out = reconstruct_video(
        vqgan,
        args.input,
        args.out,
        frames=args.frames,
        fps=args.fps,
        start=args.start,
        end=args.end,
        batch_size=args.batch_size,
        side_by_side=args.side_by_side,
        out_fps=args.out_fps,
        overwrite=args.overwrite,
    )
    print(f"wrote {out['frames']} frames to {args.out} (PSNR {out['psnr']:.2f} dB)")
    return 0
