"""`lwm tokenizer train|encode|info`: train a sentencepiece model from text files; inspect any
tokenizer (a sentencepiece `.model`, an HF `tokenizer.json` or a directory holding one)."""

from __future__ import annotations

import argparse
import sys

TOKENIZER_HELP = "a sentencepiece .model, a tokenizer.json or a directory holding one"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tokenizer", help="train a sentencepiece tokenizer; inspect any (sentencepiece or HF)"
    )
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a sentencepiece model from text files")
    t.add_argument("--input", required=True, help="comma-separated text files (one doc a line)")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True, help="path of the .model file to write")
    t.add_argument("--model-type", default="bpe", choices=("bpe", "unigram"))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--overwrite", action="store_true", help="replace an --out that is a sentencepiece model"
    )
    t.add_argument(
        "--strict-vocab",
        action="store_true",
        help="refuse (exit 2, nothing written) when the corpus cannot give --vocab-size pieces; "
        "without it a smaller model is written and a note says how large",
    )
    t.set_defaults(func=_train)
    e = sub.add_parser("encode", help="print the ids and pieces of a text")
    e.add_argument("--tokenizer", required=True, help=TOKENIZER_HELP)
    e.add_argument("text")
    e.add_argument("--bos", action="store_true", help="start with BOS (if the tokenizer has one)")
    e.add_argument("--eos", action="store_true")
    e.set_defaults(func=_encode)
    i = sub.add_parser("info", help="print a tokenizer's kind, vocabulary and special tokens")
    i.add_argument("--tokenizer", required=True, help=TOKENIZER_HELP)
    i.set_defaults(func=_info)


def _train(args: argparse.Namespace) -> int:
    from lwm.data.tokenizer import train_tokenizer

    files = [f for f in args.input.split(",") if f]
    tok = train_tokenizer(
        files,
        args.vocab_size,
        args.out,
        model_type=args.model_type,
        seed=args.seed,
        overwrite=args.overwrite,
        strict_vocab=args.strict_vocab,
    )
    if tok.vocab_size < args.vocab_size:
        print(
            f"lwm tokenizer: note: the corpus supports only {tok.vocab_size} pieces, not the "
            f"{args.vocab_size} requested; wrote a {tok.vocab_size}-piece model "
            "(--strict-vocab refuses instead)",
            file=sys.stderr,
        )
    print(f"wrote {tok.path} (vocab_size={tok.vocab_size}, bos={tok.bos_id}, eos={tok.eos_id})")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from lwm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text, bos=args.bos, eos=args.eos)
    print(" ".join(str(i) for i in ids))
    print(" ".join(tok.id_to_piece(i) for i in ids))
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from lwm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    info = {
        "path": str(tok.path),
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id,
        "add_bos": tok.add_bos,
        "eos_id": tok.eos_id,
        "eos_ids": list(tok.eos_ids),
        "pad_id": tok.pad_id,
        "special_tokens": tok.special_tokens,
        "chat_template": tok.chat_template is not None,
        "files": sorted(tok.files),
    }
    print(json.dumps(info, indent=1))
    return 0
