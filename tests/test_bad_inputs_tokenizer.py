"""Bad-input battery, the other commands that write an `--out` from inputs (`tokenizer train`,
`data synth`, `video tokenize`): an --out that is an input is refused before any work, --overwrite
never replaces a foreign file; `tokenizer train` says when the corpus cannot give the vocabulary
asked for (or refuses with --strict-vocab), and an empty corpus is one line."""

from __future__ import annotations

import pytest
from bad_input_fixtures import digest, one_line_error, text_assets

from lwm.cli.main import main
from lwm.data.tokenizer import load_tokenizer

__all__ = ["text_assets"]  # fixtures in use


def _train(src, out, vocab, *extra) -> list[str]:
    args = ["tokenizer", "train", "--input", str(src), "--vocab-size", str(vocab)]
    return [*args, "--out", str(out), *extra]


def test_vocab_larger_than_the_corpus_gives_says_so(text_assets, tmp_path, capsys):
    out = tmp_path / "t.model"
    rc = main(_train(text_assets["text"], out, 100_000))
    captured = capsys.readouterr()
    assert rc == 0
    reached = load_tokenizer(out).vocab_size
    assert 300 < reached < 100_000
    assert captured.err.strip().splitlines() == [
        f"lwm tokenizer: note: the corpus supports only {reached} pieces, not the 100000 "
        f"requested; wrote a {reached}-piece model (--strict-vocab refuses instead)"
    ]
    rc = main(_train(text_assets["text"], tmp_path / "s.model", 100_000, "--strict-vocab"))
    one_line_error(
        capsys, 2, rc, f"the corpus supports only {reached} pieces, not the 100000 requested"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.model"]  # nothing written
    assert main(_train(text_assets["text"], tmp_path / "r.model", 300, "--strict-vocab")) == 0
    assert capsys.readouterr().err == ""  # reached: no note


@pytest.mark.parametrize("content", ["", " \n\n\t\n"])
def test_tokenizer_train_on_empty_input(tmp_path, capsys, content):
    src = tmp_path / "empty.txt"
    src.write_text(content)
    rc = main(_train(src, tmp_path / "t.model", 300))
    one_line_error(capsys, 2, rc, "tokenizer training input has no text:", "empty.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def test_tokenizer_train_never_replaces_input_or_foreign_file(text_assets, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(text_assets["text"].read_bytes())
    notes = tmp_path / "notes.model"
    notes.write_text("my notes, not a model\n")
    before = digest(tmp_path)
    capsys.readouterr()
    rc = main(_train(corpus, corpus, 300, "--overwrite"))
    one_line_error(capsys, 2, rc, f"--out {corpus} is the input {corpus}")
    rc = main(_train(corpus, tmp_path, 300, "--overwrite"))
    one_line_error(capsys, 2, rc, f"--out {tmp_path} contains the input {corpus}")
    rc = main(_train(corpus, notes, 300, "--overwrite"))
    one_line_error(capsys, 2, rc, f"--out {notes} was not written by `lwm tokenizer train`")
    assert digest(tmp_path) == before
    model = tmp_path / "t.model"
    assert main(_train(corpus, model, 300)) == 0
    assert main(_train(corpus, model, 320, "--overwrite")) == 0  # its own model: replaced
    assert load_tokenizer(model).vocab_size == 320


def test_data_synth_never_replaces_input_or_foreign_file(text_assets, tmp_path, capsys):
    hay = tmp_path / "hay"
    hay.mkdir()
    (hay / "a.txt").write_text("The grass is green. The sky is blue.\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    before = digest(tmp_path)
    capsys.readouterr()
    needle = ["data", "synth", "needle", "--tokenizer", str(text_assets["tok"]), "--num", "1"]
    needle += ["--lengths", "512", "--haystack", str(hay), "--overwrite", "--out"]
    tok_before = digest(text_assets["tok"])
    rc = main([*needle, str(text_assets["tok"])])
    one_line_error(capsys, 2, rc, "is the input")
    assert digest(text_assets["tok"]) == tok_before
    rc = main([*needle, str(hay / "a.txt")])
    one_line_error(capsys, 2, rc, "is inside the input directory")
    text = ["data", "synth", "text", "--sentences", "20", "--overwrite", "--out"]
    rc = main([*text, str(notes)])
    one_line_error(capsys, 2, rc, "was not written by `lwm data synth text`")
    rc = main([*needle[:-1], "--out", str(notes)])
    one_line_error(capsys, 2, rc, "was not written by `lwm data synth needle`")
    assert digest(tmp_path) == before
    for argv in (needle[:-2], text[:-2]):  # their own outputs are replaced
        out = tmp_path / "own"
        assert main([*argv, "--out", str(out)]) == 0
        assert main([*argv, "--out", str(out), "--overwrite"]) == 0
        out.unlink()


def test_video_tokenize_never_replaces_input_or_foreign_file(tmp_path, capsys):
    """Checked before the VQGAN is loaded: a missing --vqgan is never reached."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 100)
    caps = tmp_path / "caps.jsonl"
    caps.write_text('{"video": "clip.mp4", "caption": "a clip"}\n')
    before = digest(tmp_path)
    capsys.readouterr()
    base = ["video", "tokenize", "--vqgan", str(tmp_path / "absent"), "--input", str(clip)]
    for extra, words in [
        (["--out", str(clip), "--overwrite"], "is the input"),
        (["--out", str(clip), "--resume"], "is the input"),
        (["--out", str(tmp_path), "--overwrite"], "contains the input"),
        (["--captions", str(caps), "--out", str(caps), "--overwrite"], "is the input"),
        (["--out", str(caps), "--overwrite"], "was not written by `lwm video tokenize`"),
    ]:
        rc = main([*base, *extra])
        one_line_error(capsys, 2, rc, "lwm video: error: --out ", words)
    assert digest(tmp_path) == before
