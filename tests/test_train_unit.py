"""Training building blocks against oracles: schedules, decay mask, AdamW, split loss, grad
accumulation and mesh equivalence, a ring-attention train step, config validation errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lwm.config import load_config
from lwm.errors import ConfigError
from lwm.models.config import ModelConfig
from lwm.sharding import make_mesh
from lwm.training.loss import loss_normalizer, split_loss_terms
from lwm.training.optimizer import make_optimizer, weight_decay_mask
from lwm.training.run_spec import parse_run
from lwm.training.schedule import make_schedule
from lwm.training.synthetic_data import synthetic_batch
from lwm.training.train_state import model_def, rng_data
from lwm.training.train_step import (
    batch_shardings,
    jit_train_step,
    make_train_step,
    state_shardings,
)

CFG = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=4,
    num_kv_heads=2,
    vision_vocab_size=16,
    vision_eof_id=14,
    vision_eov_id=15,
    max_sequence_length=64,
)


def test_schedules():
    s = make_schedule("warmup_cosine", lr=1.0, steps=12, warmup_steps=4, end_lr_ratio=0.1)
    np.testing.assert_allclose([s(i) for i in range(4)], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    assert float(s(4)) == pytest.approx(1.0) and float(s(12)) == pytest.approx(0.1)
    assert float(s(8)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)  # cosine midpoint
    lin = make_schedule("warmup_linear", lr=2.0, steps=10, warmup_steps=0, end_lr_ratio=0.0)
    assert float(lin(5)) == pytest.approx(1.0)
    const = make_schedule("constant", lr=0.5, steps=10, warmup_steps=2)
    assert [float(const(i)) for i in (0, 1, 5, 9)] == [0.25, 0.5, 0.5, 0.5]


def test_decay_mask_and_adamw_match_optax():
    params = {
        "embed": {"text": jnp.ones((8, 4))},
        "blocks": {"0": {"attn_norm": {"scale": jnp.ones(4)}, "mlp": {"w_up": jnp.ones((4, 6))}}},
        "lm_head": jnp.ones((4, 8)),
    }
    mask = weight_decay_mask(params)
    assert mask == {
        "embed": {"text": False},
        "blocks": {"0": {"attn_norm": {"scale": False}, "mlp": {"w_up": True}}},
        "lm_head": True,
    }
    params = jax.tree.map(lambda x: x * 0.3, params)
    grads = jax.tree.map(
        lambda x: jnp.sin(jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape)), params
    )
    ours = make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, decay_mask=mask, clip_norm=0)
    ref = optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=mask)
    o_state, r_state = ours.init(params), ref.init(params)
    p_ours = p_ref = params
    for _ in range(3):
        u, o_state = ours.update(grads, o_state, p_ours)
        p_ours = jax.tree.map(lambda p, u: p - 1e-2 * u, p_ours, u)
        u, r_state = ref.update(grads, r_state, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_split_loss_matches_numpy():
    rng = np.random.default_rng(0)
    b, t, v, vv = 2, 6, 10, 5
    text_logits = rng.normal(size=(b, t, v)).astype(np.float32)
    vision_logits = rng.normal(size=(b, t, vv)).astype(np.float32)
    vis = np.zeros((b, t), bool)
    vis[:, 3:] = True
    targets = np.where(vis, rng.integers(0, vv, (b, t)), rng.integers(0, v, (b, t)))
    mask = np.ones((b, t), np.float32)
    mask[0, 0] = 0
    norm = loss_normalizer(jnp.asarray(mask), jnp.asarray(vis), text_weight=0.5, vision_weight=0.5)
    loss, m = split_loss_terms(
        jnp.asarray(text_logits),
        jnp.asarray(vision_logits),
        jnp.asarray(targets),
        jnp.asarray(mask),
        jnp.asarray(vis),
        norm,
    )

    def nll(logits, tgt):
        logz = np.log(np.exp(logits).sum(-1))
        return logz - np.take_along_axis(logits, tgt[..., None], -1)[..., 0]

    tm, vm = mask * ~vis, mask * vis
    text = (nll(text_logits, np.where(vis, 0, targets)) * tm).sum() / tm.sum()
    vision = (nll(vision_logits, np.where(vis, targets, 0)) * vm).sum() / vm.sum()
    assert float(m["text_loss"]) == pytest.approx(text, rel=1e-5)
    assert float(m["vision_loss"]) == pytest.approx(vision, rel=1e-5)
    assert float(loss) == pytest.approx(0.5 * text + 0.5 * vision, rel=1e-5)
    # A text-only batch: the vision term vanishes and the text term gets the full weight.
    norm0 = loss_normalizer(
        jnp.asarray(mask), jnp.zeros((b, t), bool), text_weight=0.5, vision_weight=0.5
    )
    assert float(norm0.text_weight) == 1.0 and float(norm0.vision_weight) == 0.0


RING = CFG.replace(
    attention=dict(backend="ring", query_chunk_size=4, key_chunk_size=4, layout="zigzag")
)


def _one_step(mdef, opt, sched, host, mesh, params, grad_accum=1):
    """One jitted train step from host `params` on `mesh`; host state and float metrics."""
    st_sh = state_shardings(mdef, opt, mesh)
    state = {
        "step": np.asarray(0, np.int32),
        "params": params,
        "opt_state": opt.init(params),
        "rng": np.asarray(rng_data(0)),
    }
    state = jax.device_put(state, st_sh)
    b_sh = batch_shardings(mesh, 4, 32)
    batch = {k: jax.device_put(v, b_sh[k]) for k, v in host.items()}
    fn = make_train_step(
        mdef, opt, sched, text_weight=0.5, vision_weight=0.5, grad_accum=grad_accum
    )
    new, metrics = jit_train_step(fn, st_sh, b_sh, mesh)(state, batch)
    return jax.device_get(new), {k: float(v) for k, v in jax.device_get(metrics).items()}


@pytest.fixture(scope="module")
def single_device_step():
    """The oracle: dense attention, one device, no accumulation (text + vision batch)."""
    mesh1 = make_mesh({"dp": 1, "fsdp": 1, "tp": 1, "sp": 1}, jax.devices()[:1])
    mdef1 = model_def(CFG, mesh1)
    mask = weight_decay_mask(mdef1.abstract_pure_params())
    opt = make_optimizer(
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, decay_mask=mask, clip_norm=1.0
    )
    sched = make_schedule("constant", lr=1e-2, steps=10)
    host = synthetic_batch(
        3,
        seed=0,
        batch_size=4,
        seq_len=32,
        vocab_size=64,
        vision_vocab_size=16,
        vision_fraction=1.0,
    )
    assert host["target_vision_mask"].any() and (~host["target_vision_mask"]).any()
    # Random host params (norm scales too): cheaper than compiling the initializers.
    rng = np.random.default_rng(0)
    params0 = jax.tree.map(
        lambda x: (0.2 * rng.standard_normal(x.shape)).astype(x.dtype),
        mdef1.abstract_pure_params(),
    )
    base_state, base = _one_step(mdef1, opt, sched, host, mesh1, params0)
    assert base["vision_loss"] > 0 and base["text_loss"] > 0
    return opt, sched, host, params0, base_state, base


def _assert_same_step(got_state, got, base_state, base):
    for k in ("loss", "text_loss", "vision_loss", "accuracy", "grad_norm"):
        assert abs(got[k] - base[k]) <= 1e-5, (k, got[k], base[k])
    # Adam's first step is ~lr * sign(grad): a gradient within rounding of 0 may flip sign, so
    # params agree to 1e-6 on average and within 2 * lr everywhere.
    for a, b in zip(jax.tree.leaves(got_state["params"]), jax.tree.leaves(base_state["params"])):
        assert np.mean(np.abs(a - b)) < 1e-6 and np.max(np.abs(a - b)) <= 2e-2


def test_8_device_mesh_with_grad_accum_matches_single_device(single_device_step):
    """Mesh (dp=1, fsdp=2, tp=2, sp=2), the batch in 2 microbatches: the same step."""
    opt, sched, host, params0, base_state, base = single_device_step
    mesh8 = make_mesh({"dp": 1, "fsdp": 2, "tp": 2, "sp": 2})
    state8, m8 = _one_step(model_def(CFG, mesh8), opt, sched, host, mesh8, params0, grad_accum=2)
    _assert_same_step(state8, m8, base_state, base)


def test_ring_attention_step_matches_dense_single_device(single_device_step):
    """Ring attention over sp=4 (zigzag, 2 chunks per half-block), batch over fsdp=2."""
    opt, sched, host, params0, base_state, base = single_device_step
    mesh = make_mesh({"dp": 1, "fsdp": 2, "tp": 1, "sp": 4})
    state, m = _one_step(model_def(RING, mesh), opt, sched, host, mesh, params0)
    _assert_same_step(state, m, base_state, base)


def test_config_errors_before_compute():
    cfg = load_config("train_debug")
    with pytest.raises(ConfigError, match="has 6 devices but 8 are available"):
        parse_run(load_config("train_debug", ["mesh.fsdp=3", "mesh.tp=2"]))
    with pytest.raises(ConfigError, match="seq_len 100 not divisible by sp = 8"):
        parse_run(
            load_config(
                "train_debug",
                ["mesh.fsdp=1", "mesh.sp=8", "train.seq_len=100", "train.batch_tokens=800"],
            )
        )
    ring = load_config(
        "train_debug",
        [
            "mesh.fsdp=4",
            "mesh.sp=2",
            "model.attention.backend=ring",
            "model.attention.query_chunk_size=16",
            "train.seq_len=96",
            "train.batch_tokens=384",
        ],
    )
    with pytest.raises(ConfigError, match=r"not divisible by sp x query_chunk_size"):
        parse_run(ring)
    with pytest.raises(ConfigError, match="not a multiple of seq_len"):
        parse_run(load_config("train_debug", ["train.batch_tokens=1000"]))
    with pytest.raises(ConfigError, match="not divisible by dp\\*fsdp = 8"):
        parse_run(load_config("train_debug", ["train.batch_tokens=512"]))
    assert parse_run(cfg).stages[0].batch_size == 8


def test_stage_data_overrides_reach_that_stage_only(tmp_path):
    """`stages[i].data` overrides config.data for stage i's iterator (here: skip the short
    examples and stretch positions); bad overrides fail at parse time."""
    import json

    from lwm.data.builder import build_dataset
    from lwm.data.config import default_data_config
    from lwm.data.synth import random_sentences, write_text_corpus
    from lwm.data.tokenizer import train_tokenizer
    from lwm.training.config import stage_section
    from lwm.training.data_source import make_data_iterator

    write_text_corpus(tmp_path / "c.txt", 2000)
    tok = train_tokenizer([tmp_path / "c.txt"], 400, tmp_path / "t.model")
    sents = random_sentences(200, seed=0)
    with open(tmp_path / "d.jsonl", "w") as f:
        for i in range(60):
            f.write(json.dumps({"a": " ".join(sents[i : i + 1 + 4 * (i % 2)])}) + "\n")
    build_dataset(tmp_path / "d.jsonl", tmp_path / "ds", tokenizer=tok, fields="a", quiet=True)
    cfg = load_config("train_debug")
    cfg.data = default_data_config()
    cfg.data.source, cfg.data.path, cfg.data.prefetch = "dataset", str(tmp_path / "ds"), 0
    cfg.data.packing, cfg.data.long_examples = "pad", "drop"  # row lengths = example lengths
    cfg.stages = [
        stage_section(seq_len=128, steps=1, batch_tokens=1024),
        stage_section(
            seq_len=128,
            steps=1,
            batch_tokens=1024,
            max_sequence_length=384,
            data=dict(min_example_len=40, position_stretch=3.0),
        ),
    ]
    spec = parse_run(cfg)
    mesh = make_mesh({"dp": 1, "fsdp": 8, "tp": 1, "sp": 1})
    rows = []
    for st in spec.stages:
        it = make_data_iterator(spec, st, mesh, spec.model)
        b = jax.device_get(next(it))
        seg = np.asarray(b["segment_ids"])
        lens = [int((row == s).sum()) for row in seg for s in np.unique(row[row > 0])]
        rows.append((min(lens), int(np.asarray(b["positions"]).max())))
    assert rows[0][0] < 40 and rows[0][1] < 128  # stage 0: the run's data section
    assert rows[1][0] >= 39 and rows[1][1] >= 128  # stage 1: long examples, stretched positions
    bad = [
        (dict(position_stretch=4.0), "exceeds max_sequence_length 384"),
        (dict(no_such_field=1), "unknown stages\\[1\\].data fields"),
    ]
    for data, match in bad:
        cfg.stages[1].data = data
        with pytest.raises(ConfigError, match=match):
            parse_run(cfg)
