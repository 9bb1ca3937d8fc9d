"""Tokenizer: training (deterministic, in seconds), explicit BOS/EOS, vision markers, LLaMA-2."""

import hashlib
import time

import pytest

from lwm.cli.main import main as lwm_main
from lwm.data.synth import write_text_corpus
from lwm.data.tokenizer import (
    VISION_END,
    VISION_START,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from lwm.errors import LwmError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "corpus.txt"
    write_text_corpus(path, 20000, seed=0)
    return path


@pytest.fixture(scope="module")
def tok(corpus):
    return train_tokenizer([corpus], 600, corpus.parent / "tok.model")


def test_train_is_fast_and_deterministic(corpus, tmp_path):
    t0 = time.perf_counter()
    a = train_tokenizer([corpus], 600, tmp_path / "a.model", seed=3)
    assert time.perf_counter() - t0 < 10
    b = train_tokenizer([corpus], 600, tmp_path / "sub" / "b.model", seed=3)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a.path, b.path)]
    assert digest[0] == digest[1]
    assert a.vocab_size == 600


def test_encode_decode_bos_eos(tok):
    text = "The special magic Lisbon number is: 1234567."
    ids = tok.encode(text)
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == text
    assert tok.encode(text, bos=True) == [tok.bos_id, *ids]
    assert tok.encode(text, eos=True) == [*ids, tok.eos_id]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)
    # Digits are split so every 7-digit number is 7 pieces (+ the space marker).
    digits = [tok.id_to_piece(i).strip("▁") for i in tok.encode("1234567")]
    assert [d for d in digits if d] == list("1234567")
    # Byte fallback: unseen characters still round-trip.
    assert tok.decode(tok.encode("naïve 東京")) == "naïve 東京"


def test_vision_markers_are_single_pieces(tok):
    for marker in (VISION_START, VISION_END):
        ids = [i for i in tok.encode(marker) if tok.id_to_piece(i) != "▁"]
        assert len(ids) == 1 and tok.id_to_piece(ids[0]) == marker


def test_bad_inputs(tmp_path, corpus, tok):
    with pytest.raises(LwmError, match="not found"):
        load_tokenizer(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(LwmError, match="not a sentencepiece model"):
        load_tokenizer(tmp_path / "junk.model")
    with pytest.raises(LwmError, match="exists"):
        train_tokenizer([corpus], 600, tok.path)
    with pytest.raises(LwmError, match="too small"):
        train_tokenizer([corpus], 100, tmp_path / "x.model")


def test_cli_train_refuses_then_overwrites(corpus, tmp_path, capsys):
    out = tmp_path / "cli.model"
    args = ["tokenizer", "train", "--input", str(corpus), "--vocab-size", "500", "--out", str(out)]
    assert lwm_main(args) == 0
    assert lwm_main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert lwm_main([*args, "--overwrite"]) == 0
    assert load_tokenizer(out).vocab_size == 500


def test_llama2_tokenizer(llama2_tokenizer_path):
    tok = load_tokenizer(llama2_tokenizer_path)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (32000, 1, 2)
    # Reference ids of LLaMA-2's tokenizer (as published with the model).
    assert tok.encode("Hello world", bos=True) == [1, 15043, 3186]
    text = "The special magic Paris number is: 7654321."
    assert tok.decode(tok.encode(text, bos=True, eos=True)) == text
    # LWM's vision markers are plain text for LLaMA-2: several pieces, round-tripping.
    ids = tok.encode(VISION_START)
    assert len(ids) > 1 and tok.decode(ids) == VISION_START


def test_load_by_file_or_directory_and_save(tok, tmp_path):
    from lwm.data.sentencepiece_tokenizer import SentencePieceTokenizer
    from lwm.inference.runtime import load_tokenizer as runtime_load_tokenizer

    assert isinstance(tok, SentencePieceTokenizer) and tok.kind == "sentencepiece"
    assert (tok.add_bos, tok.eos_ids, tok.chat_template) == (True, (tok.eos_id,), None)
    assert tok.special_tokens == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    save_tokenizer(tok, tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["tokenizer.model"]
    assert (tmp_path / "d" / "tokenizer.model").read_bytes() == tok.path.read_bytes()
    save_tokenizer(tok, tmp_path / "d")  # same bytes: nothing to do
    text = "The special magic Lisbon number is: 1234567."
    for loaded in (
        load_tokenizer(tmp_path / "d"),
        runtime_load_tokenizer(None, str(tmp_path / "d")),
        runtime_load_tokenizer(str(tok.path), "unused"),
    ):
        assert loaded.kind == "sentencepiece" and loaded.encode(text) == tok.encode(text)
    (tmp_path / "d" / "tokenizer.model").write_bytes(b"other")
    with pytest.raises(LwmError, match="differs from .* not overwritten"):
        save_tokenizer(tok, tmp_path / "d")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(LwmError, match=r"expected a sentencepiece \.model, a tokenizer\.json"):
        load_tokenizer(tmp_path / "x.txt")
    with pytest.raises(LwmError, match="holds no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)
    with pytest.raises(LwmError, match=r"none found in .* \(pass --tokenizer PATH \(\.model"):
        runtime_load_tokenizer(None, str(tmp_path))
