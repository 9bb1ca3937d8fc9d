"""`lwm prefill --checkpoint C --vqgan V --video F --out PREFIX_DIR`: encode and prefill a video
once, save its KV cache; `lwm chat --prefix PREFIX_DIR --question Q` answers from it later.

The prefix is exactly the one `lwm chat` builds and caches (`<s>{system} USER: <vision>[video]
</vision>`, or the model's chat template up to the video), with the same frame flags, template,
--system, --kv-dtype, --drop-static and --mesh; what is saved and checked is described in
`lwm.inference.prefix_store`. `--template lwm` is refused: LWM's layout puts the question before
the video, so no prefix is shared by the questions. `--out` must be new or empty: nothing is
overwritten, it is locked while written (`lwm.workdir_lock`) and a failed prefill removes only
what it created.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from lwm.cli.chat import TEMPLATE_HELP, add_frame_args, check_frame_args, selected_fps
from lwm.inference.runtime import add_model_args

LWM_REFUSAL = (
    "--template lwm puts the question before the video, so there is no prefix shared by all "
    "questions to save; use the default template (or lwm chat --template lwm on the video)"
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "prefill", help="encode and prefill a video once; save its KV cache for lwm chat --prefix"
    )
    add_model_args(p, template_help=TEMPLATE_HELP)
    p.add_argument("--vqgan", required=True, help="VQGAN checkpoint (lwm vqgan train)")
    p.add_argument("--video", required=True, help="one video or image file (not a directory)")
    add_frame_args(p)
    p.add_argument(
        "--out", required=True, help="new or empty directory for the saved prefix (PREFIX_DIR)"
    )
    p.set_defaults(func=_run)


def _check_out(out: pathlib.Path, ignore: tuple[str, ...] = ()) -> None:
    from lwm.errors import LwmError

    if out.exists() and not out.is_dir():
        raise LwmError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(p.name not in ignore for p in out.iterdir()):
        raise LwmError(
            f"--out {out} exists and is not empty; a prefix is never written over other files "
            "(choose a new directory)"
        )


def _run(args: argparse.Namespace) -> int:
    import jax

    from lwm.data.output_guard import check_out_not_input
    from lwm.errors import LwmError
    from lwm.failed_start import undo_failed_start
    from lwm.inference.runtime import load_template
    from lwm.workdir_lock import LOCK_FILE, workdir_lock

    check_frame_args(args)
    if args.template == "lwm" or load_template(args).layout == "lwm":
        raise LwmError(LWM_REFUSAL)
    out = pathlib.Path(args.out).expanduser()
    check_out_not_input(out, [args.video, args.checkpoint, args.vqgan])
    _check_out(out, ignore=(LOCK_FILE,))  # a lock file alone: the lock says who holds it
    primary = jax.process_index() == 0
    with workdir_lock(out, "lwm prefill", enabled=primary) as root:
        _check_out(root, ignore=(LOCK_FILE,))  # written by another process meanwhile?
        with undo_failed_start(root, enabled=primary):
            _prefill(args, root)
    return 0


def _prefill(args: argparse.Namespace, root: pathlib.Path) -> None:
    from lwm.cli.chat import open_video_qa
    from lwm.inference.prefix_store import make_manifest, save_prefix

    tokenizer, qa, model = open_video_qa(args)
    t0 = time.perf_counter()
    selection = {"frames": args.frames, "fps": selected_fps(args)}
    selection.update(start=args.start, end=args.end)
    ctx = qa.load(args.video, **selection, drop_static=args.drop_static)
    seconds = time.perf_counter() - t0
    manifest = make_manifest(
        ctx,
        model=model,
        tokenizer=tokenizer,
        template=qa.template,
        template_name=args.template,
        system=args.system,
        checkpoint=args.checkpoint,
        selection=selection,
        mesh=qa.sampler.mesh,
    )
    t1 = time.perf_counter()
    save_prefix(root, ctx.prefix, manifest)
    print(
        f"[{args.video}: {ctx.summary()}, prefix of {manifest.num_tokens} tokens "
        f"({manifest.kv_dtype} cache) encoded and prefilled in {seconds:.1f}s, saved to {root} "
        f"in {time.perf_counter() - t1:.1f}s]",
        file=sys.stderr,
    )
