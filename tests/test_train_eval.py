"""The eval hook, the validation split and the metric sinks, on a tiny text+vision model.

Oracles: the eval loss equals the loss computed here in numpy from the model's logits with the
params restored from the checkpoint of that step, on held-out batches read here; the held-out
records never reach the training stream; the TensorBoard event file (read with our own TFRecord
reader) holds exactly the losses of metrics.jsonl.
"""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from metric_readers import tensorboard_scalars

from lwm.checkpoint import Checkpointer
from lwm.data.builder import build_dataset
from lwm.data.config import default_data_config
from lwm.data.loader import make_host_iterator, open_source
from lwm.data.split import held_out_indices
from lwm.data.synth import random_sentences, write_text_corpus
from lwm.data.tokenizer import train_tokenizer
from lwm.errors import ConfigError
from lwm.models.presets import base_config
from lwm.training.config import default_train_section
from lwm.training.data_source import EVAL_SEED, make_data_iterator
from lwm.training.metrics import read_metrics
from lwm.training.run_spec import parse_run
from lwm.training.stages import stage_model_config
from lwm.training.train_state import model_def
from lwm.training.trainer import Trainer

SEQ, ROWS, RECORDS, FRACTION = 64, 8, 40, 0.25
EOF_ID, EOV_ID = 18, 19


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """40 records, each a question, two frames of VQ codes and an answer (loss on both)."""
    d = tmp_path_factory.mktemp("evalds")
    write_text_corpus(d / "c.txt", 3000)
    tok = train_tokenizer([d / "c.txt"], 400, d / "t.model")
    sents = random_sentences(2 * RECORDS, seed=3)
    rng = np.random.default_rng(0)
    with open(d / "r.jsonl", "w") as f:
        for i in range(RECORDS):
            frames = rng.integers(0, EOF_ID, (2, 4)).tolist()
            rec = {"q": sents[2 * i], "vision": frames, "a": sents[2 * i + 1]}
            f.write(json.dumps(rec) + "\n")
    build_dataset(
        d / "r.jsonl",
        d / "ds",
        tokenizer=tok,
        fields="[q],vision,a",
        quiet=True,
        tokens_per_frame=4,
        vision_eof_id=EOF_ID,
        vision_eov_id=EOV_ID,
    )
    return str(d / "ds")


def _data_section(path, **kw):
    data = default_data_config()
    data.update(dict(path=path, packing="pad", long_examples="truncate", prefetch=0, **kw))
    return data


def _config(path, **train):
    config = base_config("debug")
    config.model.update(
        dict(
            vocab_size=416,
            hidden_size=32,
            intermediate_size=64,
            num_layers=1,
            max_sequence_length=SEQ,
            vision_vocab_size=20,
            vision_eof_id=EOF_ID,
            vision_eov_id=EOV_ID,
        )
    )
    config.mesh = ml_collections.ConfigDict(dict(dp=4, fsdp=2, tp=1, sp=1))
    fields = dict(steps=4, seq_len=SEQ, batch_tokens=SEQ * ROWS, lr=3e-3, warmup_steps=1)
    fields.update(save_every=2, keep=10, log_every=1, progress_bar=False, peak_flops=1e12)
    fields.update(train)
    config.train = default_train_section(**fields)
    config.stages = []
    config.data = _data_section(path, eval_fraction=FRACTION)
    return config


def _record_ids(path):
    """The first row (SEQ inputs) of each record -> its index (they are unique)."""
    src = open_source(path)
    ids = {tuple(np.asarray(src[i]["tokens"][:-1][:SEQ]).tolist()): i for i in range(len(src))}
    assert len(ids) == len(src)
    return ids


def _rows(batch, ids):
    """The record index of each row of a `pad`-packed batch."""
    out = []
    for r in range(batch["tokens"].shape[0]):
        n = int((np.asarray(batch["segment_ids"][r]) > 0).sum())
        out.append(ids[tuple(np.asarray(batch["tokens"][r][:n]).tolist())])
    return out


def test_eval_fraction_split_is_disjoint_fixed_and_resumable(dataset):
    ids = _record_ids(dataset)
    held = set(held_out_indices(RECORDS, FRACTION).tolist())
    assert len(held) == 10
    epoch = {"num_epochs": 1, "eval_fraction": FRACTION}
    for shards in (1, 2):
        seen_train, seen_eval = [], []
        for shard in range(shards):
            for subset, seen in (("train", seen_train), ("eval", seen_eval)):
                it = make_host_iterator(
                    _data_section(dataset, **epoch),
                    seq_len=SEQ,
                    batch_size=1,
                    seed=7,
                    shard_index=shard,
                    shard_count=shards,
                    subset=subset,
                )
                seen += [i for b in it for i in _rows(b, ids)]
        assert sorted(seen_eval) == sorted(held)
        assert sorted(seen_train) == sorted(set(range(RECORDS)) - held)
    # Resume: a restored training iterator continues exactly; a state of another split is refused.
    cfg = _data_section(dataset, eval_fraction=FRACTION)
    a = make_host_iterator(cfg, seq_len=SEQ, batch_size=4, seed=1)
    [next(a) for _ in range(3)]
    state = a.get_state()
    want = [next(a)["tokens"] for _ in range(5)]
    b = make_host_iterator(cfg, seq_len=SEQ, batch_size=4, seed=1)
    b.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(b)["tokens"], w)
    whole = make_host_iterator(_data_section(dataset), seq_len=SEQ, batch_size=4, seed=1)
    with pytest.raises(Exception, match="num_examples|eval_fraction"):
        whole.set_state(state)


def _numpy_loss(mdef, params, batches, text_weight=0.5, vision_weight=0.5):
    """Oracle: text / vision cross-entropy from the model's logits, in float64 numpy."""
    model = mdef.merge(jax_tree(params))
    sums = dict(tn=0.0, tc=0.0, vn=0.0, vc=0.0)
    for b in batches:
        out = model(
            jnp.asarray(b["tokens"]),
            positions_bt=jnp.asarray(b["positions"]),
            segment_ids_bt=jnp.asarray(b["segment_ids"]),
            vision_mask_bt=jnp.asarray(b["vision_mask"]).astype(bool),
            output="both",
        )
        text, vision = out.logits, out.vision_logits
        mask = np.asarray(b["loss_mask"]) > 0
        is_vis = np.asarray(b["target_vision_mask"]).astype(bool)
        terms = ((text, mask & ~is_vis, "tn", "tc"), (vision, mask & is_vis, "vn", "vc"))
        for logits, sel, n, c in terms:
            lg = np.asarray(logits, np.float64)
            logz = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
            tgt = np.where(sel, b["targets"], 0)
            nll = logz - np.take_along_axis(lg, tgt[..., None], -1)[..., 0]
            sums[n] += float(nll[sel].sum())
            sums[c] += float(sel.sum())
    text_loss, vision_loss = sums["tn"] / sums["tc"], sums["vn"] / sums["vc"]
    assert sums["tc"] > 0 and sums["vc"] > 0  # both terms present
    loss = (text_weight * text_loss + vision_weight * vision_loss) / (text_weight + vision_weight)
    return loss, text_loss, vision_loss


def jax_tree(params):
    import jax

    return jax.tree.map(jnp.asarray, params)


def test_eval_loss_matches_numpy_on_restored_params(dataset, tmp_path):
    config = _config(dataset, eval_every=2, eval_batches=2, tensorboard=True)
    spec = parse_run(config)
    wd = tmp_path / "run"
    # Stopped after step 3 (eval at 2), resumed to the end (eval at 4).
    events = []
    first = Trainer(spec, wd, log=lambda m: None, max_steps=3)
    first.add_hook(lambda i: events.append(("step", i.step)), every=2)
    for ev in ("stage_start", "stage_end", "run_end"):
        first.add_hook(lambda i, ev=ev: events.append((ev, i.step)), event=ev)
    assert first.run().preempted
    # every=2: step 2, then the stage ends early (preempted) at 3.
    assert events == [("stage_start", 0), ("step", 2), ("stage_end", 3), ("run_end", 3)]
    res = Trainer(spec, wd, log=lambda m: None).run()
    assert res.step == 4 and not res.preempted
    records = {r["step"]: r for r in read_metrics(wd / "metrics.jsonl")}
    assert sorted(records) == [1, 2, 3, 4]
    assert [s for s, r in records.items() if "eval_loss" in r] == [2, 4]
    assert res.last_metrics["eval_loss"] == records[4]["eval_loss"]

    # Oracle: the held-out batches read here, the params of each eval step from its checkpoint.
    ids, held = _record_ids(dataset), set(held_out_indices(RECORDS, FRACTION).tolist())
    it = make_host_iterator(
        _data_section(dataset, eval_fraction=FRACTION, num_epochs=0, shuffle=True),
        seq_len=SEQ,
        batch_size=ROWS,
        seed=EVAL_SEED + spec.train.seed,
        subset="eval",
    )
    batches = [next(it) for _ in range(2)]
    assert {i for b in batches for i in _rows(b, ids)} <= held
    mdef = model_def(stage_model_config(spec.model, spec.stages[0]), None)
    with Checkpointer(wd / "checkpoints") as ckpt:
        for step in (2, 4):
            params, meta, _ = ckpt.restore(step, subtree="params")
            assert meta["step"] == step
            loss, text, vision = _numpy_loss(mdef, params, batches)
            r = records[step]
            np.testing.assert_allclose(
                [r["eval_loss"], r["eval_text_loss"], r["eval_vision_loss"]],
                [loss, text, vision],
                rtol=2e-5,
            )
    assert records[2]["eval_loss"] != records[4]["eval_loss"]

    # The training stream the trainer reads never holds a held-out record.
    from lwm.sharding import make_mesh

    data = make_data_iterator(spec, spec.stages[0], make_mesh(spec.mesh_sizes[0]), spec.model)
    for _ in range(8):  # 64 rows: two passes over the 30 training records
        assert not set(_rows(jax_host(next(data)), ids)) & held

    # TensorBoard: the exact float32 values of metrics.jsonl, train and eval.
    tb = tensorboard_scalars(wd / "tensorboard")
    assert tb["train/loss"] == {s: float(np.float32(r["loss"])) for s, r in records.items()}
    assert tb["eval/loss"] == {s: float(np.float32(records[s]["eval_loss"])) for s in (2, 4)}
    assert set(tb["eval/vision_loss"]) == {2, 4}


def jax_host(batch):
    import jax

    return jax.device_get(batch)


def test_eval_needs_a_validation_split(dataset):
    config = _config(dataset, eval_every=2)
    config.data.eval_fraction = 0.0
    with pytest.raises(ConfigError, match="needs a validation split"):
        parse_run(config)
    config.data.eval_path = dataset
    config.data.eval_fraction = FRACTION
    with pytest.raises(ConfigError, match="not both"):
        parse_run(config)
    with pytest.raises(ConfigError, match="eval_every must be >= 0"):
        parse_run(_config(dataset, eval_every=-1))


def test_eval_step_microbatched_equals_whole_batch_and_synthetic_eval_rewinds():
    import jax

    from lwm.config import load_config
    from lwm.models.config import ModelConfig
    from lwm.sharding import make_mesh
    from lwm.training.data_source import make_eval_iterator
    from lwm.training.eval import make_eval_step
    from lwm.training.synthetic_data import synthetic_batch
    from lwm.training.train_state import init_params

    cfg = ModelConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        vision_vocab_size=16,
        vision_eof_id=14,
        vision_eov_id=15,
        max_sequence_length=32,
    )
    mesh = make_mesh({"dp": 1, "fsdp": 1, "tp": 1, "sp": 1}, devices=jax.devices()[:1])
    mdef = model_def(cfg, mesh)
    params = init_params(mdef, 0, mesh)
    kw = dict(seed=3, batch_size=4, seq_len=32, vocab_size=64, vision_vocab_size=16)
    batch = synthetic_batch(0, vision_fraction=0.5, **kw)
    whole, micro = (
        jax.jit(make_eval_step(mdef, text_weight=0.5, vision_weight=0.5, grad_accum=g))(
            params, batch
        )
        for g in (1, 2)
    )
    assert float(whole["vision_tokens"]) > 0 and float(whole["text_tokens"]) > 0
    for k in whole:
        np.testing.assert_allclose(float(micro[k]), float(whole[k]), rtol=1e-5)

    # The synthetic source's held-out stream: seeds of no training stage, rewound exactly.
    spec = parse_run(load_config("train_debug", ["train.eval_every=5"]))
    st, smesh = spec.stages[0], make_mesh(spec.mesh_sizes[0])
    ev = make_eval_iterator(spec, st, smesh, spec.model)
    start = ev.get_state()
    first = jax.device_get(next(ev))
    train_first = jax.device_get(next(make_data_iterator(spec, st, smesh, spec.model)))
    assert not np.array_equal(first["tokens"], train_first["tokens"])
    next(ev)
    ev.set_state(start)
    np.testing.assert_array_equal(jax.device_get(next(ev))["tokens"], first["tokens"])
