"""Parity with transformers' LlamaForCausalLM (torch CPU, fp32) through `lwm convert`."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from hf_fixtures import hf_logits, save_hf_llama  # noqa: E402

import lwm  # noqa: E402
from lwm.cli.main import main  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf_llama(tmp_path_factory.mktemp("hf") / "llama")


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lwm") / "ckpt"
    assert main(["convert", "from-hf", str(hf_dir), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 128, size=(2, 37)).astype(np.int32)


def test_logits_match_transformers(hf_dir, converted, tokens):
    model = lwm.load_model(converted)
    cfg = model.config
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.rope_theta) == (4, 2, 50000.0)
    assert not cfg.tie_word_embeddings
    ours = np.asarray(model(jnp.asarray(tokens)).logits)
    theirs = hf_logits(hf_dir, tokens)
    assert ours.shape == theirs.shape == (2, 37, 128)
    assert np.max(np.abs(ours - theirs)) <= 1e-4


def test_scanned_and_remat_model_match_transformers(hf_dir, converted, tokens):
    """The same weights under scan_layers + remat give the same logits."""
    from flax import nnx

    from lwm.models.io import get_params, set_params
    from lwm.models.transformer import Transformer

    loop = lwm.load_model(converted)
    scanned = Transformer(
        loop.config.replace(scan_layers=True, remat_policy="full"), rngs=nnx.Rngs(1)
    )
    params = get_params(loop)
    blocks = params.pop("blocks")
    params["blocks"] = jax.tree.map(
        lambda *xs: np.stack(xs), *[blocks[str(i)] for i in range(loop.config.num_layers)]
    )
    set_params(scanned, params)
    ours = np.asarray(scanned(jnp.asarray(tokens)).logits)
    assert np.max(np.abs(ours - hf_logits(hf_dir, tokens))) <= 1e-4


def test_export_round_trip_loads_in_transformers(converted, tokens, tmp_path):
    out = tmp_path / "hf_out"
    assert main(["convert", "to-hf", str(converted), str(out)]) == 0
    ours = np.asarray(lwm.load_model(converted)(jnp.asarray(tokens)).logits)
    assert np.max(np.abs(hf_logits(out, tokens) - ours)) <= 1e-4


def test_tied_embeddings_round_trip(tmp_path, tokens):
    hf = save_hf_llama(tmp_path / "tied", seed=3, tie_word_embeddings=True)
    out = tmp_path / "ckpt"
    assert main(["convert", "from-hf", str(hf), str(out)]) == 0
    model = lwm.load_model(out)
    assert model.config.tie_word_embeddings and model.lm_head is None
    ours = np.asarray(model(jnp.asarray(tokens)).logits)
    assert np.max(np.abs(ours - hf_logits(hf, tokens))) <= 1e-4


# --- bad input: one-line error, non-zero exit, nothing written ------------------------------


def _run_bad(argv, capsys, out_dir, expect):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert expect in err, err
    assert not out_dir.exists()
    assert not list(out_dir.parent.glob(f".{out_dir.name}.tmp-*"))


def test_missing_tensor(hf_dir, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((hf_dir / "config.json").read_text())
    tensors = load_file(str(hf_dir / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    _run_bad(
        ["convert", "from-hf", str(bad), str(out)], capsys, out, "model.layers.1.mlp.up_proj.weight"
    )


@pytest.mark.parametrize(
    "edit, expect",
    [
        (
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0}},
            "dynamic",
        ),
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"model_type": "gemma", "architectures": ["GemmaForCausalLM"]}, "gemma"),
    ],
)
def test_unrepresentable_config(hf_dir, tmp_path, capsys, edit, expect):
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    config.update(edit)
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").symlink_to(hf_dir / "model.safetensors")
    out = tmp_path / "out"
    _run_bad(["convert", "from-hf", str(bad), str(out)], capsys, out, expect)


def test_wrong_path(tmp_path, capsys):
    out = tmp_path / "out"
    _run_bad(["convert", "from-hf", str(tmp_path / "nope"), str(out)], capsys, out, "not found")


def test_existing_output_refused(hf_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert", "from-hf", str(hf_dir), str(out)]) != 0
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
