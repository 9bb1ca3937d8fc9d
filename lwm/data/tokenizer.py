"""Text tokenizer: any sentencepiece model (LLaMA-2's or one trained here), with explicit BOS/EOS.

LWM's vision markers `<vision>` / `</vision>` are ordinary text strings for this tokenizer; a model
trained by `train_tokenizer` makes each of them a single piece. End-of-frame / end-of-video are not
text: they are codes in the *vision* vocabulary (`ModelConfig.vision_eof_id` / `vision_eov_id`).
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Iterable, Sequence

from lwm.errors import LwmError
from lwm.io import write_bytes

VISION_START = "<vision>"
VISION_END = "</vision>"
VISION_MARKERS = (VISION_START, VISION_END)


class Tokenizer:
    """A sentencepiece model. Nothing is added implicitly: pass `bos=`/`eos=` to `encode`."""

    def __init__(self, path: str | os.PathLike):
        import sentencepiece as spm

        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise LwmError(f"tokenizer model not found: {self.path}")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.load(str(self.path))
        except (OSError, RuntimeError) as e:
            raise LwmError(f"{self.path} is not a sentencepiece model: {e}") from None
        if self._sp.bos_id() < 0 or self._sp.eos_id() < 0:
            raise LwmError(f"tokenizer {self.path} defines no BOS/EOS piece")

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        """The model's pad piece, or 0 (LLaMA-2 has none; padded positions are masked anyway)."""
        pad = self._sp.pad_id()
        return pad if pad >= 0 else 0

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._sp.encode(text)
        if bos:
            ids = [self.bos_id, *ids]
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encodes many strings in one call (sentencepiece batches internally)."""
        return self._sp.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def _without_input_paths(model: bytes) -> bytes:
    """The serialized model without the training input paths sentencepiece records (metadata
    only), so the same text and settings give the same bytes wherever the files were."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    del proto.trainer_spec.input[:]
    return proto.SerializeToString()


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
) -> Tokenizer:
    """Trains a LLaMA-style sentencepiece model (unk=0, bos=1, eos=2, no pad; digits split, byte
    fallback so any text round-trips) and writes it atomically to `out_path`.

    Deterministic: same text, settings and seed give the same model bytes, wherever the files
    are (single-threaded training; the input is sampled with a seeded generator when longer
    than `max_sentences`; the input paths are not recorded).
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
    if out.exists() and not overwrite:
        raise LwmError(f"{out} exists; pass --overwrite to replace it")
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
    write_bytes(out, _without_input_paths(buf.getvalue()))  # atomic, 0644: shared with the model
    return Tokenizer(out)
