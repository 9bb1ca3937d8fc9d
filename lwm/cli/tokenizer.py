"""`lwm tokenizer train|encode`: train a sentencepiece model from text files; inspect encodings."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="train or inspect a sentencepiece tokenizer")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a sentencepiece model from text files")
    t.add_argument("--input", required=True, help="comma-separated text files (one doc a line)")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True, help="path of the .model file to write")
    t.add_argument("--model-type", default="bpe", choices=("bpe", "unigram"))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.set_defaults(func=_train)
    e = sub.add_parser("encode", help="print the ids and pieces of a text")
    e.add_argument("--tokenizer", required=True)
    e.add_argument("text")
    e.add_argument("--bos", action="store_true")
    e.add_argument("--eos", action="store_true")
    e.set_defaults(func=_encode)


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
    )
    print(f"wrote {tok.path} (vocab_size={tok.vocab_size}, bos={tok.bos_id}, eos={tok.eos_id})")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from lwm.data.tokenizer import Tokenizer

    tok = Tokenizer(args.tokenizer)
    ids = tok.encode(args.text, bos=args.bos, eos=args.eos)
    print(" ".join(str(i) for i in ids))
    print(" ".join(tok.id_to_piece(i) for i in ids))
    return 0
