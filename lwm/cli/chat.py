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


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("chat", help="answer questions about a video or image")
    add_model_args(p, template_help=TEMPLATE_HELP)
    p.add_argument("--vqgan", required=True, help="VQGAN checkpoint (lwm vqgan train)")
    p.add_argument("--video", required=True, help="one video or image file (not a directory)")
    p.add_argument(
        "--question",
        action="append",
        default=[],
        help="question (repeatable); none = read questions from stdin",
    )
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
    add_sampling_args(p)
    add_allow_short_arg(p)
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


def _run(args: argparse.Namespace) -> int:
    from lwm.errors import LwmError
    from lwm.inference.runtime import (
        TextStreamer,
        load_model_from_args,
        load_template,
        load_tokenizer,
        make_sampler,
        sampling_from_args,
    )
    from lwm.inference.video_qa import VideoQA, check_vision_model
    from lwm.models.io import read_model_config
    from lwm.video.reader import check_media_file
    from lwm.video.vqgan_checkpoint import load_vqgan

    check_media_file(args.video)  # a missing file or a folder fails before any weights are read
    sampling = sampling_from_args(args)
    load_template(args)  # a bad --template fails before anything is loaded
    if args.encode_batch < 1:
        raise LwmError(f"--encode-batch must be >= 1, got {args.encode_batch}")
    # Cheap checks first: a text-only checkpoint fails before any weights are read.
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
    fps = args.fps if args.fps is not None or args.frames is not None else 1.0
    t0 = time.perf_counter()
    ctx = qa.load(args.video, frames=args.frames, fps=fps, start=args.start, end=args.end)
    done = (
        f"prefix of {ctx.prefix.num_tokens} tokens encoded and prefilled"
        if ctx.prefix is not None
        else "encoded (LWM layout: prefilled per question)"
    )
    print(
        f"[{args.video}: {ctx.n_frames} frames, {ctx.vision_tokens} vision tokens, {done} in "
        f"{time.perf_counter() - t0:.1f}s]",
        file=sys.stderr,
    )
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
    return 0
