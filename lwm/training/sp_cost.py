"""What each sequence-parallel attention scheme sends: bytes per device per layer, and rounds.

For one attention layer, one micro-batch, on one device of a mesh with `sp = P` sequence-parallel
devices. Symbols (all per device): B rows (batch / (dp x fsdp)), T the sequence length, L = T / P
the rows held, N and K the query and kv heads held (after tp; kv heads that tp does not divide are
sliced to the ones the local query heads need, as the ring does), H the head dim, e the bytes of
the compute dtype; fp32 gradients travel as 4 bytes. `s` = 4 B L: the int32 segment ids of the
rows held (the train step always packs, so they travel with the keys they mask).

ring (lwm/attention/ring_driver.py; K/V never repeated to N heads, no send skipped: causal
skipping saves compute, not rotations):
    forward  = (P - 1) (2 B L K H e + s)                 P - 1 rounds (K, V, segment ids)
    backward = (P - 1) (2 B L K H e + s) + P 2 B L K H 4  2P - 1 rounds (the block again; the
               fp32 dK/dV accumulators ride with it and take one more hop home)
ulysses (all-to-all over the P devices: sequence-sharded -> head-sharded and back; each device
attends the whole sequence for N / P query heads). Under GQA with P > K the kv heads are repeated
to K' = P before sending (each device needs one); otherwise K' = K. An all-to-all keeps 1 / P of
its operand, so a device sends (P - 1) / P of it:
    forward  = (P - 1) / P (2 N + 2 K') B L H e + (P - 1) s   q, k, v in (one all-to-all), out
                                                              back (one), segment ids all-gathered
    backward = (P - 1) / P (2 N + 2 K') B L H e               dout in, dq, dk, dv back (2 rounds)
    caps: N divisible by P; K divisible by P, or P by K.
hybrid (an inner all-to-all group of U devices x an outer zigzag ring of R = P / U): the
all-to-all of ulysses over U (kv heads repeated to K'' = U when U > K), then the ring over R on
the U-times-longer, head-sliced rows (U L rows, N / U and K'' / U heads; segment ids gathered
over the group first):
    forward  = (U - 1) / U (2 N + 2 K'') B L H e + (U - 1) s + (R - 1) (2 B L K'' H e + U s)
    backward = (U - 1) / U (2 N + 2 K'') B L H e + (R - 1) (2 B L K'' H e + U s) + R 2 B L K'' H 4
    caps: U divides P; N divisible by U; K divisible by U, or U by K.

The ring's K/V bytes fall with the hybrid by (R - 1) / (P - 1) (K'' = K) while its all-to-all
bytes do not grow with P; ulysses' bytes do not grow with P at all, but it is capped by the heads.
With rematerialised blocks (`remat_policy` other than `none`) the backward pass recomputes the
forward, so a train step sends the forward twice (`train_bytes`); a step sends `train_bytes` x
layers x grad_accum.

Checked against the compiled HLO's `collective-permute` / `all-to-all` / int32 `all-gather` bytes
(lwm/training/hlo_collectives.py, tests/test_sp_cost.py): equal, except where XLA sends less than
the algorithm asks: (1) the forward's segment-id sends are the same in every layer and XLA hoists
them out of a scanned layer stack (sent once a step; 4 bytes a token against K/V's 2 K H e);
(2) a ring of 2 runs one-step scans, which XLA inlines, and then sends the backward's one rotation
of the block with the (recomputed) forward's: one block less per layer. On CPU, XLA sends bf16 as
f32, so a bf16 program's CPU HLO shows e = 4 where an accelerator sends e = 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

SCHEMES = ("ring", "ulysses", "hybrid")
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclasses.dataclass(frozen=True)
class AttentionShape:
    """The per-device inputs of one attention call under sequence parallelism."""

    batch: int
    """Rows per device (the micro-batch / (dp x fsdp))."""
    seq_len: int
    """The whole sequence (T)."""
    sp: int
    """Sequence-parallel devices (P)."""
    heads: int
    """Query heads per device (N, after tp)."""
    kv_heads: int
    """Key/value heads per device (K, after tp; sliced as the ring slices them)."""
    head_dim: int
    dtype_bytes: int
    """Bytes of one element of q/k/v (the compute dtype)."""
    segment_ids: bool = True
    """Whether int32 segment ids travel with the keys (the train step always packs)."""

    @property
    def local_len(self) -> int:
        return self.seq_len // self.sp


@dataclasses.dataclass(frozen=True)
class SpCost:
    """One scheme's traffic for one attention layer: per device, forward and backward."""

    scheme: str
    sp: int
    ulysses: int
    """The all-to-all group (1: ring only; sp: ulysses only)."""
    possible: bool
    why: str = ""
    """Why the scheme cannot run this shape (empty when it can)."""
    forward_bytes: int = 0
    backward_bytes: int = 0
    forward_rounds: int = 0
    """Collectives issued one after another in the forward (a round may move several arrays)."""
    backward_rounds: int = 0
    recompute: bool = False
    """Blocks are rematerialised: the backward pass runs the forward (and its sends) again."""

    @property
    def train_bytes(self) -> int:
        """Bytes of one forward + backward of a train step (with the recomputed forward)."""
        return self.forward_bytes * (2 if self.recompute else 1) + self.backward_bytes

    @property
    def train_rounds(self) -> int:
        return self.forward_rounds * (2 if self.recompute else 1) + self.backward_rounds

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(train_bytes=self.train_bytes, train_rounds=self.train_rounds)
        return d


def _kv_group_error(kv_heads: int, group: int) -> str:
    if kv_heads % group and group % kv_heads:
        return f"kv heads {kv_heads} and the all-to-all group {group}: neither divides the other"
    return ""


def _repeated_kv(kv_heads: int, group: int) -> int:
    """kv heads sent through an all-to-all over `group` (repeated to the group when fewer)."""
    return max(kv_heads, group)


def _ring_bytes(s: AttentionShape, ring: int, rows: int, kv_heads: int) -> tuple[int, int]:
    """(forward, backward) bytes of a ring of `ring` devices on blocks of `rows` x `kv_heads`."""
    kv = 2 * s.batch * rows * kv_heads * s.head_dim
    seg = 4 * s.batch * rows if s.segment_ids else 0
    block = kv * s.dtype_bytes + seg
    if ring == 1:
        return 0, 0
    return (ring - 1) * block, (ring - 1) * block + ring * kv * 4


def _a2a_bytes(s: AttentionShape, group: int, kv_heads: int) -> int:
    """Bytes of one direction's four all-to-alls (q/dout, k, v, out/dq ... ) over `group`."""
    elems = (2 * s.heads + 2 * kv_heads) * s.batch * s.local_len * s.head_dim
    return elems * s.dtype_bytes * (group - 1) // group


def _seg_gather(s: AttentionShape, group: int) -> int:
    return (group - 1) * 4 * s.batch * s.local_len if s.segment_ids and group > 1 else 0


def ring_cost(s: AttentionShape, *, recompute: bool = False) -> SpCost:
    """The ring over all `sp` devices (lwm/attention/ring_driver.py)."""
    fwd, bwd = _ring_bytes(s, s.sp, s.local_len, s.kv_heads)
    rounds = s.sp - 1
    return SpCost("ring", s.sp, 1, True, "", fwd, bwd, rounds, 2 * rounds + (s.sp > 1), recompute)


def hybrid_cost(s: AttentionShape, ulysses: int, *, recompute: bool = False) -> SpCost:
    """An all-to-all group of `ulysses` devices x a ring over the sp / ulysses groups
    (`ulysses == sp`: the ulysses scheme; 1: the ring)."""
    u, p = ulysses, s.sp
    name = "ulysses" if u == p and p > 1 else "ring" if u == 1 else "hybrid"
    why = ""
    if u < 1 or p % u:
        why = f"the all-to-all group {u} does not divide sp {p}"
    elif s.heads % u:
        why = f"query heads {s.heads} not divisible by the all-to-all group {u}"
    else:
        why = _kv_group_error(s.kv_heads, u)
    if why:
        return SpCost(name, p, u, False, why, recompute=recompute)
    if u == 1:
        return ring_cost(s, recompute=recompute)
    kv = _repeated_kv(s.kv_heads, u)
    a2a, seg = _a2a_bytes(s, u, kv), _seg_gather(s, u)
    ring = p // u
    ring_fwd, ring_bwd = _ring_bytes(s, ring, u * s.local_len, kv // u)
    has_seg = int(s.segment_ids)
    fwd_rounds = 2 + has_seg + (ring - 1)
    bwd_rounds = 2 + (2 * (ring - 1) + 1 if ring > 1 else 0)
    return SpCost(
        name,
        p,
        u,
        True,
        "",
        a2a + seg + ring_fwd,
        a2a + ring_bwd,
        fwd_rounds,
        bwd_rounds,
        recompute,
    )


def ulysses_cost(s: AttentionShape, *, recompute: bool = False) -> SpCost:
    """All-to-all over all `sp` devices."""
    cost = hybrid_cost(s, s.sp, recompute=recompute)
    return dataclasses.replace(cost, scheme="ulysses")


def default_ulysses(s: AttentionShape) -> int:
    """The hybrid's default all-to-all group: the largest U with 1 < U < sp that divides sp and
    the query heads and fits the kv heads (one divides the other); 0 when there is none."""
    for u in range(s.sp - 1, 1, -1):
        if hybrid_cost(s, u).possible:
            return u
    return 0


def attention_shape(
    model: Any, seq_len: int, micro_batch: int, mesh: Mapping[str, int], scheme: str = "ring"
) -> AttentionShape:
    """The per-device attention shape of `model` (a ModelConfig) under `scheme` on a mesh
    `{axis: size}`. Heads go over tp as the rules table shards them; kv heads that tp does not
    divide are sliced to the ones the local query heads need by the ring, while ulysses and
    hybrid then keep all heads on every device (lwm/attention/ulysses.py `head_split`)."""
    tp, sp = int(mesh.get("tp", 1)), int(mesh.get("sp", 1))
    n, k = model.num_heads, model.num_kv_heads
    n_local, k_local = n, k
    if tp > 1 and n % tp == 0 and k % tp == 0:
        n_local, k_local = n // tp, k // tp
    elif tp > 1 and n % tp == 0 and scheme == "ring":
        n_local = n // tp
        k_local = 1 if (n // k) % n_local == 0 else n_local
    rows = micro_batch // max(1, int(mesh.get("dp", 1)) * int(mesh.get("fsdp", 1)))
    return AttentionShape(
        batch=max(1, rows),
        seq_len=seq_len,
        sp=sp,
        heads=n_local,
        kv_heads=k_local,
        head_dim=model.head_dim,
        dtype_bytes=_DTYPE_BYTES.get(model.dtype, 4),
    )


def scheme_costs(
    s: AttentionShape,
    ulysses: int = 0,
    *,
    recompute: bool = False,
    a2a_shape: AttentionShape | None = None,
) -> list[SpCost]:
    """ring (on `s`), ulysses and hybrid (on `a2a_shape`, default `s`; the hybrid's group is
    `ulysses`, or `default_ulysses`)."""
    ring = ring_cost(s, recompute=recompute)
    s = s if a2a_shape is None else a2a_shape
    u = ulysses or default_ulysses(s)
    hybrid = (
        hybrid_cost(s, u, recompute=recompute)
        if u
        else SpCost(
            "hybrid",
            s.sp,
            0,
            False,
            f"no all-to-all group 1 < U < sp {s.sp} divides sp and the heads "
            f"({s.heads} q, {s.kv_heads} kv)",
            recompute=recompute,
        )
    )
    if u and not 1 < u < s.sp and hybrid.possible:
        hybrid = dataclasses.replace(
            hybrid, scheme="hybrid", possible=False, why=f"ulysses={u}: need 1 < U < sp {s.sp}"
        )
    return [ring, ulysses_cost(s, recompute=recompute), hybrid]
