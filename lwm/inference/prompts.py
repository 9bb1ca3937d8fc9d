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
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from lwm.config import parse_section
from lwm.errors import LwmError

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


LAYOUTS = ("cached", "lwm")
DEFAULT_TEMPLATE = PromptTemplate()
LWM_TEMPLATE = PromptTemplate(layout="lwm")
NAMED_TEMPLATES = {"lwm": LWM_TEMPLATE}
"""`--template NAME` values (anything else is a JSON file)."""

LWM_NEEDLE = (
    "{system} USER: {context} {question} Don't give information outside the document or "
    "repeat your findings. Keep your response short and direct. ASSISTANT: "
)
"""LWM's `eval_needle.py` chat wrapping (its `OURS_TEMPLATE`), trailing space included."""


def encode_text(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text)) if text else []


def chat_prompt(tokenizer, template: PromptTemplate, prompt: str) -> list[int]:
    """Tokens of a text chat turn."""
    bos = [tokenizer.bos_id] if template.bos else []
    return bos + encode_text(tokenizer, template.fill(template.chat, prompt=prompt))


def video_prefix(
    tokenizer, template: PromptTemplate, vision_tokens: list[int]
) -> tuple[list[int], list[bool]]:
    """Tokens and vision mask of the shared video prefix (BOS, system, `<vision>`, video,
    `</vision>`)."""
    bos = [tokenizer.bos_id] if template.bos else []
    head = bos + encode_text(tokenizer, template.fill(template.video_prefix))
    tail = encode_text(tokenizer, template.fill(template.video_suffix))
    tokens = head + list(vision_tokens) + tail
    mask = [False] * len(head) + [True] * len(vision_tokens) + [False] * len(tail)
    return tokens, mask


def question_suffix(tokenizer, template: PromptTemplate, question: str) -> list[int]:
    """Tokens of one question, appended after the cached video prefix."""
    return encode_text(tokenizer, template.fill(template.question, question=question))


def generation_prompt(
    tokenizer, template: PromptTemplate, prompt: str, *, image: bool = False
) -> list[int]:
    """Tokens of a video (or image) generation prompt; `prompt=""` gives the unconditional one."""
    bos = [tokenizer.bos_id] if template.bos else []
    text = template.image_generation if image else template.generation
    return bos + encode_text(tokenizer, template.fill(text, prompt=prompt))


# -- LWM's own layout (`layout="lwm"`) ------------------------------------------------------


def _lwm_piece(tokenizer, text: str) -> list[int]:
    """One piece as LWM's `AutoTokenizer.encode(text)` gives it: BOS, then the text."""
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
