"""SwiGLU feed-forward, optionally blockwise over the sequence (LWM's blockwise FFN).

Blockwise mode runs the FFN on sequence chunks under `jax.checkpoint`, so the `[T, F]` hidden
activation never exists for the whole sequence: peak memory is O(chunk · F), recomputed in backward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lwm.errors import ConfigError
from lwm.layers.params import normal_param
from lwm.sharding import with_logical_constraint


def check_ffn_chunk(seq_len: int, sp: int, chunk: int) -> None:
    """The blockwise feed-forward's rule (`ModelConfig.ffn_chunk_size`): chunks tile each
    sequence shard, so a chunk shorter than the sequence must divide `seq_len / sp`."""
    if chunk and chunk < seq_len and seq_len % (sp * chunk):
        raise ConfigError(
            f"sequence length {seq_len} not divisible by sp {sp} x ffn_chunk_size {chunk}"
        )


class SwiGLU(nnx.Module):
    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        rngs: nnx.Rngs,
        stddev: float,
        param_dtype,
        dtype,
        chunk_size: int = 0,
        mesh=None,
    ):
        self.w_gate = normal_param(
            rngs, (dim, hidden), ("embed", "mlp"), stddev=stddev, dtype=param_dtype
        )
        self.w_up = normal_param(
            rngs, (dim, hidden), ("embed", "mlp"), stddev=stddev, dtype=param_dtype
        )
        self.w_down = normal_param(
            rngs, (hidden, dim), ("mlp", "embed"), stddev=stddev, dtype=param_dtype
        )
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.mesh = mesh

    def _ffn(self, x_btd, w_gate, w_up, w_down):
        gate_btf = jnp.einsum("...d,df->...f", x_btd, w_gate)
        up_btf = jnp.einsum("...d,df->...f", x_btd, w_up)
        h_btf = jax.nn.silu(gate_btf) * up_btf
        if h_btf.ndim == 3:
            h_btf = with_logical_constraint(h_btf, ("batch", "length", "act_mlp"), self.mesh)
        return jnp.einsum("...f,fd->...d", h_btf, w_down)

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        x_btd = x_btd.astype(self.dtype)
        ws = [w[...].astype(self.dtype) for w in (self.w_gate, self.w_up, self.w_down)]
        t = x_btd.shape[1]
        c = self.chunk_size
        if not c or c >= t:
            return self._ffn(x_btd, *ws)
        # Chunk inside each sequence shard ([B, sp, n, c, D], map over n) so every step of the
        # loop stays sharded over sp instead of walking the global sequence device by device.
        sp = self.mesh.shape.get("sp", 1) if self.mesh is not None else 1
        check_ffn_chunk(t, sp, c)
        b, _, d = x_btd.shape
        n = t // (sp * c)
        x_nbscd = x_btd.reshape(b, sp, n, c, d).transpose(2, 0, 1, 3, 4)
        ffn = jax.checkpoint(lambda xc: self._ffn(xc, *ws))
        y_nbscd = jax.lax.map(ffn, x_nbscd)
        return y_nbscd.transpose(1, 2, 0, 3, 4).reshape(b, t, d)
