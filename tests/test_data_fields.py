"""LWM field syntax: `[a+b],c`, literal BOS/EOS, vision fields with frame subsampling."""

import numpy as np
import pytest

from lwm.data.fields import ExampleEncoder, parse_fields, subsample_frames
from lwm.data.synth import write_text_corpus
from lwm.data.tokenizer import VISION_END, VISION_START, train_tokenizer
from lwm.errors import LwmError


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("fields")
    write_text_corpus(d / "c.txt", 5000)
    return train_tokenizer([d / "c.txt"], 500, d / "t.model")


def test_bracketed_joined_subfields_then_field(tok):
    enc = ExampleEncoder(tok, "[a+b],c", subfield_separator=" | ", add_bos=False, add_eos=False)
    ex = enc({"a": "the river", "b": "a red kite", "c": "the harbour"})
    prompt = tok.encode("the river | a red kite")  # joined before tokenizing
    answer = tok.encode("the harbour")
    assert ex.tokens.tolist() == prompt + answer
    assert ex.loss_mask.tolist() == [0] * len(prompt) + [1] * len(answer)
    assert not ex.vision_mask.any()
    assert ex.tokens.dtype == np.int32


def test_literal_bos_eos_and_default_bos_eos(tok):
    enc = ExampleEncoder(tok, "[<|bos|>],q,<|eos|>", add_bos=False, add_eos=False)
    ex = enc({"q": "here we go"})
    q = tok.encode("here we go")
    assert ex.tokens.tolist() == [tok.bos_id, *q, tok.eos_id]
    assert ex.loss_mask.tolist() == [0, *[1] * len(q), 1]
    ex = ExampleEncoder(tok, "[q],a")({"q": "x", "a": "y"})  # defaults: BOS (mask 0), EOS (mask 1)
    assert ex.tokens[0] == tok.bos_id and ex.tokens[-1] == tok.eos_id
    assert ex.loss_mask[0] == 0 and ex.loss_mask[-1] == 1


def test_vision_field_frames_markers_and_subsampling(tok):
    tpf = 4
    frames = [[f * 10 + j for j in range(tpf)] for f in range(7)]
    enc = ExampleEncoder(
        tok,
        "[vision+question],answer",
        tokens_per_frame=tpf,
        max_n_frames=3,
        add_bos=False,
        add_eos=False,
    )
    flat = [c for fr in frames for c in fr]
    ex = enc({"vision": flat, "question": "what is seen", "answer": "a folded map"})
    vs, ve = tok.encode(VISION_START), tok.encode(VISION_END)
    kept = [0, 3, 6]  # evenly spaced, first and last included
    vision = []
    for i, f in enumerate(kept):
        vision += frames[f] + [8193 if i == len(kept) - 1 else 8192]
    q, a = tok.encode("what is seen"), tok.encode("a folded map")
    assert ex.tokens.tolist() == vs + vision + ve + q + a
    assert ex.vision_mask.tolist() == [0] * len(vs) + [1] * len(vision) + [0] * (
        len(ve) + len(q) + len(a)
    )
    assert ex.loss_mask.tolist() == [0] * (len(vs) + len(vision) + len(ve) + len(q)) + [1] * len(a)
    # A list of frames gives the same result as the flat list.
    assert (
        enc(
            {"vision": frames, "question": "what is seen", "answer": "a folded map"}
        ).tokens.tolist()
        == ex.tokens.tolist()
    )


def test_subsample_frames():
    assert subsample_frames(5, 0).tolist() == [0, 1, 2, 3, 4]
    assert subsample_frames(5, 8).tolist() == [0, 1, 2, 3, 4]
    assert subsample_frames(100, 4).tolist() == [0, 33, 66, 99]


def test_bad_specs_and_values(tok):
    for spec in ("", "[a", "a,,b", "a+", "[a]]"):
        with pytest.raises(LwmError):
            parse_fields(spec)
    enc = ExampleEncoder(tok, "[q],a", tokens_per_frame=4)
    with pytest.raises(LwmError, match="missing field 'a'"):
        enc({"q": "x"})
    with pytest.raises(LwmError, match="outside the text vocabulary"):
        enc({"q": "x", "a": [5, 100000]})
    venc = ExampleEncoder(tok, "vision", tokens_per_frame=4)
    with pytest.raises(LwmError, match="outside the vision codebook"):
        venc({"vision": [1, 2, 3, 8192]})
    with pytest.raises(LwmError, match="not a multiple"):
        venc({"vision": [1, 2, 3]})
    assert ExampleEncoder(tok, "a")({"a": [7, 8]}).tokens.tolist() == [tok.bos_id, 7, 8, tok.eos_id]
