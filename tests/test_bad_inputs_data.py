"""Bad-input battery, `lwm data`: one line instead of a traceback, no input or foreign file ever
deleted (an --out that is, holds or lies inside an input is refused before any work; --overwrite
replaces only a dataset an earlier build wrote), and a stage that drops every record stops."""

from __future__ import annotations

import json
import shutil

import pytest
from bad_input_fixtures import (
    TRAIN_FAST,
    digest,
    one_line_error,
    text_assets,
)

from lwm.cli.main import main

__all__ = ["text_assets"]  # fixtures in use

BAD_JSONL = {
    "empty": (b"", [], "no examples in", "(empty: no records)"),
    "non-UTF-8": (b'\xff\xfe{"text": "a"}\n', [], ".jsonl:1: not UTF-8 (byte 0xff at offset 0)"),
    "nested 100,000 deep": (
        b'{"text": "ok"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        [],
        ".jsonl:2: not valid JSON (nested deeper than about 1000 levels)",
    ),
    "non-UTF-8 --skip-bad": (
        b'\xff{"text": "a"}\n{"other": 1}\n',
        ["--skip-bad"],
        "no examples in",
        "all 2 non-empty lines bad, skipped by --skip-bad",
    ),
}


@pytest.mark.parametrize("case", list(BAD_JSONL))
def test_data_build_bad_jsonl(text_assets, tmp_path, capsys, case):
    data, extra, *needles = BAD_JSONL[case]
    src = tmp_path / "in.jsonl"
    src.write_bytes(data)
    before = digest(tmp_path)
    out = tmp_path / "ds"
    args = ["data", "build", "--input", str(src), "--tokenizer", str(text_assets["tok"])]
    rc = main([*args, "--out", str(out), *extra])
    one_line_error(capsys, 2, rc, "lwm data: error:", *needles)
    assert digest(tmp_path) == before  # no dataset, no temporary folder


def _build(tok, src, out, *extra) -> list[str]:
    return [
        "data",
        "build",
        "--input",
        str(src),
        "--tokenizer",
        str(tok),
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def corpus_jsonl(tmp_path_factory, text_assets):
    """A 20-record jsonl of text_assets' corpus and the dataset built from it."""
    root = tmp_path_factory.mktemp("build")
    lines = text_assets["text"].read_text().splitlines()[:20]
    src = root / "in.jsonl"
    src.write_text("".join(json.dumps({"text": x}) + "\n" for x in lines))
    assert main(_build(text_assets["tok"], src, root / "ds")) == 0
    return src, root / "ds"


def _input_dir(tmp_path, corpus_jsonl):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(corpus_jsonl[0], d / "a.jsonl")
    return d


# (input, out) relative to tmp_path -> words of the refusal
OUT_IS_INPUT = {
    "out is the input folder": ("in", "in", "is the input"),
    "out inside the input folder": ("in", "in/ds", "is inside the input directory"),
    "out holds the input file": ("in/a.jsonl", "in", "contains the input"),
    "out is the input file": ("in/a.jsonl", "in/a.jsonl", "is the input"),
    "out is a link to the input folder": ("in", "link", "is the input"),
}


@pytest.mark.parametrize("case", list(OUT_IS_INPUT))
def test_data_build_out_is_input_refused(text_assets, corpus_jsonl, tmp_path, capsys, case):
    """The old behaviour: --overwrite deleted the input folder and left only the dataset."""
    src, out, words = OUT_IS_INPUT[case]
    _input_dir(tmp_path, corpus_jsonl)
    (tmp_path / "link").symlink_to(tmp_path / "in")
    before = digest(tmp_path)
    capsys.readouterr()
    rc = main(_build(text_assets["tok"], tmp_path / src, tmp_path / out, "--overwrite"))
    one_line_error(capsys, 2, rc, "lwm data: error: --out ", words, "outside the inputs")
    assert digest(tmp_path) == before


def test_data_build_overwrite_keeps_foreign_files(text_assets, corpus_jsonl, tmp_path, capsys):
    src, built = corpus_jsonl
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    mixed = tmp_path / "mixed"
    shutil.copytree(built, mixed)
    (mixed / "keep.txt").write_text("mine too")
    a_file = tmp_path / "a.txt"
    a_file.write_text("not a dataset")
    before = digest(tmp_path)
    capsys.readouterr()
    for out, words in [
        (foreign, "is not a dataset written by `lwm data build` (e.g. notes.txt, 1 in all)"),
        (mixed, "holds files not written by `lwm data build` (e.g. keep.txt, 1 in all)"),
        (a_file, "is a file, not a dataset"),
    ]:
        rc = main(_build(text_assets["tok"], src, out, "--overwrite"))
        one_line_error(capsys, 2, rc, f"--out {out} ", words)
    assert digest(tmp_path) == before


def test_data_build_overwrite_replaces_its_own_dataset(text_assets, corpus_jsonl, tmp_path):
    src, built = corpus_jsonl
    meta = json.loads((built / "metadata.json").read_text())
    assert sorted(meta["files"]) == sorted(p.name for p in built.iterdir())
    legacy = tmp_path / "legacy"  # built before metadata.json listed its files
    shutil.copytree(built, legacy)
    (legacy / "metadata.json").write_text(
        json.dumps({k: v for k, v in meta.items() if k != "files"})
    )
    (legacy / "lwm_tokens-train.array_record-00001-of-00002").write_bytes(b"old shard")
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (legacy, empty):
        assert main(_build(text_assets["tok"], src, out, "--overwrite", "--fields", "text")) == 0
        assert digest(out) == digest(built)  # the same dataset, nothing of the old one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "legacy"]  # no temporary


def test_min_example_len_dropping_every_record_stops(corpus_jsonl, tmp_path, capsys):
    """The old behaviour: the loader read the endless stream forever, dropping every record."""
    wd = tmp_path / "wd"
    args = ["train", "--config", "train_debug", "--workdir", str(wd), "--max-steps", "2"]
    data = ["--config.data.source=dataset", f"--config.data.path={corpus_jsonl[1]}"]
    rc = main([*args, *TRAIN_FAST, *data, "--config.data.min_example_len=1000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err[-1].startswith(
        "lwm train: error: stages[0] data: every one of the 20 examples is shorter than "
        "data.min_example_len 1000 (the longest has "
    )
    assert err[-1].endswith("tokens): nothing to read, it would loop forever")
    assert all(x.startswith("lwm train: stage ") for x in err[:-1])  # the stage's banner


def test_long_examples_drop_of_every_record_stops(corpus_jsonl):
    from lwm.data.loader import make_host_iterator
    from lwm.errors import LwmError

    cfg = dict(source="dataset", path=str(corpus_jsonl[1]), long_examples="drop", prefetch=0)
    it = make_host_iterator(cfg, seq_len=4, batch_size=2, seed=0, name="stages[2] data")
    with pytest.raises(
        LwmError, match=r"^stages\[2\] data: every one of the 20 examples is longer "
    ):
        next(it)
