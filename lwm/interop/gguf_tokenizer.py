"""The tokenizer a GGUF file embeds, written as HF files (`tokenizer.json` built with the
`tokenizers` library, `tokenizer_config.json`, `generation_config.json`) that `load_tokenizer`
reads.

llama.cpp stores the vocabulary as metadata: `tokenizer.ggml.model` says the kind (`gpt2`:
byte-level BPE with merges; `llama`: sentencepiece BPE with scores), `tokenizer.ggml.pre` names
how text is split before BPE (a regex set), `token_type` marks control (3), user-defined (4) and
byte (6) tokens. The pre-tokenizers below are those of the models' own `tokenizer.json` for the
`pre` names lwm knows; any other name is refused rather than guessed (a wrong split gives other
ids without any error).
"""

from __future__ import annotations

import pathlib
from typing import Any

from lwm.errors import LwmError
from lwm.interop.gguf_reader import GgufFile
from lwm.io import write_json

CONTROL, USER_DEFINED, UNKNOWN, BYTE, UNUSED = 3, 4, 2, 6, 5
"""llama.cpp token types (`tokenizer.ggml.token_type`)."""

# GPT-2's split is ByteLevel's built-in regex; the others are Split(regex) + ByteLevel(no regex).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    "gpt-2": "gpt2",
    "phi-2": "gpt2",
    "smollm": "digits+gpt2",
    "starcoder": "digits+gpt2",
    "refact": "digits+gpt2",
    "llama-bpe": "llama3",
    "llama3": "llama3",
    "llama-v3": "llama3",
    "smaug-bpe": "llama3",
    "falcon3": "llama3",
    "qwen2": "qwen2",
    "deepseek-r1-qwen": "qwen2",
}
"""`tokenizer.ggml.pre` -> the split lwm builds (llama.cpp's regex sets for those names)."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE spells tokens with it)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _meta(gf: GgufFile, key: str, default: Any = None) -> Any:
    return gf.metadata.get(f"tokenizer.ggml.{key}", default)


def _byte_level(gf: GgufFile):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    pre = str(_meta(gf, "pre", "gpt-2"))
    split = PRE_TOKENIZERS.get(pre)
    if split is None:
        raise LwmError(
            f"GGUF pre-tokenizer {pre!r} is not one lwm knows ({', '.join(sorted(PRE_TOKENIZERS))})"
        )
    tokens = list(_meta(gf, "tokens"))
    types = list(_meta(gf, "token_type") or [1] * len(tokens))
    merges = _meta(gf, "merges")
    if not merges:
        raise LwmError("GGUF byte-level BPE tokenizer has no tokenizer.ggml.merges")
    alphabet = set(bytes_to_unicode().values())
    spell = bytes_to_unicode()

    def spelled(token: str) -> str:
        # A token written with raw characters (llama.cpp keeps some that way) is respelled in
        # the byte alphabet the merges use.
        if set(token) <= alphabet:
            return token
        return "".join(spell[b] for b in token.encode("utf-8"))

    vocab = {spelled(t): i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=pairs,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            # Llama-3's own tokenizer.json looks whole words up before merging.
            ignore_merges=split == "llama3",
        )
    )
    if split == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif split == "digits+gpt2":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    else:
        regex = LLAMA3_SPLIT if split == "llama3" else QWEN2_SPLIT
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if split == "qwen2":
        from tokenizers import normalizers

        tok.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # A control token outside the byte alphabet is a llama.cpp mislabel of a plain token.
    special = [t for t, k in zip(tokens, types) if k == CONTROL and set(t) <= alphabet]
    user = [spelled(t) for t, k in zip(tokens, types) if k == USER_DEFINED]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    return tok


def spm_merges(tokens: list[str], scores: list[float], skip: set[str]) -> list[tuple[str, str]]:
    """BPE merges that reproduce sentencepiece's score-ordered merging: every split of a piece
    into two vocabulary pieces, best-scored result first (as transformers' SPM converter)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for piece, score in zip(tokens, scores):
        if piece in skip:
            continue
        local = [
            (piece[:i], piece[i:], score)
            for i in range(1, len(piece))
            if piece[:i] in vocab and piece[i:] in vocab and {piece[:i], piece[i:]}.isdisjoint(skip)
        ]
        found += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in found]


def _sentencepiece(gf: GgufFile):
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    tokens = list(_meta(gf, "tokens"))
    scores = list(_meta(gf, "scores") or [])
    if len(scores) != len(tokens):
        raise LwmError("GGUF sentencepiece tokenizer lacks tokenizer.ggml.scores")
    types = list(_meta(gf, "token_type") or [1] * len(tokens))
    skip = {t for t, k in zip(tokens, types) if k in (CONTROL, UNKNOWN, BYTE, UNUSED, USER_DEFINED)}
    unk_id = _meta(gf, "unknown_token_id")
    prefix = bool(_meta(gf, "add_space_prefix", True))
    tok = Tokenizer(
        BPE(
            vocab={t: i for i, t in enumerate(tokens)},
            merges=spm_merges(tokens, scores, skip),
            unk_token=tokens[unk_id] if unk_id is not None else None,
            fuse_unk=True,
            byte_fallback=True,
            dropout=None,
        )
    )
    # As LLaMA's own (legacy) tokenizer.json and llama.cpp: every text run between special
    # tokens gets the dummy-prefix space, spaces become U+2581; no pre-tokenizer split.
    steps = [normalizers.Prepend("\u2581")] if prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    special = [t for t, k in zip(tokens, types) if k in (CONTROL, UNKNOWN)]
    user = [t for t, k in zip(tokens, types) if k == USER_DEFINED]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    return tok


def tokenizer_from_gguf(gf: GgufFile):
    """A `tokenizers.Tokenizer` for the vocabulary the file embeds (LwmError if it can't)."""
    model = _meta(gf, "model")
    if not _meta(gf, "tokens"):
        raise LwmError("the GGUF file embeds no tokenizer (no tokenizer.ggml.tokens)")
    if model == "gpt2":
        return _byte_level(gf)
    if model == "llama":
        return _sentencepiece(gf)
    raise LwmError(f"GGUF tokenizer model {model!r} is not supported (gpt2 or llama)")


def write_gguf_tokenizer(gf: GgufFile, out_dir: str | pathlib.Path) -> list[str]:
    """Writes tokenizer.json, tokenizer_config.json and generation_config.json into `out_dir`;
    returns the names written. Raises LwmError (writing nothing) when it cannot build one."""
    tok = tokenizer_from_gguf(gf)
    tokens = _meta(gf, "tokens")
    model = _meta(gf, "model")

    def token(key: str) -> str | None:
        i = _meta(gf, key)
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        # llama.cpp and transformers add BOS to a sentencepiece vocabulary that does not say.
        "add_bos_token": bool(_meta(gf, "add_bos_token", model == "llama")),
        "add_eos_token": bool(_meta(gf, "add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    context = gf.arch_key("context_length")
    if context is not None:
        config["model_max_length"] = int(context)
    template = gf.metadata.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = str(template)
    generation: dict[str, Any] = {}
    if _meta(gf, "bos_token_id") is not None:
        generation["bos_token_id"] = int(_meta(gf, "bos_token_id"))
    stops = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        if _meta(gf, key) is not None and int(_meta(gf, key)) not in stops:
            stops.append(int(_meta(gf, key)))
    if stops:
        generation["eos_token_id"] = stops[0] if len(stops) == 1 else stops
    if _meta(gf, "padding_token_id") is not None:
        generation["pad_token_id"] = int(_meta(gf, "padding_token_id"))
    out = pathlib.Path(out_dir)
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", config, indent=2)
    write_json(out / "generation_config.json", generation, indent=2)
    return ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]
