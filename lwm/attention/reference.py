"""Loader for the reference `ringattention==0.1.2` package (dev extra), for tests and benchmarks.

lwm itself never imports this module. The package's `__init__` fails on current jax
(`jax.lib.xla_bridge` is gone), so its `ringattention_jax.py` is loaded directly from the installed
package directory.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
from types import ModuleType
from typing import Any

import jax
from jax.sharding import PartitionSpec as P


@functools.cache
def load_reference() -> ModuleType | None:
    """The reference `ringattention_jax` module, or None when the package is not installed."""
    spec = importlib.util.find_spec("ringattention")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "ringattention_jax.py"
    if not path.is_file():
        return None
    mod_spec = importlib.util.spec_from_file_location("_lwm_reference_ringattention", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def reference_ring_attention(
    mesh: Any,
    *,
    causal: bool = True,
    query_chunk_size: int = 512,
    key_chunk_size: int = 512,
):
    """`f(q_btnh, k_btnh, v_btnh) -> out` running the reference ring attention over mesh axis `sp`
    (contiguous layout, MHA, batch over the other mesh axes when they divide it)."""
    ref = load_reference()
    if ref is None:
        raise ModuleNotFoundError("ringattention is not installed (pip install -e '.[dev]')")
    kwargs = dict(
        causal_block_size=1 if causal else None,
        query_chunk_size=query_chunk_size,
        key_chunk_size=key_chunk_size,
        deterministic=True,
        dropout_rng=None,
        attn_pdrop=0.0,
        dtype=jax.numpy.float32,
        policy=jax.checkpoint_policies.nothing_saveable,
        precision=None,
        prevent_cse=True,
    )

    def local(q, k, v):
        return ref.ring_attention(q, k, v, None, None, None, "sp", True, kwargs)

    spec = P(None, "sp", None, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)
