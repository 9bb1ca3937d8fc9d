"""`lwm perplexity`: perplexity of a fixed last segment as the context before it grows."""

from __future__ import annotations

import argparse
import sys

from lwm.checkpoint.policy import add_strict_arg


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "perplexity",
        help="perplexity of the last segment of a text as the context grows (with a plot)",
        description="For windows spread over the text, reads the L tokens ending at each window "
        "end and scores the last --segment tokens; the scored tokens are the same at every L, so "
        "the curve shows how much longer context helps. Writes OUT/perplexity.png and .json.",
    )
    p.add_argument("--checkpoint", required=True, help="model checkpoint or training workdir")
    p.add_argument(
        "--tokenizer",
        help="a sentencepiece .model, a tokenizer.json or a directory (default: the one in "
        "CHECKPOINT: tokenizer.json, else tokenizer.model)",
    )
    p.add_argument("--text", required=True, help="a UTF-8 text file (long enough for --lengths)")
    p.add_argument("--lengths", required=True, help="context lengths in tokens, e.g. 1k,2k,4k")
    p.add_argument("--segment", type=int, default=256, help="scored tokens at the end")
    p.add_argument("--windows", type=int, default=4, help="window ends spread over the text")
    p.add_argument("--mesh", default=None, help="e.g. sp=8 (default: sp over all devices for ring)")
    p.add_argument("--out", default="perplexity_out", help="directory for the plot and json")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of a different run in --out (the same run is read back)",
    )
    p.add_argument(
        "--skip-too-long",
        action="store_true",
        help="skip lengths beyond the checkpoint's max_sequence_length",
    )
    add_strict_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lwm.cli.data import parse_lengths
    from lwm.evals.model_runner import existing_checkpoint
    from lwm.evals.needle import check_lengths
    from lwm.evals.run import evaluate_perplexity
    from lwm.inference.runtime import check_tokenizer_fits, load_tokenizer
    from lwm.models.io import read_model_config

    lengths = sorted(parse_lengths(args.lengths))
    cfg = read_model_config(existing_checkpoint(args.checkpoint), strict=args.strict)
    lengths = check_lengths(
        lengths,
        cfg.max_sequence_length,
        skip_too_long=args.skip_too_long,
        warn=lambda m: print(f"lwm perplexity: warning: {m}", file=sys.stderr),
    )
    tokenizer = load_tokenizer(args.tokenizer, args.checkpoint)
    check_tokenizer_fits(tokenizer, cfg.vocab_size, where=str(args.checkpoint))
    from lwm.workdir_lock import workdir_lock

    with workdir_lock(args.out, "lwm perplexity"):  # one process per --out
        print(
            evaluate_perplexity(
                args.checkpoint,
                tokenizer,
                args.text,
                lengths=lengths,
                out_dir=args.out,
                segment=args.segment,
                windows=args.windows,
                mesh_spec=args.mesh,
                overwrite=args.overwrite,
                strict=args.strict,
            )
        )
    return 0
