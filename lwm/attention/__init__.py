"""Attention backends behind one interface, chosen by `AttentionConfig.backend`.

`make_attention(cfg, causal=..., mesh=...)` returns an `AttentionOp` (lwm/attention/base.py):
  - `op(q_btnh, k_btkh, v_btkh, segment_ids_bt=None) -> out_btnh`, on inputs in the op's layout;
  - `op.to_layout(x, axis=1)` / `op.from_layout(x, axis=1)`: the sequence permutation the op expects
    (identity for `dense`/`blockwise`/`ulysses` and for `ring`/`hybrid` with the contiguous
    layout);
  - `op.check(seq_len, mesh)`: the op's shape rules (sp, layout multiple, chunk sizes) as one-line
    ConfigErrors, before any compute; `op.check_heads(num_heads, num_kv_heads, mesh)` the head
    rules (ulysses/hybrid split heads over their all-to-all group). The kernels resolve their
    chunk sizes through the same functions, so the check and the kernel cannot disagree.
The model puts tokens, positions and segment ids into the layout once at entry and restores natural
order once before the output head, so callers always see natural order.

A backend is one module whose op class registers itself (`@register_backend("name")`, base.py);
the built-in ones are imported here so that they are registered before any lookup. Modules of this
package import from `lwm.attention.base`, never from this file.
"""

from lwm.attention import (  # noqa: F401  (register the built-in backends)
    blockwise,
    hybrid,
    ring,
    ulysses,
)
from lwm.attention.base import (
    AttentionOp,
    backend_names,
    make_attention,
    mesh_sp,
    register_backend,
)
from lwm.attention.dense import attention_mask, dense_attention

__all__ = [
    "AttentionOp",
    "attention_mask",
    "backend_names",
    "dense_attention",
    "make_attention",
    "mesh_sp",
    "register_backend",
]
