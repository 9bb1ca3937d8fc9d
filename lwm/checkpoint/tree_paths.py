"""Checkpoint tree helpers: abstract targets, sub-tree key paths, one-line read failures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


def read_failure_reason(e: BaseException) -> str:
    """A one-line, bounded description of a read failure: the innermost cause (tensorstore's
    own message names the array and the byte range; orbax's wrapper only says "see details")."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    text = " ".join(str(e).split()) or type(e).__name__
    text = text.split(" in OCDBT database at ")[0]  # the directory is named by the caller
    return text if len(text) <= 120 else text[:117] + "..."


def abstract_like(tree: Any) -> Any:
    """`jax.ShapeDtypeStruct`s (with shardings) for every array leaf of `tree`."""

    def one(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(one, tree)


def subtree_keys(subtree: str | Sequence[str] | None) -> tuple[str, ...]:
    """`"a/b"` or `("a", "b")` as a key tuple (`()` for the whole tree)."""
    if subtree is None:
        return ()
    if isinstance(subtree, str):
        return tuple(k for k in subtree.split("/") if k)
    return tuple(subtree)


def nest_under(keys: tuple[str, ...], value: Any) -> Any:
    """`value` nested under the key path `keys` (`{k0: {k1: value}}`)."""
    for k in reversed(keys):
        value = {k: value}
    return value
