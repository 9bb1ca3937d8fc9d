"""FLOPs of a training step, MFU, and a measured matmul peak.

"Useful" FLOPs count what the model needs, not what the implementation does: 6 x (matmul params)
per token for forward + backward, plus causal attention (half of the T x T scores), no remat.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lwm.models.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in matmuls per token (embedding gathers excluded)."""
    d, h = cfg.hidden_size, cfg.head_dim
    attn = d * h * (cfg.num_heads * 2 + cfg.num_kv_heads * 2)
    mlp = 3 * d * cfg.intermediate_size
    head = d * (cfg.vocab_size + cfg.vision_vocab_size)
    return cfg.num_layers * (attn + mlp) + head


def train_flops_per_token(cfg: ModelConfig, seq_len: int, *, causal: bool = True) -> float:
    """Forward + backward FLOPs per token (x3 of forward)."""
    dense = 2 * matmul_params(cfg)
    # QK^T and PV: 2 matmuls x 2 flops x T keys x heads x head_dim, halved by the causal mask.
    attn = 4 * seq_len * cfg.num_heads * cfg.head_dim * cfg.num_layers
    if causal:
        attn = attn / 2
    return 3.0 * (dense + attn)


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    return tokens_per_second * flops_per_token / peak_flops if peak_flops > 0 else float("nan")


def measure_matmul_peak(
    mesh: Mesh | None = None, *, n: int = 1024, iters: int = 5, dtype=jnp.float32
) -> float:
    """FLOP/s of the whole mesh on independent per-device `n x n` matmuls (median of `iters`).

    All devices multiply at once, so on simulated CPU devices the figure is what the host's cores
    deliver together: the right denominator for MFU of a step that also uses all devices.
    """
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
    k = len(devices)
    flat = Mesh(np.asarray(devices), ("d",))
    sharding = NamedSharding(flat, PartitionSpec("d"))
    a = jax.device_put(jnp.ones((k, n, n), dtype) / n, sharding)
    b = jax.device_put(jnp.ones((k, n, n), dtype) / n, sharding)
    reps = 4

    @jax.jit
    def f(a, b):
        def body(_, x):
            return jnp.einsum("kij,kjl->kil", x, b)

        return jax.lax.fori_loop(0, reps, body, a)

    f(a, b).block_until_ready()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 * k * reps / float(np.median(times))
