"""`lwm needle`: needle-in-a-haystack retrieval over a grid of lengths x depths (LWM / RULER)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from lwm.checkpoint.policy import add_strict_arg
from lwm.inference.runtime import add_kv_dtype_arg


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "needle",
        help="needle-in-a-haystack eval: accuracy heatmap over context length x depth",
        description="Inserts needles 'The special magic {key} number is: {7 digits}.' at sentence "
        "boundaries at each depth of haystacks of each length, asks for them, decodes greedily and "
        "counts a sample correct when every asked number is in the answer. Results go to "
        "OUT/results.jsonl (rerunning resumes), OUT/heatmap.png and OUT/summary.json.",
    )
    p.add_argument("--checkpoint", required=True, help="model checkpoint or training workdir")
    p.add_argument(
        "--tokenizer",
        help="a sentencepiece .model, a tokenizer.json or a directory (default: the one in "
        "CHECKPOINT: tokenizer.json, else tokenizer.model)",
    )
    p.add_argument("--lengths", required=True, help="context lengths in tokens, e.g. 1k,2k,4k")
    p.add_argument("--depths", default="0:1:11", help="fractions 0,0.5,1 or start:stop:count")
    p.add_argument("--samples", type=int, default=1, help="samples per (length, depth) cell")
    p.add_argument(
        "--haystack", default="noise", help="noise, random, a directory of .txt, or FILE.jsonl"
    )
    p.add_argument("--needles", type=int, default=1, help="needles inserted (multi-key if > 1)")
    p.add_argument("--retrieve", type=int, default=1, help="needles asked (multi-query if > 1)")
    p.add_argument("--values", type=int, default=1, help="numbers per needle (multi-value)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="results directory (resumed if it exists)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results in --out from a different run (other grid, model or options)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="prompts answered together")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: answer length + 8")
    p.add_argument("--mesh", default=None, help="e.g. sp=8 (default: sp over all devices for ring)")
    p.add_argument("--prefill-chunk", type=int, default=512)
    add_kv_dtype_arg(p)
    p.add_argument(
        "--skip-too-long",
        action="store_true",
        help="skip lengths beyond the checkpoint's max_sequence_length instead of failing",
    )
    p.add_argument(
        "--template",
        choices=["auto", "default", "lwm", "chat"],
        default="auto",
        help="prompt: auto (the default: chat when the tokenizer ships a chat template, else "
        "default), default (BOS + context + '\\nQuestion: ...\\nAnswer:', lwm's training "
        "format), lwm (LWM's eval_needle chat wrapping, token for token: 'You are a helpful "
        "assistant. USER: {context} {question} Don't give ... ASSISTANT: ') or chat (the user "
        "text '{context} {question} Don't give ... short and direct.' in the model's own chat "
        "template, no system message)",
    )
    p.add_argument("--title", default=None, help="heatmap title")
    add_strict_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lwm.cli.data import parse_lengths
    from lwm.evals.needle import NeedleSpec, check_lengths, load_haystack, needle_chat, parse_depths

    lengths = parse_lengths(args.lengths)
    depths = parse_depths(args.depths)
    spec = NeedleSpec(
        haystack=args.haystack,
        num_needles=args.needles,
        num_retrieve=args.retrieve,
        num_values=args.values,
        seed=args.seed,
        template="default" if args.template == "auto" else args.template,
    )
    load_haystack(spec.haystack)  # bad haystack: fail before loading the model

    from lwm.evals.model_runner import existing_checkpoint, load_eval_model
    from lwm.inference.runtime import check_tokenizer_fits, kv_dtype_override, load_tokenizer

    overrides = kv_dtype_override(args) or None
    from lwm.models.io import read_model_config

    cfg = read_model_config(existing_checkpoint(args.checkpoint), strict=args.strict)
    lengths = check_lengths(
        lengths,
        cfg.max_sequence_length,
        skip_too_long=args.skip_too_long,
        warn=lambda m: print(f"lwm needle: warning: {m}", file=sys.stderr),
    )
    tokenizer = load_tokenizer(args.tokenizer, args.checkpoint)
    check_tokenizer_fits(tokenizer, cfg.vocab_size, where=str(args.checkpoint))
    if args.template == "auto" and tokenizer.chat_template:
        spec = dataclasses.replace(spec, template="chat")
    elif args.template == "chat":
        needle_chat(tokenizer)  # no chat template: fail before the model loads
    from lwm.evals.run import evaluate_needles
    from lwm.workdir_lock import workdir_lock

    with workdir_lock(args.out, "lwm needle"):  # one process per --out
        table = evaluate_needles(
            args.checkpoint,
            tokenizer,
            lengths=lengths,
            depths=depths,
            samples=args.samples,
            spec=spec,
            out_dir=args.out,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            mesh_spec=args.mesh,
            prefill_chunk=args.prefill_chunk,
            title=args.title,
            model_loader=lambda: load_eval_model(
                args.checkpoint, mesh_spec=args.mesh, overrides=overrides, strict=args.strict
            ),
            overwrite=args.overwrite,
            strict=args.strict,
            identity_extra=overrides,
        )
    print(table)
    return 0
