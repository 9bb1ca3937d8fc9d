"""JSON read from outside (jsonl records, metadata and tokenizer side files): parsed with the
nesting bounded, so a hostile or broken file is a one-line error, never a RecursionError."""

from __future__ import annotations

import json
from typing import Any


class JsonTooDeep(ValueError):
    """A JSON text nested deeper than Python's parser can follow."""


def loads_bounded(text: str | bytes) -> Any:
    """`json.loads(text)`; nesting past the interpreter's recursion limit (about 1000 levels)
    raises JsonTooDeep (a ValueError) instead of RecursionError. Malformed JSON raises
    json.JSONDecodeError as usual."""
    try:
        return json.loads(text)
    except RecursionError:
        raise JsonTooDeep("nested deeper than about 1000 levels") from None
