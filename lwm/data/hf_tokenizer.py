"""An HF `tokenizer.json` tokenizer (Llama-3, Qwen2.5, SmolLM2, ...) on the `tokenizers` library.

One of the two implementations of `lwm.data.tokenizer.Tokenizer`. The special tokens are read as
transformers reads them, from the files beside `tokenizer.json`: `tokenizer_config.json`
(`bos_token` / `eos_token` / `pad_token` / `unk_token` as strings, `{"content": ...}` dicts or
null; `add_bos_token`; `chat_template`), `special_tokens_map.json` (older saves) and
`generation_config.json` (`eos_token_id`, an int or a list: Llama-3 stops on `<|eot_id|>` and
`<|end_of_text|>`). transformers is not imported at run time.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

from lwm.data.json_input import loads_bounded
from lwm.errors import LwmError

TOKENIZER_JSON = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SIDE_FILES = (CONFIG_FILE, SPECIAL_TOKENS_FILE, GENERATION_CONFIG_FILE, CHAT_TEMPLATE_FILE)
"""Files beside `tokenizer.json` that belong to the tokenizer (copied with it when present)."""

SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


def read_json_file(path: pathlib.Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when the file is absent; malformed: one-line LwmError."""
    if not path.is_file():
        return {}
    try:
        data = loads_bounded(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LwmError(f"{path}: not valid JSON (not UTF-8)") from None
    except ValueError as e:  # json.JSONDecodeError, or JsonTooDeep
        why = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise LwmError(f"{path}: not valid JSON ({why})") from None
    if not isinstance(data, dict):
        raise LwmError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def token_string(value: Any, where: str) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, {"content": ...} or null."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise LwmError(f"{where}: expected a token string, {{'content': ...}} or null, got {value!r}")


def _id_list(value: Any, where: str) -> list[int]:
    """generation_config.json's `eos_token_id` / `bos_token_id`: an int, a list of ints or null."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
        raise LwmError(f"{where}: expected a token id or a list of them, got {value!r}")
    return list(items)


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (applied when the config asks, never for BPE)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'")):
        text = text.replace(a, b)
    for suffix in ("n't", "'m", "'s", "'ve", "'re"):
        text = text.replace(" " + suffix, suffix)
    return text


class HfTokenizer:
    """`tokenizer.json` plus the special-token files beside it. Nothing is added implicitly:
    `encode(text)` is transformers' `tokenizer(text, add_special_tokens=False)`; special-token
    strings in the text (`<|im_start|>`) become their ids, as in transformers."""

    kind = "hf"

    def __init__(self, path: str | os.PathLike):
        from tokenizers import Tokenizer as RustTokenizer

        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise LwmError(f"tokenizer not found: {self.path}")
        try:
            self._tok = RustTokenizer.from_file(str(self.path))
        except Exception as e:  # noqa: BLE001 - the Rust side raises a bare Exception
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LwmError(f"{self.path} is not a tokenizer.json: {why}") from None
        self._tok.encode_special_tokens = False  # parse `<|im_start|>` in text, as transformers
        folder = self.path.parent
        self._config = read_json_file(folder / CONFIG_FILE)
        special_map = read_json_file(folder / SPECIAL_TOKENS_FILE)
        gen = read_json_file(folder / GENERATION_CONFIG_FILE)

        self.special_tokens: dict[str, str] = {}
        """bos/eos/pad/unk token strings (those the model has), for chat templates."""
        declared: set[str] = set()
        # As transformers: a config with `added_tokens_decoder` (any modern save) is the only
        # source; an older one is overridden by special_tokens_map.json.
        sources = [(special_map, SPECIAL_TOKENS_FILE), (self._config, CONFIG_FILE)]
        if "added_tokens_decoder" in self._config:
            sources = sources[1:]
        for name in SPECIAL_NAMES:
            for source, where in sources:
                if name in source:
                    declared.add(name)
                    value = token_string(source[name], f"{folder / where} {name}")
                    if value is not None:
                        self.special_tokens[name] = value
                    break
        if "unk_token" not in self.special_tokens:
            unk = getattr(self._tok.model, "unk_token", None)
            if isinstance(unk, str) and self._tok.token_to_id(unk) is not None:
                self.special_tokens["unk_token"] = unk

        gen_where = folder / GENERATION_CONFIG_FILE
        gen_eos = _id_list(gen.get("eos_token_id"), f"{gen_where} eos_token_id")
        gen_bos = _id_list(gen.get("bos_token_id"), f"{gen_where} bos_token_id")
        self.bos_id: int | None = self._special_id("bos_token")
        if self.bos_id is None and "bos_token" not in declared and gen_bos:
            self.bos_id = gen_bos[0]  # only when no tokenizer file says "no BOS" (Qwen: null)
        eos_id = self._special_id("eos_token")
        if eos_id is None:
            if not gen_eos:
                raise LwmError(f"tokenizer {self.path} defines no EOS token ({CONFIG_FILE})")
            eos_id = gen_eos[0]
        self.eos_id: int = eos_id
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys([eos_id, *gen_eos]))
        """Every id that ends a reply: the tokenizer's EOS and generation_config's."""
        pad_id = self._special_id("pad_token")
        self.pad_id: int = pad_id if pad_id is not None else 0
        """The pad token's id, or 0 when there is none (padded positions are masked anyway)."""
        for i in (*self.eos_ids, self.bos_id):
            if i is not None and not 0 <= i < self.vocab_size:
                raise LwmError(f"{gen_where}: token id {i} outside the vocabulary")
        self.add_bos: bool = self._adds_bos()
        """Whether transformers' `tokenizer(text)` starts with BOS."""
        self._clean_up = bool(self._config.get("clean_up_tokenization_spaces")) and (
            type(self._tok.model).__name__ != "BPE"
            or bool(
                self._config.get(
                    "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"
                )
            )
        )
        self.chat_template: str | None = self._chat_template()
        """The model's Jinja chat template (`chat_template.jinja`, else tokenizer_config.json)."""

    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        if token is None:
            return None
        i = self._tok.token_to_id(token)
        if i is None:
            raise LwmError(f"tokenizer {self.path}: {name} {token!r} is not in the vocabulary")
        return i

    def _adds_bos(self) -> bool:
        if self.bos_id is None:
            return False
        if "add_bos_token" in self._config:  # transformers rebuilds the post-processor from it
            return bool(self._config["add_bos_token"])
        with_specials = self._tok.encode("a", add_special_tokens=True).ids
        without = self._tok.encode("a", add_special_tokens=False).ids
        return len(with_specials) > len(without) and with_specials[0] == self.bos_id

    def _chat_template(self) -> str | None:
        jinja = self.path.parent / CHAT_TEMPLATE_FILE
        if jinja.is_file():
            try:
                return jinja.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise LwmError(f"{jinja}: not UTF-8 text") from None
        value = self._config.get("chat_template")
        where = f"{self.path.parent / CONFIG_FILE} chat_template"
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list):
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
            template = named.get("default")
            if template is None or isinstance(template, str):
                return template
        raise LwmError(f"{where}: expected a string or a list of {{name, template}} entries")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def files(self) -> dict[str, pathlib.Path]:
        out = {TOKENIZER_JSON: self.path}
        for name in SIDE_FILES:
            if (self.path.parent / name).is_file():
                out[name] = self.path.parent / name
        return out

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=True)
        return _clean_up_tokenization(text) if self._clean_up else text

    def id_to_piece(self, i: int) -> str:
        piece = self._tok.id_to_token(int(i))
        if piece is None:
            raise LwmError(f"token id {i} outside the vocabulary [0, {self.vocab_size})")
        return piece

    def __repr__(self) -> str:
        return f"HfTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"
