"""The sequence-parallel cost model (lwm/training/sp_cost.py) against the collectives XLA compiles:
the bytes of `collective-permute` / `all-to-all` / `all-gather` ops in the HLO of an attention
forward+backward on the 8-device mesh (lwm/training/hlo_collectives.py), for ring, ulysses and
hybrid; and `lwm plan --compare-sp` on a tiny config."""

import json

import jax
import jax.numpy as jnp
import pytest

from lwm.attention import backend_names, make_attention
from lwm.attention.config import AttentionConfig
from lwm.sharding import make_mesh
from lwm.training.hlo_collectives import collective_stats
from lwm.training.sp_cost import (
    AttentionShape,
    default_ulysses,
    hybrid_cost,
    ring_cost,
    scheme_costs,
    ulysses_cost,
)

B, T, H = 2, 128, 8
# f32 inputs: XLA:CPU sends bf16 collectives as f32, so a bf16 program's CPU HLO would show twice
# the bytes of the formula (and of an accelerator).
DTYPE_BYTES = 4


def compiled_stats(cfg: AttentionConfig, mesh, heads: int, kv_heads: int, *, seg: bool, remat):
    """Per-device collective bytes of jit(value_and_grad(sum(attention))) compiled on `mesh` (the
    value keeps the forward: with `remat` the backward recomputes it, as in a train step)."""
    op = make_attention(cfg, causal=True, mesh=mesh)

    def loss(q, k, v, s):
        fn = (lambda *a: op(*a, s)) if seg else op
        fn = jax.checkpoint(fn) if remat else fn
        return jnp.sum(fn(q, k, v))

    q = jax.ShapeDtypeStruct((B, T, heads, H), jnp.float32)
    k = jax.ShapeDtypeStruct((B, T, kv_heads, H), jnp.float32)
    s = jax.ShapeDtypeStruct((B, T), jnp.int32)
    compiled = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).lower(q, k, k, s).compile()
    return collective_stats(compiled.as_text())


def shape(sp, heads, kv_heads, *, batch=B, seg=True) -> AttentionShape:
    return AttentionShape(batch, T, sp, heads, kv_heads, H, DTYPE_BYTES, segment_ids=seg)


def sent(stats) -> int:
    return sum(stats.bytes(k) for k in ("collective-permute", "all-to-all", "all-gather"))


# (mesh, heads, kv heads, per-device (heads, kv heads), packed, remat): sp=8 GQA with the recomputed
# forward; the kv heads sliced over tp (1 kv head, tp=2 holds 2 of 4 q heads: one kv head each).
RING_CASES = {
    "sp8-gqa-packed-remat": (dict(sp=8), 4, 2, (4, 2), True, True),
    "sp4tp2-kv-sliced": (dict(sp=4, tp=2), 4, 1, (2, 1), False, False),
}


@pytest.mark.parametrize("case", list(RING_CASES))
def test_ring_formula_matches_compiled_permutes(case):
    sizes, n, k, (n_loc, k_loc), seg, remat = RING_CASES[case]
    mesh = make_mesh(sizes)
    cfg = AttentionConfig(backend="ring", query_chunk_size=16, key_chunk_size=16)
    stats = compiled_stats(cfg, mesh, n, k, seg=seg, remat=remat)
    cost = ring_cost(shape(sizes["sp"], n_loc, k_loc, seg=seg), recompute=remat)
    assert stats.bytes("collective-permute") == cost.train_bytes
    assert stats.bytes("all-to-all") == 0
    # every round sends K/V (+ segment ids) as separate arrays, or dK and dV
    arrays = 3 if seg else 2
    fwd_ops = cost.forward_rounds * arrays * (2 if remat else 1)
    assert stats.count("collective-permute") == fwd_ops + (cost.sp - 1) * arrays + cost.sp * 2


def test_formulas_by_hand():
    """The docstring's formulas at one shape, written out: P=8, B=1, L=16, N=4, K=2, H=8, e=2."""
    s = AttentionShape(1, 128, 8, 4, 2, 8, 2)
    seg = 4 * 16
    r = ring_cost(s)
    assert r.forward_bytes == 7 * (2 * 16 * 2 * 8 * 2 + seg)
    assert r.backward_bytes == r.forward_bytes + 8 * 2 * 16 * 2 * 8 * 4
    assert (r.forward_rounds, r.backward_rounds) == (7, 15)
    u = ulysses_cost(AttentionShape(1, 128, 4, 4, 2, 8, 2))  # P=4 > K=2: kv repeated to 4
    a2a = 3 * (2 * 4 + 2 * 4) * 32 * 8 * 2 // 4
    assert (u.forward_bytes, u.backward_bytes) == (a2a + 3 * 4 * 32, a2a)
    h = hybrid_cost(s, 2)  # U=2 all-to-all x R=4 ring on 32-row, 2-head blocks
    a2a = (2 * 4 + 2 * 2) * 16 * 8 * 2 // 2
    ring_block = 2 * 32 * 1 * 8 * 2 + 4 * 32
    assert h.forward_bytes == a2a + seg + 3 * ring_block
    assert h.backward_bytes == a2a + 3 * ring_block + 4 * 2 * 32 * 8 * 4
    assert h.train_bytes < r.train_bytes


def test_caps_and_default_group():
    assert not ulysses_cost(shape(8, 4, 4)).possible  # 4 heads over 8 devices
    assert "query heads 4" in ulysses_cost(shape(8, 4, 4)).why
    assert not ulysses_cost(shape(4, 12, 3)).possible  # kv 3 vs group 4: neither divides
    assert ulysses_cost(shape(8, 8, 2)).possible  # kv heads repeated 2 -> 8
    assert default_ulysses(shape(8, 4, 2)) == 4
    assert default_ulysses(shape(8, 9, 3)) == 0
    ring, uly, hyb = scheme_costs(shape(8, 9, 3))
    assert ring.possible and not uly.possible and not hyb.possible and "no all-to-all" in hyb.why
    assert not scheme_costs(shape(8, 4, 2), ulysses=3)[2].possible


needs_ulysses = pytest.mark.skipif(
    "ulysses" not in backend_names(), reason="attention.backend=ulysses not built yet"
)
needs_hybrid = pytest.mark.skipif(
    "hybrid" not in backend_names(), reason="attention.backend=hybrid not built yet"
)


# (mesh sp, all-to-all group, heads, kv heads, packed): GQA with the kv heads repeated to the
# group (1 -> 8, 2 -> 4), MHA; hybrid 4x2 and 2x4; unpacked. (The recomputed forward is checked in
# the train step below: here XLA would merge it with the forward.)
A2A_CASES = {
    "ulysses8-gqa-repeat-packed": (8, 8, 8, 1, True),
    "hybrid4x2-gqa-repeat-packed": (8, 4, 4, 2, True),
    "hybrid2x4-mha": (8, 2, 2, 2, False),
}


@pytest.mark.parametrize("case", list(A2A_CASES))
def test_all_to_all_formulas_match_compiled(case):
    sp, group, n, k, seg = A2A_CASES[case]
    backend = "ulysses" if group == sp else "hybrid"
    if backend not in backend_names():
        pytest.skip(f"attention.backend={backend} not built yet")
    mesh = make_mesh(dict(sp=sp, fsdp=8 // sp))
    ulysses = group if backend == "hybrid" else 0
    cfg = AttentionConfig(backend, query_chunk_size=16, key_chunk_size=16, ulysses=ulysses)
    stats = compiled_stats(cfg, mesh, n, k, seg=seg, remat=False)
    s = shape(sp, n, k, batch=B // (8 // sp), seg=seg)
    cost = ulysses_cost(s) if backend == "ulysses" else hybrid_cost(s, group)
    ring = sp // group
    merged = 0
    if ring == 2:
        # A ring of 2 runs one-step scans, which XLA inlines: the backward's one rotation of the
        # block is the forward's, and XLA's CSE sends it once (the formula counts both).
        rows, kv_heads = group * s.local_len, max(k, group) // group
        merged = 2 * s.batch * rows * kv_heads * H * DTYPE_BYTES + 4 * s.batch * rows * seg
    assert (
        stats.bytes("collective-permute")
        + stats.bytes("all-to-all")
        + stats.bytes("all-gather", "s32")
        == cost.train_bytes - merged
    )
    # q, k, v in one all-to-all, the output in another; the transposes backward
    assert stats.count("all-to-all") == 4
    assert stats.count("all-gather", "s32") == int(seg)
    # the ring: k, v (+ segment ids) per rotation, forward and backward; dK, dV per hop
    arrays = 2 + seg
    permutes = (ring - 1) * arrays * 2 + ring * 2 - (arrays if ring == 2 else 0)
    assert stats.count("collective-permute") == (permutes if ring > 1 else 0)


# Two scanned, rematerialised layers, 8 q / 2 kv heads, f32, contiguous layout (no layout
# permutes): the step's collectives are the attention's, layer by layer.
CONFIG = """
import ml_collections
from lwm.models.presets import base_config
from lwm.training.config import default_train_section, stage_section

def get_config():
    config = base_config("debug")
    config.model.update(num_layers=2, num_heads=8, num_kv_heads=2, hidden_size=64,
                        scan_layers=True, remat_policy="full")
    config.model.attention.update(backend="ring", layout="contiguous", query_chunk_size=16,
                                  key_chunk_size=16)
    config.mesh = ml_collections.ConfigDict(dict(dp=1, fsdp=-1, tp=1, sp=1))
    config.train = default_train_section(progress_bar=False)
    config.stages = [stage_section(seq_len=256, batch_tokens=256, steps=1)]
    return config
"""


def test_compare_sp_cli_matches_the_compiled_train_steps(tmp_path, capsys):
    from lwm.cli.main import main

    path = tmp_path / "sp_cfg.py"
    path.write_text(CONFIG)
    assert main(["plan", "--config", str(path), "--compare-sp", "--json"]) == 0
    (report,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert report["mesh"]["sp"] == 8 and report["mesh"]["fsdp"] == 1  # fsdp folded into sp
    rows = {r["scheme"]: r for r in report["schemes"]}
    assert list(rows) == ["ring", "ulysses", "hybrid"]
    assert rows["hybrid"]["cost_per_layer"]["ulysses"] == 4  # default: largest U < sp
    layers, b, t = 2, 1, 256
    for name, row in rows.items():
        cost = row["cost_per_layer"]
        assert cost["recompute"] and row["bytes_per_step"] == layers * cost["train_bytes"]
        if name not in backend_names():
            assert "unknown attention backend" in row["error"]
            continue
        assert row["possible"] and row["plan"]["memory"]["total"] > 0
        u, sp = cost["ulysses"], cost["sp"]
        ring = sp // u
        # XLA hoists the forward's segment-id sends (the same every layer) out of the layer scan:
        # sent once, not per layer. They are 4 bytes a token, against K/V's 2 K H e.
        seg_fwd = 4 * b * t // sp * ((u - 1) + (ring - 1) * u)
        merged = 0
        if ring == 2:  # one-step ring scans: the recomputed forward's rotation of the block is
            # the backward's, which XLA sends once per layer (1 kv head (2 repeated to 4, / 4))
            merged = layers * (2 * b * t // ring * 1 * 8 * 4 + 4 * b * t // ring)
        low = row["bytes_per_step"] - merged - (layers - 1) * seg_fwd
        assert low <= row["hlo_bytes_per_step"] <= row["bytes_per_step"] - merged, name
    assert rows["hybrid"]["bytes_per_step"] < rows["ring"]["bytes_per_step"]


def test_compare_sp_text_names_impossible_schemes(tmp_path, capsys):
    """9 q / 3 kv heads on sp=8: only the ring can run (nothing compiled: formulas only)."""
    from lwm.cli.main import main

    path = tmp_path / "sp_cfg.py"
    path.write_text(
        CONFIG.replace(
            "num_heads=8, num_kv_heads=2, hidden_size=64",
            "num_heads=9, num_kv_heads=3, hidden_size=72",
        )
    )
    from lwm.config import load_config
    from lwm.training.run_spec import parse_run
    from lwm.training.sp_compare import compare_sp, format_comparison

    spec = parse_run(load_config(str(path), []), check_shapes=False)
    text = format_comparison(compare_sp(spec, 0, compile_steps=False))
    assert "ulysses" in text and "impossible: query heads 9 not divisible" in text
    assert "hybrid" in text and "impossible: no all-to-all group" in text
    assert main(["plan", "--config", str(path), "--compare-sp", "--inference"]) == 2
    assert "--compare-sp" in capsys.readouterr().err
