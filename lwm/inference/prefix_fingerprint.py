"""Fingerprints that tie a saved prefix (`lwm.inference.prefix_store`) to what made it.

- `config_fingerprint(cfg)`: sha256 of the model config's JSON without the fields that only
  choose how the model runs (attention backend and blocks, layer scan, remat, FFN chunking, init
  range) and without `kv_dtype` (checked on its own, with its own message). Compute and parameter
  dtypes, shapes, RoPE and vocabularies are in it. Cheap: checked before any weight is read.
- `params_fingerprint(model)`: sha256 of every parameter's path, shape and dtype plus the values
  of its first and last 8 entries (on a mesh: gathered in one small jitted call, never the whole
  tensor). Two checkpoints of one architecture (a fine-tune, another step, another seed) differ
  in these values; the same checkpoint gives the same digest on any mesh.
- `tokenizer_fingerprint(tok)`: sha256 of the tokenizer's files (`tok.files`: names and bytes).
- `template_fingerprint(template)`: sha256 of its rendered fields (`describe_template`).
- `file_sha256(path)`: a video's bytes, read in 1 MiB blocks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
from typing import Any

import numpy as np

RUNTIME_FIELDS = frozenset(
    {"attention", "scan_layers", "remat_policy", "ffn_chunk_size", "initializer_range", "kv_dtype"}
)
"""Model config fields left out of `config_fingerprint` (they do not change the cache)."""
SAMPLE = 8
"""Entries read from each end of every parameter for `params_fingerprint`."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_sha(value: Any) -> str:
    return _sha(json.dumps(value, sort_keys=True, default=str).encode())


def config_fingerprint(cfg: Any) -> str:
    """sha256 of the model config without its runtime-only fields (`RUNTIME_FIELDS`)."""
    data = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS}
    return _json_sha(data)


def params_fingerprint(model: Any) -> str:
    """sha256 of the parameters' paths, shapes, dtypes and first/last `SAMPLE` values."""
    import jax
    from flax import nnx

    from lwm.pytree import key_path_str

    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    leaves = sorted(
        ((key_path_str(p), x) for p, x in jax.tree_util.tree_leaves_with_path(pure)),
        key=lambda item: item[0],
    )

    arrays = [x for _, x in leaves]
    samples = _ends_fn(getattr(model, "mesh", None), len(arrays))(arrays)
    h = hashlib.sha256()
    for (path, x), s in zip(leaves, samples, strict=True):
        h.update(f"{path}|{tuple(x.shape)}|{np.dtype(x.dtype).name}|".encode())
        h.update(np.asarray(s, np.float32).tobytes())
    return h.hexdigest()


def _ends(xs: list) -> list:
    import jax.numpy as jnp

    out = []
    for x in xs:
        first = x[(0,) * (x.ndim - 1)][:SAMPLE] if x.ndim else x[None]
        last = x[(-1,) * (x.ndim - 1)][-SAMPLE:] if x.ndim else x[None]
        out.append(jnp.concatenate([first, last]).astype(jnp.float32))
    return out


@functools.cache
def _ends_fn(mesh: Any, n: int):
    """`_ends` jitted once per mesh (its samples replicated, so every host can read them)."""
    import jax

    if mesh is None:
        return jax.jit(_ends)
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.jit(_ends, out_shardings=[NamedSharding(mesh, PartitionSpec())] * n)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over the tokenizer's files (sorted by name: each name and its bytes' sha256)."""
    files = getattr(tokenizer, "files", None) or {}
    parts = {name: _sha(pathlib.Path(p).read_bytes()) for name, p in sorted(files.items())}
    if not parts:  # a tokenizer object with no files (tests): its type and size
        parts = {"type": type(tokenizer).__name__, "vocab_size": int(tokenizer.vocab_size)}
    return _json_sha(parts)


def template_fingerprint(template: Any) -> str:
    """sha256 of the template's rendered fields (chat template source, system, text pieces)."""
    from lwm.inference.prompts import describe_template

    return _json_sha(describe_template(template))


def file_sha256(path: str | pathlib.Path, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read `block` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
