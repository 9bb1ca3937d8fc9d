"""`lwm convert from-gguf`: GGUF files -> lwm checkpoints + tokenizer.json.

Oracles: transformers' own GGUF loader (`gguf_file=`) on the same file (its dequantization is
torch code independent of the `gguf` package lwm uses), the original random transformers model
for an unquantized file, the `tokenizers` tokenizer the file's vocabulary came from, and for the
real SmolLM2 file transformers' model and tokenizer built from it.
"""

from __future__ import annotations

import json

import gguf
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")
pytest.importorskip("gguf")

from gguf_fixtures import (  # noqa: E402
    SPECIALS,
    converted_smollm2,  # noqa: F401 - fixture
    hf_gguf_logits,
    llama_cpp_permute,
    real_text,
    smollm2_gguf_path,
    smollm2_hf_model,  # noqa: F401 - fixture
    smollm2_hf_tokenizer,  # noqa: F401 - fixture
    tiny_hf_model,
    train_byte_level_bpe,
    train_sentencepiece,
    write_gguf,
)

import lwm  # noqa: E402
from lwm.cli.main import main  # noqa: E402
from lwm.errors import LwmError  # noqa: E402
from lwm.interop.gguf_reader import llama3_factors, llama3_scaling_from_factors  # noqa: E402

MIXED = {  # every block-32 type lwm dequantizes, on different tensors of one file
    "token_embd.weight": "F16",
    "output.weight": "Q8_0",
    "attn_q.weight": "Q8_0",
    "attn_k.weight": "Q4_0",
    "attn_v.weight": "Q4_1",
    "attn_output.weight": "BF16",
    "ffn_up.weight": "Q8_0",
    "ffn_down.weight": "Q4_1",
}
K_QUANTS = {
    "token_embd.weight": "Q6_K",
    "attn_q.weight": "Q4_K",
    "attn_k.weight": "Q6_K",
    "attn_v.weight": "Q4_K",
    "attn_output.weight": "Q6_K",
    "ffn_gate.weight": "Q4_K",
    "ffn_up.weight": "Q6_K",
    "ffn_down.weight": "Q4_K",
}


@pytest.fixture(scope="module")
def bpe():
    return train_byte_level_bpe(320)


@pytest.fixture(scope="module")
def tokens_bt():
    return np.random.default_rng(0).integers(0, 320, size=(2, 41)).astype(np.int32)


def _convert(src, out, *extra):
    assert main(["convert", "from-gguf", str(src), str(out), *extra]) == 0
    return out


def _lwm_logits(ckpt, tokens_bt):
    return np.asarray(lwm.load_model(ckpt)(jnp.asarray(tokens_bt)).logits)


def test_permutation_is_llama_cpps_inverse():
    from lwm.interop.gguf_reader import unpermute_rows

    w = np.arange(4 * 8 * 3).reshape(4 * 8, 3)
    assert np.array_equal(unpermute_rows(llama_cpp_permute(w, 4), 4), w)
    assert not np.array_equal(llama_cpp_permute(w, 4), w)


def test_f32_file_matches_the_source_model(tmp_path, bpe, tokens_bt):
    """Unquantized: lwm's logits equal the transformers model the file was written from (checks
    names and the q/k un-permutation without trusting any GGUF reader)."""
    import torch

    model = tiny_hf_model(seed=1)
    src = write_gguf(tmp_path / "f32.gguf", model, types={}, tokenizer=bpe)
    ours = _lwm_logits(_convert(src, tmp_path / "ckpt"), tokens_bt)
    with torch.no_grad():
        theirs = model(torch.as_tensor(tokens_bt, dtype=torch.long)).logits.numpy()
    assert np.max(np.abs(ours - theirs)) <= 1e-4


@pytest.mark.parametrize(
    "types, overrides",
    [
        (MIXED, {}),
        (K_QUANTS, dict(hidden_size=256, intermediate_size=512, tie_word_embeddings=True)),
    ],
    ids=["f16-bf16-q8_0-q4_0-q4_1", "q4_k-q6_k-tied"],
)
def test_quantized_file_matches_transformers_gguf_loader(
    tmp_path, bpe, tokens_bt, types, overrides
):
    src = write_gguf(tmp_path / "m.gguf", tiny_hf_model(**overrides), types=types, tokenizer=bpe)
    out = _convert(src, tmp_path / "ckpt")
    assert lwm.load_model(out).config.tie_word_embeddings == overrides.get(
        "tie_word_embeddings", False
    )
    ours = _lwm_logits(out, tokens_bt)
    assert np.max(np.abs(ours - hf_gguf_logits(src, tokens_bt))) <= 1e-4


def test_qwen2_file_matches_transformers_gguf_loader(tmp_path, bpe, tokens_bt):
    """Qwen2: q/k/v biases, no q/k permutation in llama.cpp's converter."""
    model = tiny_hf_model(arch="qwen2", tie_word_embeddings=True)
    src = write_gguf(tmp_path / "q.gguf", model, types=MIXED, tokenizer=bpe, arch="qwen2")
    out = _convert(src, tmp_path / "ckpt")
    assert lwm.load_model(out).config.attention_bias
    ours = _lwm_logits(out, tokens_bt)
    assert np.max(np.abs(ours - hf_gguf_logits(src, tokens_bt))) <= 1e-4


def test_param_dtype_bfloat16(tmp_path, bpe, tokens_bt):
    src = write_gguf(tmp_path / "m.gguf", tiny_hf_model(), types=MIXED, tokenizer=bpe)
    f32 = _lwm_logits(_convert(src, tmp_path / "f32"), tokens_bt)
    out = _convert(src, tmp_path / "bf16", "--param-dtype", "bfloat16")
    from lwm.models.io import load_params_numpy

    params, cfg = load_params_numpy(out)
    assert cfg.param_dtype == "bfloat16"
    assert str(params["blocks"]["0"]["attn"]["wq"].dtype) == "bfloat16"
    bf16 = _lwm_logits(out, tokens_bt)
    assert 0 < np.max(np.abs(bf16 - f32)) <= 0.1


def test_tokenizer_files(tmp_path, bpe):
    """tokenizer.json gives the ids of the tokenizer the vocabulary came from and of
    transformers' GGUF tokenizer; the config files carry specials, BOS flag and template."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    src = write_gguf(tmp_path / "m.gguf", tiny_hf_model(), types={}, tokenizer=bpe)
    out = _convert(src, tmp_path / "ckpt")
    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=src.name)
    text = real_text(3000, start=300_000) + " <|im_start|>user\nhi<|im_end|> 2024 año\n"
    ids = ours.encode(text, add_special_tokens=False).ids
    assert ids == bpe.encode(text).ids
    assert ids == theirs(text, add_special_tokens=False)["input_ids"]
    assert ours.decode(ids, skip_special_tokens=False) == text
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<|im_start|>" and config["eos_token"] == "<|im_end|>"
    assert config["unk_token"] == "<|endoftext|>" and config["add_bos_token"] is False
    assert "<|im_start|>assistant" in config["chat_template"]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    assert {t.content for t in ours.get_added_tokens_decoder().values()} == set(SPECIALS)


def test_sentencepiece_tokenizer(tmp_path):
    """A `llama` (sentencepiece) vocabulary gives sentencepiece's own ids (and transformers')."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    sp = train_sentencepiece(tmp_path, 600)
    src = write_gguf(tmp_path / "m.gguf", tiny_hf_model(vocab_size=600), types={}, tokenizer=sp)
    out = _convert(src, tmp_path / "ckpt")
    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=src.name)
    text = real_text(3000, start=400_000)
    ids = ours.encode(text, add_special_tokens=False).ids
    assert ids == sp.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
    assert ours.decode(ids) == text
    odd = "  two  spaces 12345 ünïcödé 漢字\n\tend"  # leading spaces, digits, byte fallback
    assert ours.encode(odd, add_special_tokens=False).ids == sp.encode(odd)
    # A user-defined symbol in text is one id; the run after it gets the dummy prefix again,
    # as llama.cpp and LLaMA's own tokenizer.json do.
    ids = ours.encode("see <vision> 12", add_special_tokens=False).ids
    assert ids == sp.encode("see ") + [sp.piece_to_id("<vision>")] + sp.encode(" 12")
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["add_bos_token"]) == (
        "<s>",
        "</s>",
        True,
    )


def test_eot_token_joins_the_stop_ids(tmp_path, bpe):
    src = write_gguf(
        tmp_path / "m.gguf",
        tiny_hf_model(),
        types={},
        tokenizer=bpe,
        metadata=lambda w: w.add_eot_token_id(0),
    )
    out = _convert(src, tmp_path / "ckpt")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 0]


# --- RoPE metadata ------------------------------------------------------------------------------


def _rope_linear(w):
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(2.0)


def _rope_yarn(w):
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(4.0)
    w.add_rope_scaling_orig_ctx_len(32)


def _rope_llama3(w):  # llama.cpp writes Llama-3.1 scaling as a `rope_freqs` tensor only
    w.add_tensor("rope_freqs.weight", llama3_factors(16, 50000.0, 8.0, 1.0, 4.0, 64).astype("f4"))


@pytest.mark.parametrize(
    "scaling, metadata",
    [
        ({"rope_type": "linear", "factor": 2.0}, _rope_linear),
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}, _rope_yarn),
        (
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            _rope_llama3,
        ),
    ],
    ids=["linear", "yarn", "llama3"],
)
def test_rope_scaling_from_metadata(tmp_path, tokens_bt, scaling, metadata):
    """The file's RoPE scaling reaches lwm (oracle: the source model; transformers' GGUF loader
    ignores these keys)."""
    import torch

    model = tiny_hf_model(rope_scaling={**scaling, "rope_theta": 50000.0})
    src = write_gguf(tmp_path / "m.gguf", model, types={}, metadata=metadata)
    out = _convert(src, tmp_path / "ckpt")
    assert lwm.load_model(out).config.rope_scaling.kind == scaling["rope_type"]
    long_bt = np.tile(tokens_bt, (1, 4))  # 164 positions: past the original context
    with torch.no_grad():
        theirs = model(torch.as_tensor(long_bt, dtype=torch.long)).logits.numpy()
    assert np.max(np.abs(_lwm_logits(out, long_bt) - theirs)) <= 1e-4


def test_llama3_rope_freqs_are_recognised():
    """Llama-3.1-8B's `rope_freqs` give back its rope_scaling exactly."""
    factors = llama3_factors(128, 500000.0, 8.0, 1.0, 4.0, 8192).astype(np.float32)
    assert llama3_scaling_from_factors(factors, 128, 500000.0) == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    with pytest.raises(LwmError, match="no llama3 scaling"):
        llama3_scaling_from_factors(np.linspace(3, 1, 64), 128, 500000.0)


# --- bad input: one line, non-zero exit, nothing written ----------------------------------------


def _run_bad(argv, capsys, out_dir, expect):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert expect in err, err
    assert not out_dir.exists()
    assert not list(out_dir.parent.glob(f".{out_dir.name}.tmp-*"))


@pytest.fixture(scope="module")
def good_file(tmp_path_factory, bpe):
    path = tmp_path_factory.mktemp("gguf") / "good.gguf"
    return write_gguf(path, tiny_hf_model(), types={"attn_q.weight": "Q8_0"}, tokenizer=bpe)


def test_truncated_file(good_file, tmp_path, capsys):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(good_file.read_bytes()[: good_file.stat().st_size // 2])
    out = tmp_path / "out"
    _run_bad(["convert", "from-gguf", str(bad), str(out)], capsys, out, "cannot read GGUF")


def test_not_a_gguf_file(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_text("hello")
    out = tmp_path / "out"
    _run_bad(["convert", "from-gguf", str(bad), str(out)], capsys, out, "not a GGUF file")
    _run_bad(["convert", "from-gguf", str(tmp_path / "no.gguf"), str(out)], capsys, out, "found")


def test_unsupported_type_names_the_tensor(tmp_path, bpe, capsys):
    src = write_gguf(tmp_path / "m.gguf", tiny_hf_model(), types={"ffn_up.weight": "Q5_0"})
    out = tmp_path / "out"
    _run_bad(["convert", "from-gguf", str(src), str(out)], capsys, out, "ffn_up.weight has GGML")


def test_missing_tensor(tmp_path, capsys):
    src = write_gguf(
        tmp_path / "m.gguf", tiny_hf_model(), types={}, skip=("blk.1.ffn_gate.weight",)
    )
    out = tmp_path / "out"
    _run_bad(["convert", "from-gguf", str(src), str(out)], capsys, out, "blk.1.ffn_gate.weight")


def test_other_architecture_refused(tmp_path, capsys):
    src = write_gguf(tmp_path / "m.gguf", tiny_hf_model(), types={}, arch="gemma")
    out = tmp_path / "out"
    _run_bad(["convert", "from-gguf", str(src), str(out)], capsys, out, "architecture 'gemma'")


def test_existing_output_refused(good_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert", "from-gguf", str(good_file), str(out)]) != 0
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "pre, note", [(None, "embeds no tokenizer"), ("mystery-bpe", "pre-tokenizer 'mystery-bpe'")]
)
def test_weights_convert_without_a_tokenizer(tmp_path, bpe, capsys, pre, note):
    """No tokenizer, or one lwm cannot rebuild exactly: the weights convert, the note says why."""
    tokenizer = None if pre is None else bpe
    src = write_gguf(tmp_path / "m.gguf", tiny_hf_model(), types={}, tokenizer=tokenizer, pre=pre)
    out = _convert(src, tmp_path / "ckpt")
    line = [x for x in capsys.readouterr().out.splitlines() if "tokenizer not written" in x]
    assert len(line) == 1 and note in line[0], line
    assert not list(out.glob("*.json"))
    lwm.load_model(out)


# --- the real model: SmolLM2-135M-Instruct Q4_1 -------------------------------------------------


def _log_softmax(x):
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# The converted real model's logits vs transformers: tests/test_real_model.py (1,024 tokens).


def test_smollm2_tokenizer_matches_transformers(converted_smollm2, smollm2_hf_tokenizer):  # noqa: F811
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(str(converted_smollm2 / "tokenizer.json"))
    for start in (0, 150_000, 350_000):
        text = real_text(3000, start=start)
        ids = ours.encode(text, add_special_tokens=False).ids
        assert ids == smollm2_hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(ids) == smollm2_hf_tokenizer.decode(ids)
    config = json.loads((converted_smollm2 / "tokenizer_config.json").read_text())
    t = smollm2_hf_tokenizer
    assert (config["bos_token"], config["eos_token"]) == (t.bos_token, t.eos_token)
    assert (config["pad_token"], config["unk_token"]) == (t.pad_token, t.unk_token)
    assert ours.token_to_id(config["eos_token"]) == t.eos_token_id == 2
    assert ours.token_to_id(config["bos_token"]) == t.bos_token_id == 1
    generation = json.loads((converted_smollm2 / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["bos_token_id"] == 1
    # lwm's own loader finds it in the checkpoint directory and agrees.
    from lwm.data.tokenizer import load_tokenizer

    loaded = load_tokenizer(converted_smollm2)
    assert loaded.encode(text) == smollm2_hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert (loaded.bos_id, loaded.eos_ids, loaded.add_bos) == (1, (2,), False)
    assert loaded.chat_template == t.chat_template
    assert smollm2_gguf_path().stat().st_size > 50_000_000
