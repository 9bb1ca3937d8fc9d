"""`lwm data build|synth|inspect`: array_record datasets and synthetic long-context tasks."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from lwm.errors import LwmError

TOKENIZER_HELP = "tokenizer: a sentencepiece .model, a tokenizer.json or a directory holding one"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="build datasets and synthetic long-context tasks")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="tokenize jsonl / .txt / Parquet into an array_record dataset")
    b.add_argument(
        "--input",
        required=True,
        help="PATH.jsonl|.parquet|.txt[,...] or a directory of such files",
    )
    b.add_argument("--fields", default="text", help='field spec, e.g. "[vision+question],answer"')
    b.add_argument("--tokenizer", required=True, help=TOKENIZER_HELP)
    b.add_argument("--out", required=True, help="dataset directory to create")
    b.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out that an earlier `lwm data build` wrote (never other files)",
    )
    b.add_argument(
        "--skip-bad", action="store_true", help="skip (and count) bad jsonl lines / Parquet rows"
    )
    b.add_argument("--separator", default=" ", help="subfield separator for a+b fields")
    b.add_argument(
        "--no-bos",
        action="store_true",
        help="do not start examples with BOS (default: BOS where the tokenizer adds one)",
    )
    b.add_argument("--no-eos", action="store_true", help="do not end examples with EOS")
    b.add_argument("--max-n-frames", type=int, default=0, help="vision frames kept (0 = all)")
    b.add_argument("--tokens-per-frame", type=int, default=256)
    b.add_argument("--vision-eof-id", type=int, default=8192)
    b.add_argument("--vision-eov-id", type=int, default=8193)
    b.add_argument("--num-shards", type=int, default=None)
    b.set_defaults(func=_build)

    s = sub.add_parser("synth", help="generate needle tasks or plain text (deterministic by seed)")
    s.add_argument("kind", choices=("needle", "text"))
    s.add_argument("--out", required=True, help="FILE.jsonl (needle) or FILE.txt (text)")
    s.add_argument(
        "--overwrite", action="store_true", help="replace an --out an earlier synth run wrote"
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--tokenizer",
        help="needle: lengths are counted in this tokenizer's tokens (.model, "
        "tokenizer.json or a directory)",
    )
    s.add_argument("--num", type=int, default=100, help="needle: tasks per length")
    s.add_argument("--lengths", default="1k", help="needle: example lengths in tokens, e.g. 1k,2k")
    s.add_argument("--depths", default="", help="needle: depths to cycle (default: uniform)")
    s.add_argument("--haystack", default="noise", help="noise, random, or a directory of .txt")
    s.add_argument("--keys", type=int, default=1, help="needle: keys (multi-key > 1)")
    s.add_argument("--values", type=int, default=1, help="needle: numbers per key (multi-value)")
    s.add_argument("--queries", type=int, default=1, help="needle: keys asked (multi-query)")
    s.add_argument("--sentences", type=int, default=50000, help="text: number of sentences")
    s.set_defaults(func=_synth)

    i = sub.add_parser("inspect", help="print a built dataset's counts and first example")
    i.add_argument("path")
    i.add_argument(
        "--tokenizer",
        help="decode the first example with this tokenizer (the dataset directory "
        "itself holds the one it was built with)",
    )
    i.set_defaults(func=_inspect)


def parse_lengths(text: str) -> list[int]:
    """`1k,2k,1500,1m` -> token counts (k = 1024, m = 1024**2)."""
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        mult = {"k": 1024, "m": 1024**2}.get(item[-1], 1)
        try:
            out.append(int(float(item.rstrip("km")) * mult))
        except ValueError:
            raise LwmError(f"bad length {item!r} (expected e.g. 2048, 2k, 1m)") from None
    if not out or any(n <= 0 for n in out):
        raise LwmError(f"bad lengths {text!r}")
    return out


def _build(args: argparse.Namespace) -> int:
    from lwm.data.builder import build_dataset

    meta = build_dataset(
        args.input,
        args.out,
        tokenizer=args.tokenizer,
        fields=args.fields,
        overwrite=args.overwrite,
        skip_bad=args.skip_bad,
        num_shards=args.num_shards,
        subfield_separator=args.separator,
        add_bos=False if args.no_bos else None,
        add_eos=not args.no_eos,
        max_n_frames=args.max_n_frames,
        tokens_per_frame=args.tokens_per_frame,
        vision_eof_id=args.vision_eof_id,
        vision_eov_id=args.vision_eov_id,
    )
    print(
        f"wrote {args.out}: {meta['num_examples']} examples, {meta['num_tokens']} tokens "
        f"({meta['num_loss_tokens']} trained on, {meta['num_vision_tokens']} vision), "
        f"{meta['skipped_lines']} bad lines skipped"
    )
    return 0


NEEDLE_KEYS = ("context", "question", "answer", "length", "depth")


def _is_needle_file(path: pathlib.Path) -> bool:
    from lwm.data.output_guard import first_json_record

    rec = first_json_record(path)
    return isinstance(rec, dict) and all(k in rec for k in NEEDLE_KEYS)


def _is_text_corpus(path: pathlib.Path) -> bool:
    from lwm.data.synth import NOISE_SENTENCES

    with open(path, "rb") as f:  # the corpus ends with the noise sentences (write_text_corpus)
        f.seek(max(0, path.stat().st_size - 4096))
        tail = f.read().decode("utf-8", errors="replace")
    return tail.rstrip("\n").rsplit("\n", 1)[-1] == " ".join(NOISE_SENTENCES)


def _check_synth_out(args: argparse.Namespace, out: pathlib.Path) -> None:
    from lwm.data.output_guard import check_out_not_input, check_replaceable_file

    if args.kind == "needle":
        if args.haystack not in ("noise", "random"):  # read back as a haystack if inside it
            check_out_not_input(out, [args.haystack])
        if args.tokenizer:
            check_out_not_input(out, [args.tokenizer], inside_ok=True)
    if out.exists() or out.is_symlink():
        if not args.overwrite:
            raise LwmError(f"{out} exists; pass --overwrite to replace it")
        looks_ours = _is_needle_file if args.kind == "needle" else _is_text_corpus
        check_replaceable_file(out, looks_ours, f"lwm data synth {args.kind}")


def _synth(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    _check_synth_out(args, out)
    from lwm.io import atomic_path  # an error (or Ctrl-C) leaves neither `out` nor a temp file

    if args.kind == "text":
        from lwm.data.synth import write_text_corpus

        with atomic_path(out) as tmp:
            write_text_corpus(tmp, args.sentences, seed=args.seed)
        print(f"wrote {out} ({args.sentences} sentences)")
        return 0
    if not args.tokenizer:
        raise LwmError("needle tasks need --tokenizer (lengths are counted in its tokens)")
    from tqdm import tqdm

    from lwm.data.needles import Haystack, make_needle_task
    from lwm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    hay = Haystack(args.haystack)
    lengths = parse_lengths(args.lengths)
    depths = [float(d) for d in args.depths.split(",") if d.strip()] if args.depths else []
    n = 0
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for length in lengths:
            for j in tqdm(range(args.num), desc=f"needle tasks @ {length}", file=sys.stderr):
                depth = depths[j % len(depths)] if depths else j / max(1, args.num - 1)
                task = make_needle_task(
                    tok,
                    length,
                    depth=depth,
                    num_keys=args.keys,
                    num_values=args.values,
                    num_queries=args.queries,
                    haystack=hay,
                    seed=args.seed * 1_000_003 + length * 7919 + j,
                )
                f.write(json.dumps({**task.to_record(), "length": length, "depth": depth}) + "\n")
                n += 1
    print(f"wrote {out} ({n} tasks); build with --fields '[context+question],answer'")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from lwm.data.loader import open_source, read_metadata

    meta = read_metadata(args.path)
    src = open_source(args.path)
    print(json.dumps({**meta, "examples": len(src)}, indent=1))
    if args.tokenizer:
        from lwm.data.tokenizer import load_tokenizer

        ex = src[0]
        text = [int(t) for t, v in zip(ex["tokens"], ex["vision_mask"]) if not v]
        print(load_tokenizer(args.tokenizer).decode(text))
    return 0
