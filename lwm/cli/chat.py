"""`lwm chat --checkpoint C --vqgan V --video FILE --question Q [--question Q2 ...]`: video QA.

The video (or image: a one-frame video) is read with the streaming reader, VQGAN-encoded in
batches and prefilled *once* as the prefix `<s>{system} USER: <vision>[video]</vision>`; each
question (`\\n{question} ASSISTANT:`) is answered from that cached prefix, so asking many questions
costs one encode and one long prefill. Without --question, questions are read from stdin, one per
line, until EOF (interactive mode). The template is configurable with --template / --system
(see `lwm.inference.prompts`; `auto`, the default, renders the model's own chat template when
its tokenizer ships one, with the video first in the user message, before the question, and
otherwise uses the layout above). `--template lwm` is LWM's vision_chat layout token for token
(question before the video, `<vision>` codes `</vision>`; `--frames N` picks frames at
linspace(0, n - 1, N) indices as LWM does): the video is encoded once but prefilled again
for every question.

`--prefix DIR` answers from a prefix saved by `lwm prefill` (`lwm.inference.prefix_store`):
neither the video nor the VQGAN is read, so --video, --vqgan and the frame flags are refused with
it (they would be silently ignored otherwise). Its template, --system and --kv-dtype are used
unless given; a prefix of another model, tokenizer, template or kv dtype is refused in one line.
`--drop-static THRESH` drops near-duplicate frames after encoding (`lwm.video.static_drop`); the
stderr summary counts the frames it dropped.
"""

from __future__ import annotations

import argparse
import sys
import time

from lwm.inference.runtime import add_model_args, add_sampling_args
from lwm.video.policy import add_allow_short_arg

TEMPLATE_HELP = (
    "'auto' (default): the model's own chat template when its tokenizer ships one (the video "
    "first in the user message, then the question), else lwm's cached layout (video first, "
    "prefilled once for all questions); 'lwm': LWM's vision_chat prompt token for token "
    "(question BEFORE the video, so the video cannot be shared across questions: it is encoded "
    "once but prefilled again per question); or a JSON file of template fields"
)


def add_frame_args(p: argparse.ArgumentParser) -> None:
    """The frame selection, encoding and --drop-static flags shared by chat and prefill."""
    sel = p.add_mutually_exclusive_group()
    sel.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frames evenly spaced over the video (with --template lwm: LWM's pick, frame "
        "indices linspace(0, n-1, N), all frames when the video has at most N)",
    )
    sel.add_argument(
        "--fps", type=float, default=None, help="frames per second to read (default 1)"
    )
    p.add_argument("--start", type=float, default=None, help="start time in seconds")
    p.add_argument("--end", type=float, default=None, help="end time in seconds")
    p.add_argument("--encode-batch", type=int, default=16, help="frames per VQGAN encode call")
    p.add_argument(
        "--drop-static",
        type=float,
        default=None,
        metavar="THRESH",
        help="drop a frame whose VQ codes differ from the last kept frame's in fewer than THRESH "
        "(0-1) of positions, after encoding and before the prompt (timestamps of dropped frames "
        "are reported)",
    )
    add_allow_short_arg(p)


FRAME_FLAGS = ("video", "vqgan", "frames", "fps", "start", "end", "drop_static")
"""Flags that pick and encode the video: a saved prefix holds their result already."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("chat", help="answer questions about a video or image")
    add_model_args(p, template_help=TEMPLATE_HELP)
    p.add_argument("--vqgan", help="VQGAN checkpoint (lwm vqgan train); not with --prefix")
    p.add_argument("--video", help="one video or image file (not a directory); not with --prefix")
    p.add_argument(
        "--prefix",
        default=None,
        help="a saved prefix (lwm prefill --out DIR): answer from its KV cache without reading "
        "the video or the VQGAN (the template, --system and --kv-dtype default to the prefix's)",
    )
    p.add_argument(
        "--question",
        action="append",
        default=[],
        help="question (repeatable); none = read questions from stdin",
    )
    add_frame_args(p)
    add_sampling_args(p)
    p.set_defaults(func=_run)


def _questions(args):
    if args.question:
        yield from args.question
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("question> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.strip()


def check_frame_args(args: argparse.Namespace) -> None:
    """Cheap one-line checks of the frame flags, before anything is loaded."""
    from lwm.errors import LwmError
    from lwm.video.reader import check_media_file

    if args.drop_static is not None:
        from lwm.video.static_drop import check_threshold

        check_threshold(args.drop_static)
    check_media_file(args.video)  # a missing file or a folder fails before any weights are read
    if args.encode_batch < 1:
        raise LwmError(f"--encode-batch must be >= 1, got {args.encode_batch}")


def selected_fps(args: argparse.Namespace) -> float | None:
    """--fps, else 1 frame per second unless --frames picks them."""
    return args.fps if args.fps is not None or args.frames is not None else 1.0


def _run(args: argparse.Namespace) -> int:
    from lwm.errors import LwmError
    from lwm.inference.runtime import load_template, sampling_from_args

    if args.prefix is not None:
        given = [f"--{n.replace('_', '-')}" for n in FRAME_FLAGS if getattr(args, n) is not None]
        if given:
            raise LwmError(
                f"--prefix holds the encoded video already; {', '.join(given)} cannot be used "
                "with it (drop them, or chat on the video without --prefix)"
            )
    elif args.video is None or args.vqgan is None:
        raise LwmError("--video and --vqgan are required (or --prefix DIR from lwm prefill)")
    else:
        check_frame_args(args)
    sampling = sampling_from_args(args)
    if args.prefix is None:
        load_template(args)  # a bad --template fails before anything is loaded
        tokenizer, qa, ctx = _open_video(args)
    else:
        tokenizer, qa, ctx = _open_prefix(args)
    _answer(args, tokenizer, qa, ctx, sampling)
    return 0


def open_video_qa(args: argparse.Namespace):
    """(tokenizer, `VideoQA`, model) for `lwm chat` / `lwm prefill`: the checkpoint, tokenizer,
    template, VQGAN and sampler their flags name; a text-only checkpoint fails before any weights
    are read."""
    from lwm.inference.runtime import (
        load_model_from_args,
        load_template,
        load_tokenizer,
        make_sampler,
    )
    from lwm.inference.video_qa import VideoQA, check_vision_model
    from lwm.models.io import read_model_config
    from lwm.video.vqgan_checkpoint import load_vqgan

    cfg = read_model_config(args.checkpoint, strict=args.strict)
    check_vision_model(cfg, 0, where=str(args.checkpoint))
    tokenizer = load_tokenizer(args.tokenizer, args.checkpoint)
    template = load_template(args, tokenizer)
    vqgan = load_vqgan(args.vqgan)
    model, mesh = load_model_from_args(args)
    qa = VideoQA(
        make_sampler(model, mesh, args),
        tokenizer,
        vqgan,
        template=template,
        encode_batch=args.encode_batch,
        allow_short=args.allow_short,
    )
    return tokenizer, qa, model


def _open_video(args: argparse.Namespace):
    tokenizer, qa, _ = open_video_qa(args)
    t0 = time.perf_counter()
    ctx = qa.load(
        args.video,
        frames=args.frames,
        fps=selected_fps(args),
        start=args.start,
        end=args.end,
        drop_static=args.drop_static,
    )
    done = (
        f"prefix of {ctx.prefix.num_tokens} tokens encoded and prefilled"
        if ctx.prefix is not None
        else "encoded (LWM layout: prefilled per question)"
    )
    print(
        f"[{args.video}: {ctx.summary()}, {done} in {time.perf_counter() - t0:.1f}s]",
        file=sys.stderr,
    )
    return tokenizer, qa, ctx


def _open_prefix(args: argparse.Namespace):
    from lwm.inference.prefix_fingerprint import params_fingerprint
    from lwm.inference.prefix_store import check_identity, load_prefix, read_manifest
    from lwm.inference.runtime import load_model_from_args, make_sampler
    from lwm.inference.video_qa import VideoQA

    t0 = time.perf_counter()
    manifest = read_manifest(args.prefix)
    where = f"saved prefix {args.prefix}"
    tokenizer, template = _check_prefix_identity(args, manifest, where)
    model, mesh = load_model_from_args(args)
    check_identity(manifest, where, params_sha256=params_fingerprint(model))
    qa = VideoQA(make_sampler(model, mesh, args), tokenizer, None, template=template)
    prefix = load_prefix(args.prefix, manifest, model.config, mesh)
    ctx = qa.context_from_prefix(prefix, manifest)
    print(
        f"[{args.prefix}: {ctx.path}: {ctx.summary()}, prefix of {prefix.num_tokens} tokens "
        f"loaded in {time.perf_counter() - t0:.1f}s]",
        file=sys.stderr,
    )
    return tokenizer, qa, ctx


def _check_prefix_identity(args: argparse.Namespace, manifest, where: str):
    """The tokenizer and template, after the checks that need no weights (kv dtype, tokenizer,
    template, model config). The template, --system and --kv-dtype default to the prefix's."""
    from lwm.inference.prefix_fingerprint import (
        config_fingerprint,
        template_fingerprint,
        tokenizer_fingerprint,
    )
    from lwm.inference.prefix_store import check_identity, resolved_kv_dtype
    from lwm.inference.runtime import load_template, load_tokenizer, model_overrides
    from lwm.inference.video_qa import check_vision_model
    from lwm.models.config import apply_kv_dtype
    from lwm.models.io import read_model_config

    if args.template is None and args.system is None:
        args.template, args.system = manifest.template["name"], manifest.template["system"]
    load_template(args)
    cfg = read_model_config(args.checkpoint, strict=args.strict)
    check_vision_model(cfg, 0, where=str(args.checkpoint))
    cfg = cfg.replace(**model_overrides(args))
    if getattr(args, "kv_dtype", None) is None and cfg.kv_dtype == "auto":
        # Neither --kv-dtype nor the config chose one: the prefix's (as a config override, so
        # the model is loaded with it whichever way the flag is applied).
        args.kv_dtype = manifest.kv_dtype
        args.config_overrides = [*args.config_overrides, f"model.kv_dtype={manifest.kv_dtype}"]
    cfg = apply_kv_dtype(cfg, getattr(args, "kv_dtype", None))
    tokenizer = load_tokenizer(args.tokenizer, args.checkpoint)
    template = load_template(args, tokenizer)
    check_identity(
        manifest,
        where,
        kv_dtype=resolved_kv_dtype(cfg),
        tokenizer_sha256=tokenizer_fingerprint(tokenizer),
        template_sha256=template_fingerprint(template),
        config_sha256=config_fingerprint(cfg),
    )
    return tokenizer, template


def _answer(args: argparse.Namespace, tokenizer, qa, ctx, sampling) -> None:
    from lwm.inference.runtime import TextStreamer

    for question in _questions(args):
        print(f"Q: {question}")
        print("A: ", end="", flush=True)
        streamer = TextStreamer(tokenizer, stop_ids=tokenizer.eos_ids)
        qa.ask_tokens(
            ctx,
            question,
            max_new_tokens=args.max_new_tokens,
            sampling=sampling,
            seed=args.seed,
            stream=streamer.callback(),
        )
        streamer.finish()
