"""LWM's field syntax: how the keys of one example become tokens, loss mask and vision mask.

`fields="[vision+question],answer"`:
- comma-separated fields are tokenized separately and concatenated at token level;
- `a+b` joins the subfields' text with `subfield_separator` before tokenizing;
- a field in `[...]` gets loss mask 0 (a prompt: seen, not trained on);
- the literal fields `<|bos|>` / `<|eos|>` insert the tokenizer's BOS / EOS (a tokenizer without
  BOS, like Qwen2.5's, refuses `<|bos|>`);
- a (sub)field whose name contains `vision` holds pre-tokenized VQ codes (a flat list of ints,
  a multiple of `tokens_per_frame` long, or a list of frames); at most `max_n_frames` frames are
  kept, evenly spaced, first and last included. It becomes `<vision>` (text), each frame's codes
  followed by end-of-frame (end-of-video after the last frame), then `</vision>` (text); the codes
  and the frame markers set `vision_mask`.
- a text (sub)field may also hold a list of token ids (pre-tokenized), checked against the vocab.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lwm.data.tokenizer import VISION_END, VISION_START, Tokenizer
from lwm.errors import LwmError

BOS_FIELD = "<|bos|>"
EOS_FIELD = "<|eos|>"


@dataclasses.dataclass(frozen=True)
class Field:
    """One comma-separated field of the spec."""

    subfields: tuple[str, ...]
    """Example keys joined with the separator (one key for a plain field; empty for literals)."""
    masked: bool
    """True for `[...]` fields: loss mask 0."""
    literal: str | None = None
    """`<|bos|>` or `<|eos|>` for literal fields."""


def parse_fields(spec: str) -> tuple[Field, ...]:
    """Parses `"[vision+question],answer"`; raises LwmError on malformed specs."""
    if not spec or not spec.strip():
        raise LwmError("empty fields spec")
    out = []
    for raw in spec.split(","):
        item = raw.strip()
        masked = item.startswith("[") and item.endswith("]")
        if masked:
            item = item[1:-1].strip()
        if not item or "[" in item or "]" in item:
            raise LwmError(f"malformed field {raw!r} in fields spec {spec!r}")
        if item in (BOS_FIELD, EOS_FIELD):
            out.append(Field((), masked, literal=item))
            continue
        subs = tuple(s.strip() for s in item.split("+"))
        if any(not s for s in subs):
            raise LwmError(f"empty subfield in {raw!r} (fields spec {spec!r})")
        out.append(Field(subs, masked))
    return tuple(out)


def field_keys(fields: Sequence[Field]) -> tuple[str, ...]:
    """Example keys the spec reads, in order, without duplicates."""
    keys: dict[str, None] = {}
    for f in fields:
        keys.update(dict.fromkeys(f.subfields))
    return tuple(keys)


def is_vision_key(name: str) -> bool:
    return "vision" in name


def subsample_frames(n_frames: int, max_n_frames: int) -> np.ndarray:
    """Indices of at most `max_n_frames` evenly spaced frames, first and last included."""
    if max_n_frames <= 0 or n_frames <= max_n_frames:
        return np.arange(n_frames)
    return np.unique(np.round(np.linspace(0, n_frames - 1, max_n_frames)).astype(np.int64))


@dataclasses.dataclass
class EncodedExample:
    tokens: np.ndarray
    """int32 [L]: text ids where vision_mask is 0, vision codes where it is 1."""
    loss_mask: np.ndarray
    """uint8 [L]: 1 where the token is a training target."""
    vision_mask: np.ndarray
    """uint8 [L]: 1 where the token is a vision code (incl. end-of-frame / end-of-video)."""

    def __len__(self) -> int:
        return len(self.tokens)


class ExampleEncoder:
    """Turns one example (a mapping of field name -> str / list of ints) into an EncodedExample."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        fields: str | Sequence[Field],
        *,
        subfield_separator: str = " ",
        add_bos: bool | None = None,
        add_eos: bool = True,
        max_n_frames: int = 0,
        tokens_per_frame: int = 256,
        vision_eof_id: int = 8192,
        vision_eov_id: int = 8193,
    ):
        self.tokenizer = tokenizer
        self.fields = parse_fields(fields) if isinstance(fields, str) else tuple(fields)
        self.subfield_separator = subfield_separator
        # Default: start examples with BOS where the model's own tokenizer does (LLaMA, Llama-3;
        # not Qwen2.5 or SmolLM2).
        self.add_bos = tokenizer.add_bos if add_bos is None else add_bos
        if tokenizer.bos_id is None:
            if add_bos:
                raise LwmError(
                    f"tokenizer {tokenizer.path} has no BOS token to start examples with"
                )
            if any(f.literal == BOS_FIELD for f in self.fields):
                raise LwmError(
                    f"fields spec asks for {BOS_FIELD} but tokenizer "
                    f"{tokenizer.path} has no BOS token"
                )
            self.add_bos = False
        self.add_eos = add_eos
        self.max_n_frames = max_n_frames
        self.tokens_per_frame = tokens_per_frame
        self.vision_eof_id = vision_eof_id
        self.vision_eov_id = vision_eov_id
        # VQ codes proper lie below the first special vision code.
        self.vision_codebook_size = min(vision_eof_id, vision_eov_id)
        self._vision_start = np.asarray(tokenizer.encode(VISION_START), np.int32)
        self._vision_end = np.asarray(tokenizer.encode(VISION_END), np.int32)

    @property
    def keys(self) -> tuple[str, ...]:
        return field_keys(self.fields)

    def __call__(self, example: Mapping[str, Any]) -> EncodedExample:
        toks: list[np.ndarray] = []
        loss: list[np.ndarray] = []
        vis: list[np.ndarray] = []

        def emit(ids: Sequence[int] | np.ndarray, mask: int, vision: int) -> None:
            ids = np.asarray(ids, np.int32).reshape(-1)
            toks.append(ids)
            loss.append(np.full(len(ids), mask, np.uint8))
            vis.append(np.full(len(ids), vision, np.uint8))

        if self.add_bos:
            emit([self.tokenizer.bos_id], 0, 0)
        for f in self.fields:
            mask = 0 if f.masked else 1
            if f.literal is not None:
                tid = self.tokenizer.bos_id if f.literal == BOS_FIELD else self.tokenizer.eos_id
                emit([tid], mask, 0)
                continue
            pending_text: list[str] = []
            for key in f.subfields:
                if key not in example:
                    raise LwmError(f"missing field {key!r}")
                value = example[key]
                if is_vision_key(key):
                    self._flush_text(pending_text, mask, emit)
                    self._emit_vision(key, value, mask, emit)
                elif isinstance(value, str):
                    pending_text.append(value)
                elif _is_int_list(value):
                    self._flush_text(pending_text, mask, emit)
                    emit(self._check_text_ids(key, value), mask, 0)
                else:
                    raise LwmError(
                        f"field {key!r} must be a string or a list of token ids, "
                        f"got {type(value).__name__}"
                    )
            self._flush_text(pending_text, mask, emit)
        if self.add_eos:
            emit([self.tokenizer.eos_id], 1, 0)
        if not toks:
            empty = np.zeros(0, np.int32)
            return EncodedExample(empty, empty.astype(np.uint8), empty.astype(np.uint8))
        return EncodedExample(np.concatenate(toks), np.concatenate(loss), np.concatenate(vis))

    def _flush_text(self, pending: list[str], mask: int, emit) -> None:
        if pending:
            emit(self.tokenizer.encode(self.subfield_separator.join(pending)), mask, 0)
            pending.clear()

    def _check_text_ids(self, key: str, value: Sequence[int]) -> np.ndarray:
        ids = np.asarray(value, np.int64)
        bad = (ids < 0) | (ids >= self.tokenizer.vocab_size)
        if bad.any():
            raise LwmError(
                f"field {key!r}: token id {int(ids[bad][0])} outside the text vocabulary "
                f"[0, {self.tokenizer.vocab_size})"
            )
        return ids.astype(np.int32)

    def _emit_vision(self, key: str, value: Any, mask: int, emit) -> None:
        frames = self._frames(key, value)
        idx = subsample_frames(len(frames), self.max_n_frames)
        emit(self._vision_start, mask, 0)
        for j, i in enumerate(idx):
            marker = self.vision_eov_id if j == len(idx) - 1 else self.vision_eof_id
            emit(np.append(frames[i], marker), mask, 1)
        emit(self._vision_end, mask, 0)

    def _frames(self, key: str, value: Any) -> list[np.ndarray]:
        if not isinstance(value, list) or not value:
            raise LwmError(f"vision field {key!r} must be a non-empty list of VQ codes or frames")
        if all(isinstance(v, list) for v in value):
            frames = [np.asarray(v, np.int64) for v in value]
            if any(f.ndim != 1 or f.size == 0 or not _ints(f) for f in frames):
                raise LwmError(f"vision field {key!r}: frames must be non-empty lists of ints")
        elif _is_int_list(value) and value[-1] == self.vision_eov_id:
            # `lwm video tokenize` layout: each frame's codes, then end-of-frame; end-of-video
            # after the last frame. Split at the markers (re-added after subsampling).
            flat = np.asarray(value, np.int64)
            ends = np.flatnonzero((flat == self.vision_eof_id) | (flat == self.vision_eov_id))
            if np.any(flat[ends[:-1]] != self.vision_eof_id):
                raise LwmError(f"vision field {key!r}: end-of-video code before the last frame")
            frames = [f[:-1] for f in np.split(flat, ends + 1)[:-1]]
            if any(f.size == 0 for f in frames):
                raise LwmError(f"vision field {key!r}: a frame without codes")
        elif _is_int_list(value):
            flat = np.asarray(value, np.int64)
            if flat.size % self.tokens_per_frame:
                raise LwmError(
                    f"vision field {key!r}: {flat.size} codes is not a multiple of "
                    f"tokens_per_frame={self.tokens_per_frame}"
                )
            frames = list(flat.reshape(-1, self.tokens_per_frame))
        else:
            raise LwmError(f"vision field {key!r} must hold ints or lists of ints")
        for f in frames:
            bad = (f < 0) | (f >= self.vision_codebook_size)
            if bad.any():
                raise LwmError(
                    f"vision field {key!r}: code {int(f[bad][0])} outside the vision codebook "
                    f"[0, {self.vision_codebook_size})"
                )
        return frames


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def _ints(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.integer)
