"""Bad-input battery, checkpoints and `convert`: a damaged newest step falls back (or is an
error with --strict), an empty folder is no checkpoint, malformed HF configs are one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from bad_input_fixtures import (
    DAMAGE,
    REPO,
    damage,
    digest,
    generate_args,
    one_line_error,
    run_out,
    text_assets,
    two_step_models,
)

from lwm.cli.main import main

__all__ = ["text_assets", "two_step_models"]  # fixtures in use


@pytest.fixture(scope="module")
def step3_outputs(two_step_models, tmp_path_factory):
    """What the intact step-3-only checkpoint gives: greedy ids, and its HF export."""
    _, only3 = two_step_models
    hf = tmp_path_factory.mktemp("hf3") / "hf"
    run_out(["convert", "to-hf", str(only3), str(hf)])
    return {
        "generate": run_out(generate_args(only3)),
        "to-hf": (hf / "model.safetensors").read_bytes(),
    }


# Every damage through `convert to-hf` (no compile: cheap), the worst one through `generate` too.
FALLBACK_CASES = [(how, "to-hf") for how in DAMAGE] + [("truncated data file", "generate")]


@pytest.mark.parametrize("how,command", FALLBACK_CASES)
def test_damaged_newest_step_falls_back(
    tmp_path, two_step_models, step3_outputs, capsys, how, command
):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(two_step_models[0], ckpt)
    damage(ckpt / "6", how)
    before = digest(ckpt)
    capsys.readouterr()
    hf = tmp_path / "hf"
    argv = (
        generate_args(ckpt) if command == "generate" else ["convert", "to-hf", str(ckpt), str(hf)]
    )
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("checkpoint step 6 unreadable (") and DAMAGE[how] in lines[0]
    assert lines[0].endswith("; using step 3")
    if command == "generate":
        assert captured.out == step3_outputs["generate"]  # step 3's weights answered
    else:
        assert (hf / "model.safetensors").read_bytes() == step3_outputs["to-hf"]
    assert digest(ckpt) == before  # nothing deleted or written


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_newest_step_strict_is_an_error(tmp_path, two_step_models, capsys, how):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(two_step_models[0], ckpt)
    damage(ckpt / "6", how)
    before = digest(ckpt)
    capsys.readouterr()
    rc = main(generate_args(ckpt, "--strict"))
    line = one_line_error(capsys, 2, rc, "checkpoint step 6", "unreadable", DAMAGE[how], "strict")
    assert "newest readable: step 3" in line
    assert capsys.readouterr().out == ""
    assert digest(ckpt) == before


def test_empty_folder_as_checkpoint(tmp_path):
    """Subprocess: the old failure was a traceback at interpreter shutdown, after the message."""
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "lwm.cli.main", *_perplexity_args(empty, tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"lwm perplexity: error: no checkpoint in {empty}"]
    assert list(empty.iterdir()) == [] and not (tmp_path / "out").exists()


def _perplexity_args(ckpt, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 50)
    return ["perplexity", "--checkpoint", str(ckpt), "--text", str(text), "--lengths", "8"] + [
        "--segment",
        "4",
        "--out",
        str(tmp_path / "out"),
    ]


def test_from_hf_refuses_disagreeing_rope_spellings(tmp_path, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "rope_scaling": {"type": "linear", "factor": 4.0},
    }
    (hf / "config.json").write_text(json.dumps(config))
    before = digest(tmp_path)
    rc = main(["convert", "from-hf", str(hf), str(tmp_path / "out")])
    one_line_error(
        capsys,
        2,
        rc,
        "config.json's RoPE spellings disagree (rope_parameters: plain RoPE, theta 10000; "
        "rope_scaling: linear x4, theta 10000)",
    )
    assert digest(tmp_path) == before


def test_shared_files_are_0644(tmp_path, text_assets):
    from lwm.data.tokenizer import train_tokenizer

    tok = train_tokenizer([text_assets["text"]], 300, tmp_path / "t.model")
    assert (tok.path.stat().st_mode & 0o777) == 0o644
    assert main(["convert", "to-hf", str(text_assets["fits"]), str(tmp_path / "hf")]) == 0
    for f in (tmp_path / "hf").iterdir():
        assert (f.stat().st_mode & 0o777) == 0o644, f
