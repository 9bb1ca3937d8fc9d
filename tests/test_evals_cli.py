"""`lwm needle` / `lwm perplexity` end to end on a tiny random checkpoint: outputs, bad input,
batching that does not change greedy answers, and perplexity against a direct computation."""

import json
import shutil

import numpy as np
import pytest

from lwm.cli.main import main as lwm_main
from lwm.data.tokenizer import train_tokenizer
from lwm.demo.data import write_corpus


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from lwm.models.config import ModelConfig
    from lwm.models.io import save_model
    from lwm.models.transformer import init_model

    d = tmp_path_factory.mktemp("evals_cli")
    write_corpus(d / "c.txt", 3000)
    tok = train_tokenizer([d / "c.txt"], 768, d / "t.model")
    cfg = ModelConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        max_sequence_length=512,
    )
    save_model(d / "model", init_model(cfg, seed=0))
    shutil.copy(tok.path, d / "model" / "tokenizer.model")
    return d / "model", tok


def test_needle_cli_outputs_skip_and_batching(ckpt, tmp_path, capsys):
    path, _ = ckpt
    base = ["needle", "--checkpoint", str(path), "--depths", "0,1", "--samples", "2"]
    assert lwm_main([*base, "--lengths", "128,4k", "--out", str(tmp_path / "x")]) == 2
    assert "max_sequence_length 512" in capsys.readouterr().err
    out3 = tmp_path / "b3"
    args = [*base, "--lengths", "128,4k", "--skip-too-long", "--max-new-tokens", "4"]
    assert lwm_main([*args, "--batch-size", "3", "--out", str(out3)]) == 0
    captured = capsys.readouterr()
    assert "skipping length 4096" in captured.err and "overall" in captured.out
    assert (out3 / "heatmap.png").stat().st_size > 5000
    summary = json.loads((out3 / "summary.json").read_text())
    assert summary["lengths"] == [128] and np.sum(summary["counts"]) == 4
    recs3 = [json.loads(line) for line in (out3 / "results.jsonl").read_text().splitlines()]
    assert len(recs3) == 4 and all(r["prompt_tokens"] < r["length"] for r in recs3)
    # One prompt at a time (no padding, no left padding) gives the same greedy answers.
    out1 = tmp_path / "b1"
    assert lwm_main([*args, "--batch-size", "1", "--out", str(out1)]) == 0
    recs1 = [json.loads(line) for line in (out1 / "results.jsonl").read_text().splitlines()]
    assert [r["output"] for r in recs1] == [r["output"] for r in recs3]
    assert any(r["output"] for r in recs1)


def test_needle_cli_bad_haystack(ckpt, tmp_path, capsys):
    path, _ = ckpt
    (tmp_path / "empty").mkdir()
    code = lwm_main(
        [
            "needle",
            "--checkpoint",
            str(path),
            "--lengths",
            "128",
            "--haystack",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "holds no text" in capsys.readouterr().err


def test_perplexity_matches_direct_computation(ckpt, tmp_path, capsys):
    import jax

    from lwm.evals.perplexity import context_perplexity, segment_nll_fn
    from lwm.models.io import load_model

    path, tok = ckpt
    text = tmp_path / "c.txt"
    from lwm.data.synth import random_sentences

    text.write_text(" ".join(random_sentences(400, seed=3)))
    tokens = np.asarray(tok.encode(text.read_text(), bos=True))
    model = load_model(path)
    forward = jax.jit(lambda x: model(x).logits)
    points = context_perplexity(segment_nll_fn(model), tokens, [64, 128], segment=32, windows=2)
    # Direct: full-length logits, log-softmax in numpy, same scored targets.
    ends = np.linspace(128, len(tokens) - 1, 2).round().astype(int)
    for p in points:
        nll = []
        for e in ends:
            window = tokens[e - p.length : e + 1]
            logits = np.asarray(forward(window[None, :-1]), np.float64)[0]
            logp = (
                logits
                - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
                - logits.max(-1, keepdims=True)
            )
            targets = window[1:]
            nll += list(-logp[np.arange(len(targets)), targets][-32:])
        assert p.tokens == 64 and p.nll == pytest.approx(np.mean(nll), rel=1e-5)
    out = tmp_path / "ppl"
    assert (
        lwm_main(
            [
                "perplexity",
                "--checkpoint",
                str(path),
                "--text",
                str(text),
                "--lengths",
                "64,128",
                "--segment",
                "32",
                "--windows",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads((out / "perplexity.json").read_text())["points"]
    assert [r["length"] for r in rows] == [64, 128]
    assert [r["nll"] for r in rows] == pytest.approx([p.nll for p in points], rel=1e-5)
    assert (out / "perplexity.png").is_file() and "perplexity" in capsys.readouterr().out
    assert (
        lwm_main(
            [
                "perplexity",
                "--checkpoint",
                str(path),
                "--text",
                str(text),
                "--lengths",
                "100000",
                "--out",
                str(out),
            ]
        )
        == 2
    )
