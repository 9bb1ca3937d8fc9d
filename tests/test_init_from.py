"""`train.init_from` / `lwm train --init-from`: a run starting from a converted HF LLaMA has
transformers' loss at step 0; text -> vision extension keeps the text model; skip/cast/errors; a
killed and resumed fine-tuning run is bit-identical to an uninterrupted one (init happens once)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from hf_fixtures import save_hf_llama  # noqa: E402

import lwm  # noqa: E402
from lwm.cli.main import main  # noqa: E402
from lwm.config import load_config  # noqa: E402
from lwm.errors import LwmError  # noqa: E402
from lwm.models.io import load_params_numpy, read_model_config  # noqa: E402
from lwm.sharding import make_mesh  # noqa: E402
from lwm.training.init_from import params_from_checkpoint  # noqa: E402
from lwm.training.metrics import read_metrics  # noqa: E402
from lwm.training.synthetic_data import synthetic_batch  # noqa: E402
from lwm.training.train_state import init_params, model_def  # noqa: E402
from lwm.training.trainer import train  # noqa: E402

# The HF_TINY model (GQA 4/2, theta 5e4) as an lwm config, and a 4-step fine-tuning run.
MODEL = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    rope_theta=50000.0,
    max_sequence_length=256,
)
RUN = dict(
    steps=4,
    seq_len=32,
    batch_tokens=256,
    lr=1e-3,
    warmup_steps=1,
    save_every=2,
    log_every=1,
    keep=1,
    progress_bar=False,
    peak_flops=1e12,
)
OVERRIDES = [f"--config.model.{k}={v}" for k, v in MODEL.items()] + [
    f"--config.train.{k}={v}" for k, v in RUN.items()
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf_llama(tmp_path_factory.mktemp("hf") / "llama", seed=5)


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lwm") / "ckpt"
    assert main(["convert", "from-hf", str(hf_dir), str(out)]) == 0
    return out


def _config(**train):
    config = load_config("train_debug", [o[len("--config.") :] for o in OVERRIDES])
    for k, v in train.items():
        config.train[k] = v
    return config


def _hf_packed_loss(hf_dir, batch) -> float:
    """transformers' mean next-token loss over the packed batch: each document run on its own."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for r in range(batch["tokens"].shape[0]):
        for seg in np.unique(batch["segment_ids"][r]):
            if seg == 0:
                continue
            idx = np.nonzero(batch["segment_ids"][r] == seg)[0]
            with torch.no_grad():
                logits = model(torch.as_tensor(batch["tokens"][r, idx][None]).long()).logits[0]
            nll = torch.nn.functional.cross_entropy(
                logits, torch.as_tensor(batch["targets"][r, idx]).long(), reduction="none"
            ).numpy()
            mask = batch["loss_mask"][r, idx] > 0
            total += float(nll[mask].sum())
            count += int(mask.sum())
    return total / count


def test_step0_loss_equals_transformers(hf_dir, converted, tmp_path):
    wd = tmp_path / "run"
    args = ["train", "--config", "train_debug", "--workdir", str(wd), "--init-from", str(converted)]
    assert main([*args, *OVERRIDES, "--config.train.steps=1"]) == 0
    first = read_metrics(wd / "metrics.jsonl")[0]
    batch = synthetic_batch(0, seed=0, batch_size=8, seq_len=32, vocab_size=128)
    assert first["step"] == 1
    assert abs(first["loss"] - _hf_packed_loss(hf_dir, batch)) <= 1e-4


def test_text_to_vision_extension_keeps_text_logits(converted):
    """Per-layer text checkpoint -> scanned vision model: text logits unchanged, vision params are
    the run's own fresh init."""
    cfg = read_model_config(converted).replace(
        vision_vocab_size=24, vision_eof_id=16, vision_eov_id=17, scan_layers=True
    )
    mesh = make_mesh(dict(dp=1, fsdp=4, tp=2, sp=1))
    mdef = model_def(cfg, mesh)
    params = params_from_checkpoint(converted, mdef, mesh, seed=3)
    assert (
        params["blocks"]["attn"]["wq"].sharding
        == mdef.param_shardings(mesh)["blocks"]["attn"]["wq"]
    )
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 128, size=(2, 24)), jnp.int32)
    ours = np.asarray(mdef.merge(params)(tokens).logits)
    theirs = np.asarray(lwm.load_model(converted)(tokens).logits)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    fresh = init_params(mdef, 3, mesh)
    np.testing.assert_array_equal(params["vision_head"], fresh["vision_head"])
    np.testing.assert_array_equal(params["embed"]["vision"], fresh["embed"]["vision"])


def test_skip_cast_and_mismatch_errors(converted):
    src, _ = load_params_numpy(converted)
    base = read_model_config(converted)
    mesh = make_mesh(dict(dp=1, fsdp=8, tp=1, sp=1))
    mdef = model_def(base.replace(param_dtype="bfloat16"), mesh)
    params = params_from_checkpoint(converted, mdef, mesh, seed=0, skip=("^lm_head$",))
    assert params["embed"]["text"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(params["embed"]["text"]), src["embed"]["text"].astype(jnp.bfloat16)
    )
    np.testing.assert_array_equal(params["lm_head"], init_params(mdef, 0, mesh)["lm_head"])
    with pytest.raises(
        LwmError, match=r"param \S+ has shape \(\S+, \S+, 16\), the model expects \(32, "
    ):
        params_from_checkpoint(converted, model_def(base.replace(hidden_size=32), mesh), mesh)
    with pytest.raises(LwmError, match=r"param blocks/2/attn/wk missing from the checkpoint"):
        params_from_checkpoint(converted, model_def(base.replace(num_layers=3), mesh), mesh)
    with pytest.raises(LwmError, match=r"checkpoint param lm_head \(64, 128\) is not in the model"):
        params_from_checkpoint(
            converted, model_def(base.replace(tie_word_embeddings=True), mesh), mesh
        )


def test_killed_and_resumed_finetune_is_bit_identical(converted, tmp_path):
    whole = tmp_path / "whole"
    train(_config(init_from=str(converted)), whole)
    parted = tmp_path / "parted"
    result = train(_config(init_from=str(converted)), parted, max_steps=2)
    assert result.preempted and result.step == 2
    # The restart resumes the workdir's own checkpoint: init_from is not read again (a path that
    # does not exist would fail if it were).
    train(_config(init_from=str(tmp_path / "not-there")), parted)
    a = [(m["step"], m["loss"]) for m in read_metrics(whole / "metrics.jsonl")]
    b = [(m["step"], m["loss"]) for m in read_metrics(parted / "metrics.jsonl")]
    assert [s for s, _ in a] == [1, 2, 3, 4]
    assert a == b
    with pytest.raises(LwmError, match="no checkpoint|not found"):
        train(_config(init_from=str(tmp_path / "not-there")), tmp_path / "fresh")
    # Another run's workdir (a full train state) is a valid init_from: its latest params.
    saved, cfg = load_params_numpy(whole)
    mesh = make_mesh(dict(dp=1, fsdp=8, tp=1, sp=1))
    got = params_from_checkpoint(whole, model_def(cfg, mesh), mesh)
    np.testing.assert_array_equal(np.asarray(got["lm_head"]), saved["lm_head"])
    np.testing.assert_array_equal(
        np.asarray(got["blocks"]["1"]["mlp"]["w_down"]), saved["blocks"]["1"]["mlp"]["w_down"]
    )
