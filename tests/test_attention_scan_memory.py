"""Regression: blockwise/ring attention under a scan over layers keeps O(chunk^2) memory.

JAX's scan partial evaluation used to hoist the kernels' index-only masks out of the layer loop,
materialising every chunk pair's mask at once (O(T^2)); see `blockwise._loop_variant`. Checked
with XLA's memory analysis of the compiled gradient: the scanned stack must not need more
temporary memory than the unrolled one (it needed ~12x / ~23x more before the fix).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lwm.attention.blockwise import blockwise_attention
from lwm.attention.ring import ring_attention
from lwm.sharding import make_mesh

T, N, H, LAYERS = 2048, 4, 16, 2


def _temp_bytes(attn, sharding=None) -> tuple[int, int]:
    def layer(x, w):
        q = (x @ w).reshape(1, T, N, H)
        return attn(q).reshape(1, T, N * H)

    def unrolled(ws, x):
        for i in range(LAYERS):
            x = layer(x, ws[i])
        return jnp.sum(x**2)

    def scanned(ws, x):
        return jnp.sum(jax.lax.scan(lambda x, w: (layer(x, w), None), x, ws)[0] ** 2)

    ws = jax.ShapeDtypeStruct((LAYERS, N * H, N * H), jnp.float32)
    x = jax.ShapeDtypeStruct((1, T, N * H), jnp.float32, sharding=sharding)
    sizes = []
    for f in (unrolled, scanned):
        compiled = jax.jit(jax.grad(f)).lower(ws, x).compile()
        sizes.append(compiled.memory_analysis().temp_size_in_bytes)
    return sizes[0], sizes[1]


@pytest.mark.parametrize("backend", ["blockwise", "ring"])
def test_layer_scan_does_not_materialise_masks(backend):
    if backend == "blockwise":
        loop, scan = _temp_bytes(
            lambda q: blockwise_attention(q, q, q, query_chunk_size=128, key_chunk_size=128)
        )
    else:
        mesh = make_mesh(dict(sp=8))
        loop, scan = _temp_bytes(
            lambda q: ring_attention(q, q, q, mesh=mesh, query_chunk_size=64, key_chunk_size=64),
            NamedSharding(mesh, P(None, "sp")),
        )
    # All chunk pairs' fp32 scores would be T*T*N*4 bytes; one chunk pair's is ~64 KiB.
    assert scan <= 1.25 * loop, (loop, scan)
