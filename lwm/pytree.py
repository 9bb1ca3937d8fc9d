"""Small pytree helpers shared across packages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def key_path_str(path: Sequence[Any]) -> str:
    """A "/"-joined name for a pytree key path (`blocks/0/attn/wq`), the same for dicts, sequences
    and namedtuples (as orbax stores them)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)
