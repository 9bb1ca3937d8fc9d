"""LWM prompt templates for text chat, video QA and video generation (configurable).

Default templates (LWM's format; `{system}`, `{prompt}` and `{question}` are substituted literally,
nothing else in a template is interpreted):

  text chat (`lwm generate --chat`):  <s>{system} USER: {prompt} ASSISTANT:
  video QA (`lwm chat`):              <s>{system} USER: <vision>[vision tokens]</vision>
                                      \\n{question} ASSISTANT:
  video generation:                   <s>{system} USER: Generate a video of {prompt} ASSISTANT:
                                      <vision>[generated vision tokens]
  unconditional branch (CFG):         the generation template with an empty {prompt}

The question comes *after* the video so that everything up to `</vision>` is one fixed prefix:
`lwm chat` encodes and prefills it once and answers every question from that cached prefix.
Each text piece is tokenized on its own (vision tokens sit between them), `<s>` is the
tokenizer's BOS id. A JSON file with any of the `PromptTemplate` fields overrides the defaults.

`--template lwm` (`LWM_TEMPLATE`) is LWM's own layout, token for token as LWM's scripts build it:

  video QA (LWM's `vision_chat.py`):  <s><s>{system} USER: {question}\n | <s><vision> | [vision
                                      tokens] | <s></vision> | <s> ASSISTANT:
  needle (LWM's `eval_needle.py`):    <s>{system} USER: {context} {question} Don't give
                                      information outside the document or repeat your findings.
                                      Keep your response short and direct. ASSISTANT:␣

LWM tokenizes each `|` piece with HF's `tokenizer.encode`, which puts a BOS before every piece
(the first piece also spells `<s>` out, so LWM's prompts start with two BOS ids), and the
sentencepiece dummy prefix makes ` ASSISTANT:` start with a lone `▁`. We keep all of it on
purpose: LWM's training data (`lwm/data.py`) encodes `<vision>`, `</vision>` and each text field
the same way, so LWM-Chat has seen exactly these ids, and results stay comparable with LWM's.
With the question first the video prefix differs per question: the video is encoded once but
the whole prompt is prefilled again for each question (the default layout shares it).

`--template auto` (the default) uses the model's own Jinja chat template when its tokenizer ships
one (`ChatPrompt`, rendered by `lwm.inference.chat_template` exactly as transformers'
`apply_chat_template(..., add_generation_prompt=True)` renders it, then `tokenizer.encode`d with
no implicit specials); a tokenizer without one (LWM's and LLaMA-2's sentencepiece models) gets the
default layout above, BOS as the tokenizer adds it. With a chat template:

  text chat:        one user message `{prompt}` (a system message only when `--system` is given:
                    without one the template may add its own default system prompt)
  video QA:         the user message is `<vision>[vision tokens]</vision>\\n{question}`: the
                    template is rendered with a unique sentinel in the video's place, the text
                    before it + `<vision>` is encoded as the cached prefix, then come the vision
                    tokens, `</vision>`, and the rest of the rendering (`\\n{question}`, the end of
                    the user turn and the assistant header) is each question's suffix. The video
                    thus enters the model's template where LWM's layout puts it: first in the
                    user turn, before the question.
  needle:           the user message is LWM's needle text `{context} {question} Don't give ...
                    short and direct.` (`LWM_NEEDLE_INSTRUCTION`)
  video generation: the user message `Generate a video of {prompt}`, then `<vision>` right after
                    the assistant header
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import ClassVar

from lwm.config import parse_section
from lwm.errors import LwmError
from lwm.inference.chat_template import ChatTemplate, tokenizer_chat_template

DEFAULT_SYSTEM = "You are a helpful assistant."


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    system: str = DEFAULT_SYSTEM
    """System sentence substituted for `{system}`."""
    bos: bool = True
    """Start every prompt with the tokenizer's BOS token."""
    chat: str = "{system} USER: {prompt} ASSISTANT:"
    """Text chat turn (`lwm generate --chat`)."""
    video_prefix: str = "{system} USER: <vision>"
    """Text before the vision tokens (part of the cached prefix)."""
    video_suffix: str = "</vision>"
    """Text right after the vision tokens (still part of the cached prefix)."""
    question: str = "\n{question} ASSISTANT:"
    """Text after the prefix for each question (prefilled per question)."""
    generation: str = "{system} USER: Generate a video of {prompt} ASSISTANT: <vision>"
    """Video generation prompt; vision tokens are generated right after it."""
    image_generation: str = "{system} USER: Generate an image of {prompt} ASSISTANT: <vision>"
    """Generation prompt when a single frame (an image) is requested."""
    layout: str = "cached"
    """`cached` (the video prefix is shared by all questions) or `lwm` (LWM's question-first
    video QA and needle prompts, token for token; the other text fields are then unused)."""

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise LwmError(f"prompt template layout {self.layout!r}: expected one of {LAYOUTS}")

    def fill(self, template: str, **values: str) -> str:
        out = template.replace("{system}", self.system)
        for key, value in values.items():
            out = out.replace("{" + key + "}", value)
        return out

    @classmethod
    def from_json(cls, path: str | pathlib.Path) -> PromptTemplate:
        """A template from a JSON object of fields (unknown fields are an error)."""
        path = pathlib.Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise LwmError(f"prompt template {path}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise LwmError(f"prompt template {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise LwmError(f"prompt template {path} must be a JSON object")
        return parse_section(cls, data, f"prompt template {path}")


@dataclasses.dataclass(frozen=True)
class ChatPrompt:
    """`--template auto` for a tokenizer that ships a chat template: the model's own template
    renders every prompt (see the module docstring for where each part goes)."""

    chat_template: ChatTemplate
    """The tokenizer's compiled chat template."""
    system: str | None = None
    """System message; None = none (the template may then add its own default one)."""
    layout: ClassVar[str] = "chat"
    """Never LWM's question-first layout: the video prefix is cached as in the default one."""

    def messages(self, user: str) -> list[dict[str, str]]:
        system = [] if self.system is None else [{"role": "system", "content": self.system}]
        return [*system, {"role": "user", "content": user}]

    def render(self, user: str) -> str:
        """The prompt text of one user message, with the assistant's generation prompt."""
        return self.chat_template.render(self.messages(user), add_generation_prompt=True)


LAYOUTS = ("cached", "lwm")
DEFAULT_TEMPLATE = PromptTemplate()
LWM_TEMPLATE = PromptTemplate(layout="lwm")
NAMED_TEMPLATES = {"lwm": LWM_TEMPLATE}
"""`--template NAME` values besides `auto` (anything else is a JSON file)."""
AUTO = "auto"

LWM_NEEDLE_INSTRUCTION = (
    "Don't give information outside the document or repeat your findings. "
    "Keep your response short and direct."
)
LWM_NEEDLE = "{system} USER: {context} {question} " + LWM_NEEDLE_INSTRUCTION + " ASSISTANT: "
"""LWM's `eval_needle.py` chat wrapping (its `OURS_TEMPLATE`), trailing space included."""

VIDEO_SENTINEL = "LWMVIDEO9f3c1d7e"
"""Stands for the video in a rendered chat template (found once, then cut there)."""

Template = PromptTemplate | ChatPrompt


def select_template(name: str | None, tokenizer=None, *, system: str | None = None) -> Template:
    """`--template` (None = `auto`) and `--system` -> the prompt template. `auto` is the
    tokenizer's chat template when it ships one, else the default layout with BOS as the
    tokenizer adds it; without a tokenizer (flags checked early) `auto` gives the default."""
    if name in (None, AUTO):
        chat = tokenizer_chat_template(tokenizer) if tokenizer is not None else None
        if chat is not None:
            return ChatPrompt(chat, system)
        template = DEFAULT_TEMPLATE
        if tokenizer is not None:
            template = dataclasses.replace(template, bos=bool(tokenizer.add_bos))
    elif name in NAMED_TEMPLATES:
        template = NAMED_TEMPLATES[name]
    else:
        template = PromptTemplate.from_json(name)
    if system is not None:
        template = dataclasses.replace(template, system=system)
    return template


def describe_template(template: Template) -> dict:
    """The template as JSON data (what a results directory records)."""
    if isinstance(template, ChatPrompt):
        chat = template.chat_template
        return {
            "layout": template.layout,
            "chat_template": chat.source,
            "special_tokens": dict(chat.special_tokens),
            "system": template.system,
        }
    return dataclasses.asdict(template)


def encode_text(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text)) if text else []


def bos_ids(tokenizer, template: Template) -> list[int]:
    """The BOS a layout starts with: none for a chat template (it writes its own specials) or a
    tokenizer without BOS (Qwen)."""
    if isinstance(template, ChatPrompt) or not template.bos or tokenizer.bos_id is None:
        return []
    return [tokenizer.bos_id]


def plain_prompt(tokenizer, template: Template, text: str) -> list[int]:
    """Tokens of a prompt without chat wrapping (`lwm generate` without --chat): with a chat
    template, BOS as the tokenizer adds it (as HF's `tokenizer(text)`)."""
    if isinstance(template, ChatPrompt):
        return list(tokenizer.encode(text, bos=bool(tokenizer.add_bos)))
    return bos_ids(tokenizer, template) + encode_text(tokenizer, text)


def chat_prompt(tokenizer, template: Template, prompt: str) -> list[int]:
    """Tokens of a text chat turn."""
    if isinstance(template, ChatPrompt):
        return encode_text(tokenizer, template.render(prompt))
    return bos_ids(tokenizer, template) + encode_text(
        tokenizer, template.fill(template.chat, prompt=prompt)
    )


def chat_video_split(template: ChatPrompt, question: str) -> tuple[str, str]:
    """The chat template's text before and after the video for one question."""
    text = template.render(f"{VIDEO_SENTINEL}\n{question}")
    if text.count(VIDEO_SENTINEL) != 1:
        raise LwmError(
            "the chat template does not render the user message exactly once: "
            "cannot place the video in it (use --template lwm or a JSON template)"
        )
    head, _, rest = text.partition(VIDEO_SENTINEL)
    return head, rest


def video_prefix(
    tokenizer, template: Template, vision_tokens: list[int]
) -> tuple[list[int], list[bool]]:
    """Tokens and vision mask of the shared video prefix (BOS, system, `<vision>`, video,
    `</vision>`)."""
    if isinstance(template, ChatPrompt):
        head_text = chat_video_split(template, "")[0] + "<vision>"
        head = encode_text(tokenizer, head_text)
        tail = encode_text(tokenizer, "</vision>")
    else:
        head = bos_ids(tokenizer, template) + encode_text(
            tokenizer, template.fill(template.video_prefix)
        )
        tail = encode_text(tokenizer, template.fill(template.video_suffix))
    tokens = head + list(vision_tokens) + tail
    mask = [False] * len(head) + [True] * len(vision_tokens) + [False] * len(tail)
    return tokens, mask


def question_suffix(tokenizer, template: Template, question: str) -> list[int]:
    """Tokens of one question, appended after the cached video prefix."""
    if isinstance(template, ChatPrompt):
        head, rest = chat_video_split(template, question)
        if head != chat_video_split(template, "")[0]:
            raise LwmError(
                "the chat template writes text that depends on the question before the video: "
                "the video prefix cannot be shared (use --template lwm or a JSON template)"
            )
        return encode_text(tokenizer, rest)
    return encode_text(tokenizer, template.fill(template.question, question=question))


def generation_prompt(
    tokenizer, template: Template, prompt: str, *, image: bool = False
) -> list[int]:
    """Tokens of a video (or image) generation prompt; `prompt=""` gives the unconditional one."""
    if isinstance(template, ChatPrompt):
        what = "an image" if image else "a video"
        return encode_text(tokenizer, template.render(f"Generate {what} of {prompt}") + "<vision>")
    text = template.image_generation if image else template.generation
    return bos_ids(tokenizer, template) + encode_text(tokenizer, template.fill(text, prompt=prompt))


def chat_needle_prompt(tokenizer, template: ChatPrompt, context: str, question: str) -> list[int]:
    """A needle prompt in the model's chat template: one user message of LWM's needle text."""
    return encode_text(tokenizer, template.render(f"{context} {question} {LWM_NEEDLE_INSTRUCTION}"))


# -- LWM's own layout (`layout="lwm"`) ------------------------------------------------------


def _lwm_piece(tokenizer, text: str) -> list[int]:
    """One piece as LWM's `AutoTokenizer.encode(text)` gives it: BOS, then the text."""
    if tokenizer.bos_id is None:
        raise LwmError("LWM's prompt layout (--template lwm) needs a tokenizer with a BOS token")
    return [tokenizer.bos_id, *encode_text(tokenizer, text)]


def lwm_vision_chat_prompt(
    tokenizer, template: PromptTemplate, question: str, vision_tokens: list[int]
) -> tuple[list[int], list[bool]]:
    """Tokens and vision mask of LWM's `vision_chat.py` prompt (question before the video);
    see the module docstring for the pieces and their BOS ids."""
    head = [tokenizer.bos_id, *_lwm_piece(tokenizer, f"{template.system} USER: {question}\n")]
    start = _lwm_piece(tokenizer, "<vision>")
    end = _lwm_piece(tokenizer, "</vision>")
    tail = _lwm_piece(tokenizer, " ASSISTANT:")
    text_before = head + start
    tokens = text_before + list(vision_tokens) + end + tail
    mask = [False] * len(text_before) + [True] * len(vision_tokens)
    mask += [False] * (len(end) + len(tail))
    return tokens, mask


def lwm_needle_prompt(
    tokenizer, template: PromptTemplate, context: str, question: str
) -> list[int]:
    """LWM's `eval_needle.py` prompt: one BOS (its batch tokenizer call), then the wrapped text."""
    text = template.fill(LWM_NEEDLE, context=context, question=question)
    return _lwm_piece(tokenizer, text)
