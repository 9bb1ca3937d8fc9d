"""Text tokenizers: one `Tokenizer` protocol, two implementations picked by the file.

- a sentencepiece `.model` (LLaMA-2's, LWM's, or one trained by `train_tokenizer`):
  `lwm.data.sentencepiece_tokenizer.SentencePieceTokenizer`;
- an HF `tokenizer.json` (Llama-3, Qwen2.5, SmolLM2, ...) with its `tokenizer_config.json` /
  `special_tokens_map.json` / `generation_config.json`: `lwm.data.hf_tokenizer.HfTokenizer`.
A directory holding `tokenizer.json` (preferred) or `tokenizer.model` stands for it.

LWM's vision markers `<vision>` / `</vision>` are ordinary text strings for either kind; a model
trained by `train_tokenizer` makes each of them a single piece. End-of-frame / end-of-video are not
text: they are codes in the *vision* vocabulary (`ModelConfig.vision_eof_id` / `vision_eov_id`).
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Protocol

from lwm.data.hf_tokenizer import SIDE_FILES, TOKENIZER_JSON, HfTokenizer
from lwm.data.output_guard import check_out_not_input, check_replaceable_file
from lwm.data.sentencepiece_tokenizer import MODEL_FILE, SentencePieceTokenizer
from lwm.errors import LwmError
from lwm.io import write_bytes

VISION_START = "<vision>"
VISION_END = "</vision>"
VISION_MARKERS = (VISION_START, VISION_END)

TOKENIZER_FILES = (TOKENIZER_JSON, *SIDE_FILES, MODEL_FILE)
"""Every file name a saved tokenizer (`save_tokenizer`) may write into a directory."""

EXPECTED = "a sentencepiece .model, a tokenizer.json or a directory holding one"


class Tokenizer(Protocol):
    """What lwm needs of a text tokenizer. Nothing is added implicitly: `encode` adds BOS / EOS
    only when asked."""

    path: pathlib.Path
    """The main file (`.model` or `tokenizer.json`)."""
    kind: str
    """Either "sentencepiece" or "hf"."""
    vocab_size: int
    """Ids in use, added tokens included."""
    bos_id: int | None
    """None: the model has no BOS (Qwen2.5)."""
    add_bos: bool
    """Whether the model's tokenizer starts plain text with BOS (HF's `tokenizer(text)`)."""
    eos_id: int
    """The primary EOS (appended by `encode(..., eos=True)`)."""
    eos_ids: tuple[int, ...]
    """Every id that ends a reply (the tokenizer's EOS and generation_config.json's)."""
    pad_id: int
    chat_template: str | None
    """The model's Jinja chat template, if it ships one."""
    special_tokens: dict[str, str]
    """bos_token / eos_token / pad_token / unk_token strings (those the model has)."""
    files: dict[str, pathlib.Path]
    """File name -> source: what to copy into a directory to load the same tokenizer from it."""

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`, special tokens skipped."""
        ...

    def id_to_piece(self, i: int) -> str: ...


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer at `path`: a `.model` file, a `tokenizer.json` (any `*.json` name; its side
    files are read from its folder) or a directory holding `tokenizer.json` or
    `tokenizer.model`."""
    p = pathlib.Path(path).expanduser()
    if p.is_dir():
        if (p / TOKENIZER_JSON).is_file():
            return HfTokenizer(p / TOKENIZER_JSON)
        if (p / MODEL_FILE).is_file():
            return SentencePieceTokenizer(p / MODEL_FILE)
        raise LwmError(f"tokenizer directory {p} holds no {TOKENIZER_JSON} or {MODEL_FILE}")
    if not p.exists():
        raise LwmError(f"tokenizer not found: {p} (expected {EXPECTED})")
    if p.suffix == ".json":
        return HfTokenizer(p)
    if p.suffix == ".model":
        return SentencePieceTokenizer(p)
    raise LwmError(f"tokenizer {p}: expected {EXPECTED}")


def save_tokenizer(tok: Tokenizer, out_dir: str | os.PathLike) -> None:
    """Copies `tok.files` into `out_dir` (atomically, file by file), so that
    `load_tokenizer(out_dir)` gives the same tokenizer. A file already there with the same bytes
    is kept; a different one is never overwritten (checked before anything is written)."""
    out = pathlib.Path(out_dir)
    data = {name: pathlib.Path(src).read_bytes() for name, src in tok.files.items()}
    for name, content in data.items():
        dst = out / name
        if dst.exists() and (not dst.is_file() or dst.read_bytes() != content):
            raise LwmError(f"{dst} exists and differs from {tok.files[name]}; not overwritten")
    for name, content in data.items():
        if not (out / name).exists():
            write_bytes(out / name, content)


def _without_input_paths(model: bytes) -> bytes:
    """The serialized model without the training input paths sentencepiece records (metadata
    only), so the same text and settings give the same bytes wherever the files were."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    del proto.trainer_spec.input[:]
    return proto.SerializeToString()


def _is_sentencepiece_model(path: pathlib.Path) -> bool:
    """Whether `path` parses as a serialized sentencepiece model with pieces."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    if path.stat().st_size > 1 << 30:
        return False
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError:
        return False
    return len(proto.pieces) > 0


def _has_text(path: pathlib.Path) -> bool:
    """Whether the file holds anything but whitespace (reads up to the first such byte)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.strip():
                return True
    return False


def train_tokenizer(
    input_files: Sequence[str | os.PathLike],
    vocab_size: int,
    out_path: str | os.PathLike,
    *,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
    max_sentences: int = 2_000_000,
    user_defined_symbols: Sequence[str] = VISION_MARKERS,
    seed: int = 0,
    overwrite: bool = False,
    strict_vocab: bool = False,
) -> SentencePieceTokenizer:
    """Trains a LLaMA-style sentencepiece model (unk=0, bos=1, eos=2, no pad; digits split, byte
    fallback so any text round-trips) and writes it atomically to `out_path`.

    Deterministic: same text, settings and seed give the same model bytes, wherever the files
    are (single-threaded training; the input is sampled with a seeded generator when longer
    than `max_sentences`; the input paths are not recorded).

    A corpus too small for `vocab_size` gives a smaller model (its `vocab_size` says how large);
    `strict_vocab` refuses it instead, writing nothing. `out_path` may not be an input, and
    `overwrite` replaces only a sentencepiece model, never another file.
    """
    import sentencepiece as spm

    files = [pathlib.Path(f) for f in input_files]
    if not files:
        raise LwmError("train_tokenizer: no input files")
    for f in files:
        if not f.is_file():
            raise LwmError(f"tokenizer training input not found: {f}")
        if "," in str(f):
            raise LwmError(f"tokenizer training input path may not contain ',': {f}")
    out = pathlib.Path(out_path)
    check_out_not_input(out, files)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise LwmError(f"{out} exists; pass --overwrite to replace it")
        check_replaceable_file(out, _is_sentencepiece_model, "lwm tokenizer train")
    if not any(_has_text(f) for f in files):
        names = ", ".join(map(str, files))
        raise LwmError(f"tokenizer training input has no text: {names} (empty or only whitespace)")
    # byte fallback reserves 256 pieces, plus unk/bos/eos and the user symbols.
    min_vocab = 256 + 3 + len(user_defined_symbols) + 1
    if vocab_size < min_vocab:
        raise LwmError(f"vocab_size {vocab_size} too small: need at least {min_vocab}")
    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            input=",".join(str(f) for f in files),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=True,
            split_digits=True,
            user_defined_symbols=list(user_defined_symbols),
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=1 << 16,
            num_threads=1,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            hard_vocab_limit=False,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise LwmError(
            f"sentencepiece training failed: {str(e).strip().splitlines()[-1]}"
        ) from None
    model = _without_input_paths(buf.getvalue())
    if strict_vocab:
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(model)
        if len(proto.pieces) < vocab_size:
            raise LwmError(
                f"the corpus supports only {len(proto.pieces)} pieces, not the {vocab_size} "
                "requested (--strict-vocab); nothing written"
            )
    write_bytes(out, model)  # atomic, 0644: shared with the model
    return SentencePieceTokenizer(out)
