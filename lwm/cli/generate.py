"""`lwm generate --checkpoint C --prompt TEXT [...]`: text generation with the KV-cache sampler.

One prompt streams its completion to stdout as it is decoded; several prompts (repeat --prompt)
run as one left-padded batch and print one completion per line block. `--prompt-ids` takes token
ids directly (comma-separated) and prints ids, for checkpoints without a tokenizer.

`--chat` wraps each prompt as one user message in the prompt template: with `--template auto`
(the default) the model's own chat template when its tokenizer ships one, so the ids are those of
transformers' `apply_chat_template(..., add_generation_prompt=True)`. Generation stops at any of
the tokenizer's EOS ids (Llama-3: `<|eot_id|>` and `<|end_of_text|>`); the text printed is the
decode of the new ids before it, special tokens skipped, as transformers prints it.
"""

from __future__ import annotations

import argparse
import sys

from lwm.inference.runtime import add_model_args, add_sampling_args


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text from a checkpoint (KV-cache sampler)",
        description="Generates text from a checkpoint; stops at any of the tokenizer's EOS ids "
        "(tokenizer and generation_config.json). An id past the tokenizer's vocabulary (a model "
        "vocabulary padded beyond the tokenizer) has no text and prints as nothing.",
    )
    add_model_args(p)
    p.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    p.add_argument(
        "--prompt-ids", action="append", default=[], help="prompt as comma-separated token ids"
    )
    p.add_argument(
        "--chat",
        action="store_true",
        help="wrap each prompt as a user message in the prompt template (see --template)",
    )
    p.add_argument(
        "--truncate",
        action="store_true",
        help="keep the last tokens of a prompt longer than the model's max_sequence_length",
    )
    p.add_argument("--no-stream", action="store_true", help="print only when done")
    add_sampling_args(p)
    p.set_defaults(func=_run)


def _parse_ids(text: str) -> list[int]:
    from lwm.errors import LwmError

    try:
        ids = [int(x) for x in text.replace(" ", ",").split(",") if x]
    except ValueError:
        raise LwmError(f"--prompt-ids {text!r}: expected comma-separated integers") from None
    if not ids:
        raise LwmError("--prompt-ids is empty")
    return ids


def _note_cut(prompts: list[list[int]], max_new: int, limit: int, truncate: bool) -> None:
    """Says (one stderr line) when generation will stop at max_sequence_length before
    --max-new-tokens: the sampler stops there silently."""
    keep = max(1, limit - max_new)  # what --truncate leaves of a prompt over the limit
    lengths = [min(len(p), keep) if truncate and len(p) > limit else len(p) for p in prompts]
    longest = max(lengths)
    if longest > limit:
        return  # refused by the sampler
    room = limit - longest
    if room < max_new:
        print(
            f"lwm generate: note: --max-new-tokens {max_new} cut to {room}: the prompt has "
            f"{longest} tokens and max_sequence_length is {limit}",
            file=sys.stderr,
        )


def _run(args: argparse.Namespace) -> int:
    from lwm.errors import LwmError
    from lwm.inference.answer_text import answer_text
    from lwm.inference.prompts import chat_prompt, plain_prompt
    from lwm.inference.runtime import (
        TextStreamer,
        check_tokenizer_fits,
        load_model_from_args,
        load_template,
        load_tokenizer,
        make_sampler,
        sampling_from_args,
    )

    if bool(args.prompt) == bool(args.prompt_ids):
        raise LwmError("give --prompt TEXT or --prompt-ids IDS (one kind, repeatable)")
    sampling = sampling_from_args(args)
    load_template(args)  # a bad --template fails before the model loads
    model, mesh = load_model_from_args(args)
    vocab = model.config.vocab_size
    if args.prompt_ids:
        tokenizer = None
        prompts = [_parse_ids(t) for t in args.prompt_ids]
        bad = [i for p in prompts for i in p if not 0 <= i < vocab]
        if bad:
            raise LwmError(f"--prompt-ids: token {bad[0]} outside the vocabulary [0, {vocab})")
        eos = None
    else:
        tokenizer = load_tokenizer(args.tokenizer, args.checkpoint)
        check_tokenizer_fits(tokenizer, vocab)
        template = load_template(args, tokenizer)
        wrap = chat_prompt if args.chat else plain_prompt
        prompts = [wrap(tokenizer, template, p) for p in args.prompt]
        eos = tokenizer.eos_ids
    _note_cut(prompts, args.max_new_tokens, model.config.max_sequence_length, args.truncate)
    sampler = make_sampler(model, mesh, args)
    streamer = None
    if tokenizer is not None and len(prompts) == 1 and not args.no_stream:
        streamer = TextStreamer(tokenizer, stop_ids=eos)
    outs = sampler.generate(
        prompts,
        max_new_tokens=args.max_new_tokens,
        sampling=sampling,
        eos_id=eos,
        seed=args.seed,
        truncate=args.truncate,
        stream=streamer.callback() if streamer else None,
    )
    if streamer is not None:
        streamer.finish()
        return 0
    for i, out in enumerate(outs):
        if len(outs) > 1:
            print(f"--- {i}")
        if tokenizer is None:
            print(" ".join(str(t) for t in out))
        else:
            print(answer_text(tokenizer, out, eos))
    sys.stdout.flush()
    return 0
