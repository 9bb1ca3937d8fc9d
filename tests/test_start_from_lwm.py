"""The "Start from LLaMA-2 / LWM" walkthrough (docs/start-from-a-model.md) on a tiny model:
convert an LWM Jax checkpoint, plan, fine-tune from it (`--init-from`), evaluate the run
(`lwm perplexity`)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from hf_fixtures import save_hf_llama  # noqa: E402
from lwm_fixtures import hf_state_dict, lwm_params_from_hf, scan, write_lwm_checkpoint  # noqa: E402

from lwm.cli.main import main  # noqa: E402
from lwm.data.tokenizer import train_tokenizer  # noqa: E402
from lwm.demo.data import write_corpus  # noqa: E402
from lwm.training.metrics import read_metrics  # noqa: E402


def test_convert_plan_finetune_evaluate(tmp_path, capsys):
    write_corpus(tmp_path / "book.txt", 3000)
    tok = train_tokenizer([tmp_path / "book.txt"], 768, tmp_path / "tokenizer.model")
    hf = save_hf_llama(tmp_path / "hf", seed=7, vocab_size=tok.vocab_size, num_key_value_heads=4)
    sd, cfg = hf_state_dict(hf)
    jax_ckpt = write_lwm_checkpoint(tmp_path / "params", scan(lwm_params_from_hf(sd, cfg), 2))
    model = [
        f"--config.model.{k}={v}"
        for k, v in dict(
            vocab_size=tok.vocab_size,
            hidden_size=64,
            intermediate_size=96,
            num_layers=2,
            num_heads=4,
            num_kv_heads=4,
            rope_theta=50000.0,
            max_sequence_length=256,
        ).items()
    ]
    # 1. LWM Jax checkpoint -> lwm checkpoint (the preset decides the shapes).
    ckpt = tmp_path / "ckpt"
    assert (
        main(["convert", "from-lwm", f"params::{jax_ckpt}", str(ckpt), "--config", "debug", *model])
        == 0
    )
    # 2. Per-device memory of the fine-tuning run.
    run = [
        "--config.train.steps=2",
        "--config.train.seq_len=64",
        "--config.train.batch_tokens=512",
        "--config.train.progress_bar=False",
        "--config.train.peak_flops=1e12",
    ]
    capsys.readouterr()
    assert main(["plan", "--config", "train_debug", "--json", *model, *run]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["seq_len"] == 64 and plan["memory"]["temporaries"] > 0
    # 3. Fine-tune from the converted params.
    wd = tmp_path / "run"
    args = ["train", "--config", "train_debug", "--workdir", str(wd), "--init-from", str(ckpt)]
    assert main([*args, *model, *run]) == 0
    assert [m["step"] for m in read_metrics(wd / "metrics.jsonl")] == [1, 2]
    assert json.loads((wd / "config.json").read_text())["train"]["init_from"] == str(ckpt)
    # 4. Evaluate the run's last checkpoint.
    out = tmp_path / "ppl"
    ppl = ["perplexity", "--checkpoint", str(wd), "--tokenizer", str(tok.path)]
    ppl += ["--text", str(tmp_path / "book.txt"), "--lengths", "64,128", "--segment", "32"]
    assert main([*ppl, "--windows", "2", "--out", str(out)]) == 0
    rows = json.loads((out / "perplexity.json").read_text())["points"]
    assert [r["length"] for r in rows] == [64, 128] and all(r["nll"] > 0 for r in rows)
