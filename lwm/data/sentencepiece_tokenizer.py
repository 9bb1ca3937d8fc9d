"""A sentencepiece tokenizer (LLaMA-2's, LWM's, or one trained by `lwm tokenizer train`).

One of the two implementations of `lwm.data.tokenizer.Tokenizer`; `load_tokenizer` picks it for a
`.model` file or a directory holding `tokenizer.model`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Sequence

from lwm.errors import LwmError

MODEL_FILE = "tokenizer.model"
"""The name a sentencepiece model is stored under beside a dataset, workdir or checkpoint."""


class SentencePieceTokenizer:
    """A sentencepiece model. Nothing is added implicitly: pass `bos=`/`eos=` to `encode`."""

    kind = "sentencepiece"
    chat_template: str | None = None
    add_bos = True  # LLaMA-2's tokenizer(text) starts with BOS

    def __init__(self, path: str | os.PathLike):
        import sentencepiece as spm

        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise LwmError(f"tokenizer model not found: {self.path}")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.load(str(self.path))
        except (OSError, RuntimeError) as e:
            why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise LwmError(f"{self.path} is not a sentencepiece model: {why}") from None
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
    def eos_ids(self) -> tuple[int, ...]:
        return (self.eos_id,)

    @property
    def pad_id(self) -> int:
        """The model's pad piece, or 0 (LLaMA-2 has none; padded positions are masked anyway)."""
        pad = self._sp.pad_id()
        return pad if pad >= 0 else 0

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def special_tokens(self) -> dict[str, str]:
        out = {
            "bos_token": self.id_to_piece(self.bos_id),
            "eos_token": self.id_to_piece(self.eos_id),
        }
        if self._sp.unk_id() >= 0:
            out["unk_token"] = self.id_to_piece(self._sp.unk_id())
        if self._sp.pad_id() >= 0:
            out["pad_token"] = self.id_to_piece(self._sp.pad_id())
        return out

    @property
    def files(self) -> dict[str, pathlib.Path]:
        return {MODEL_FILE: self.path}

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
        return f"SentencePieceTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"
