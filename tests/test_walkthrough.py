"""The commands of docs/train-on-your-data.md (its walkthrough block), run exactly as written
(in-process, in a fresh folder holding only a link to `data/`), and each example file of `data/`
builds."""

from __future__ import annotations

import json
import os
import pathlib
import shlex

import pytest

from lwm.cli.main import main

REPO = pathlib.Path(__file__).resolve().parent.parent
FAST = ["--config.train.progress_bar=False", "--config.train.peak_flops=1e12"]


def walkthrough_commands() -> list[list[str]]:
    text = (REPO / "docs" / "train-on-your-data.md").read_text()
    block = text.split("<!-- walkthrough:start -->")[1].split("<!-- walkthrough:end -->")[0]
    lines = [x.strip() for x in block.splitlines() if x.strip().startswith("lwm ")]
    return [shlex.split(x)[1:] for x in lines]


@pytest.fixture
def in_fresh_dir(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


def test_guide_walkthrough_runs_as_written(in_fresh_dir, capsys):
    commands = walkthrough_commands()
    assert [c[0] for c in commands] == ["data", "tokenizer", "data", "train", "generate", "needle"]
    for argv in commands:
        # Only what keeps the suite quiet and quick is added (no progress bar, no peak-FLOPs
        # probe); the command is otherwise as printed.
        extra = FAST if argv[0] == "train" else []
        assert main([*argv, *extra]) == 0, (argv, capsys.readouterr().err[-2000:])
        out = capsys.readouterr()
        if argv[0] == "data" and argv[1] == "build":
            assert "Downloading and preparing" not in out.out + out.err  # TFDS kept quiet
        if argv[0] == "generate":
            assert out.out.strip()  # some text came out
    run = in_fresh_dir / "my" / "run"
    assert (run / "tokenizer.model").read_bytes() == (
        in_fresh_dir / "my/tokenizer.model"
    ).read_bytes()
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["source"] == "dataset" and config["data"]["path"] == "my/dataset"
    records = [json.loads(x) for x in (in_fresh_dir / "my/needle/results.jsonl").open()]
    assert len(records) == 2


BUILDS = {
    "text.jsonl": ["--fields", "[question],answer"],
    "vision_text.jsonl": ["--fields", "[vision],caption", "--tokens-per-frame", "4"]
    + ["--vision-eof-id", "64", "--vision-eov-id", "65"],
    "needle_tasks.jsonl": ["--fields", "[context+question],answer"],
}


@pytest.mark.parametrize("name", list(BUILDS))
def test_example_records_build(tmp_path, name, capsys):
    from lwm.data.tokenizer import train_tokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text((REPO / "data" / "needle_tasks.jsonl").read_text())
    tok = train_tokenizer([corpus], 400, tmp_path / "t.model")
    out = tmp_path / "ds"
    args = ["data", "build", "--input", str(REPO / "data" / name), "--tokenizer", str(tok.path)]
    assert main([*args, "--out", str(out), *BUILDS[name]]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["num_examples"] == len((REPO / "data" / name).read_text().splitlines())
    assert meta["skipped_lines"] == 0
    if "vision" in name:
        assert meta["num_vision_tokens"] > 0
