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


DEFAULT_TEMPLATE = PromptTemplate()


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
