"""`lwm convert from-lwm`: LWM streaming msgpack checkpoints (written by tests/lwm_fixtures.py from
a random HF LLaMA) convert to lwm checkpoints whose logits equal transformers' (torch CPU, fp32)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from hf_fixtures import hf_logits, save_hf_llama  # noqa: E402
from lwm_fixtures import (  # noqa: E402
    hf_state_dict,
    lwm_params_from_hf,
    scan,
    write_lwm_checkpoint,
    write_stream,
)

import lwm  # noqa: E402
from lwm.cli.main import main  # noqa: E402
from lwm.models.io import load_params_numpy  # noqa: E402

# LWM's architecture: no GQA, rms_norm_eps 1e-6.
HF = dict(num_key_value_heads=4, rms_norm_eps=1e-6)
MODEL = [
    "--config.model.vocab_size=128",
    "--config.model.hidden_size=64",
    "--config.model.intermediate_size=96",
    "--config.model.num_layers=2",
    "--config.model.num_heads=4",
    "--config.model.num_kv_heads=4",
    "--config.model.rms_norm_eps=1e-6",
    "--config.model.rope_theta=50000.0",
    "--config.model.max_sequence_length=256",
]
VISION = [
    "--config.model.vision_vocab_size=24",
    "--config.model.vision_eof_id=16",
    "--config.model.vision_eov_id=17",
]
TOKENS = np.random.default_rng(0).integers(0, 128, size=(2, 29)).astype(np.int32)


@pytest.fixture(scope="module")
def hf_fp32(tmp_path_factory):
    return save_hf_llama(tmp_path_factory.mktemp("hf") / "fp32", seed=1, **HF)


@pytest.fixture(scope="module")
def hf_bf16(tmp_path_factory):
    """A HF model whose weights are exactly representable in bf16 (the oracle for bf16 files)."""
    import torch
    from transformers import LlamaForCausalLM

    src = save_hf_llama(tmp_path_factory.mktemp("hf") / "src", seed=2, **HF)
    model = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    out = tmp_path_factory.mktemp("hf") / "bf16"
    model.save_pretrained(out)
    return out


def _convert(src, out, *extra) -> int:
    return main(["convert", "from-lwm", str(src), str(out), "--config", "debug", *MODEL, *extra])


def _max_diff(out, hf_dir) -> float:
    ours = np.asarray(lwm.load_model(out)(jnp.asarray(TOKENS)).logits)
    return float(np.max(np.abs(ours - hf_logits(hf_dir, TOKENS))))


def test_scanned_fp32_params_file(hf_fp32, tmp_path):
    sd, cfg = hf_state_dict(hf_fp32)
    f = write_lwm_checkpoint(tmp_path / "streaming_params", scan(lwm_params_from_hf(sd, cfg), 2))
    out = tmp_path / "ckpt"
    assert _convert(f"params::{f}", out) == 0
    assert _max_diff(out, hf_fp32) <= 1e-4


def test_unscanned_bf16_trainstate_chunked_into_scanned_model(hf_bf16, tmp_path):
    """Per-layer keys in a full train state (bf16, leaves split into chunks) -> a scanned model."""
    sd, cfg = hf_state_dict(hf_bf16)
    f = write_lwm_checkpoint(
        tmp_path / "streaming_train_state",
        lwm_params_from_hf(sd, cfg),
        dtype=ml_dtypes.bfloat16,
        layout="trainstate",
        chunk_bytes=1000,
    )
    out = tmp_path / "ckpt"
    assert _convert(f"trainstate_params::{f}", out, "--config.model.scan_layers=True") == 0
    params, stored = load_params_numpy(out)
    assert stored.scan_layers and params["blocks"]["attn"]["wq"].shape == (2, 64, 4, 16)
    assert params["embed"]["text"].dtype == np.float32
    assert _max_diff(out, hf_bf16) <= 1e-4


def test_vision_model_bare_path_bf16(hf_bf16, tmp_path):
    sd, cfg = hf_state_dict(hf_bf16)
    params = scan(lwm_params_from_hf(sd, cfg), 2)
    rng = np.random.default_rng(3)
    vte = rng.normal(size=(24, 64)).astype(ml_dtypes.bfloat16)
    vhead = rng.normal(size=(64, 24)).astype(ml_dtypes.bfloat16)
    params[("transformer", "vte", "embedding")] = vte
    params[("vision_head", "kernel")] = vhead
    f = write_lwm_checkpoint(
        tmp_path / "params", params, dtype=ml_dtypes.bfloat16, layout="trainstate"
    )
    out = tmp_path / "ckpt"
    assert _convert(f, out, *VISION, "--param-dtype", "bfloat16") == 0
    got, stored = load_params_numpy(out)
    assert stored.vision_vocab_size == 24 and stored.param_dtype == "bfloat16"
    np.testing.assert_array_equal(got["embed"]["vision"], vte)
    np.testing.assert_array_equal(got["vision_head"], vhead)
    # bf16 storage of bf16-exact weights: the same text logits as transformers.
    assert _max_diff(out, hf_bf16) <= 1e-4


def test_bad_inputs_one_line_errors_nothing_written(hf_fp32, tmp_path, capsys):
    sd, cfg = hf_state_dict(hf_fp32)
    good = scan(lwm_params_from_hf(sd, cfg), 2)
    out = tmp_path / "ckpt"

    def fails(src, *extra) -> str:
        capsys.readouterr()
        assert _convert(src, out, *extra) == 2
        assert not out.exists() and not list(tmp_path.glob(".ckpt*"))
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
        return err

    extra = write_lwm_checkpoint(
        tmp_path / "extra", {**good, ("transformer", "h", "scan_decoder", "attention", "bq"): 0}
    )
    assert "unexpected tensor transformer/h/scan_decoder/attention/bq" in fails(extra)
    bad_shape = dict(good)
    bad_shape[("lm_head", "kernel")] = np.zeros((64, 100), np.float32)
    err = fails(write_lwm_checkpoint(tmp_path / "shape", bad_shape))
    assert "lm_head/kernel has shape (64, 100), expected (64, 128)" in err
    missing = {k: v for k, v in good.items() if k[-2] != "ffn_norm"}
    err = fails(write_lwm_checkpoint(tmp_path / "missing", missing))
    assert "transformer/h/scan_decoder/ffn_norm/kernel (shape (2, 64)) missing" in err
    # A text file, a truncated file, a vision file into a text preset.
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    assert "not an LWM streaming msgpack checkpoint" in fails(tmp_path / "notes.txt")
    full = write_lwm_checkpoint(tmp_path / "full", good).read_bytes()
    (tmp_path / "cut").write_bytes(full[: len(full) - 100])
    assert "truncated" in fails(tmp_path / "cut")
    vision = {**good, ("transformer", "vte", "embedding"): np.zeros((24, 64), np.float32)}
    err = fails(write_stream(tmp_path / "vision", vision.items()))
    assert "vision_vocab_size" in err
    assert "unsupported LWM checkpoint type" in fails(f"flax_params::{tmp_path / 'full'}")
    # An existing non-empty output is refused and left alone.
    out.mkdir()
    (out / "keep").write_text("x")
    assert _convert(tmp_path / "full", out) == 2
    assert (out / "keep").read_text() == "x"
