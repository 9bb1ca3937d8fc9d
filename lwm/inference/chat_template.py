"""A model's own Jinja chat template, rendered as transformers' `apply_chat_template` renders it.

Chat templates come with downloaded models (`chat_template.jinja`, or `chat_template` in
`tokenizer_config.json`): they are data, not code. They render only in Jinja's
`ImmutableSandboxedEnvironment` (no attribute starting with `_`, no mutation of the messages, no
file or module access), with the environment transformers gives them, so that a template renders
the same text here as there:

- `trim_blocks=True, lstrip_blocks=True` and the `loopcontrols` extension (`{% break %}`,
  `{% continue %}`); the `{% generation %}...{% endgeneration %}` block (transformers' assistant
  mask marker) renders its body;
- the `tojson` filter as `json.dumps` (no HTML escaping; `indent`, `separators`, `sort_keys` and
  `ensure_ascii` options), globals `raise_exception(msg)`, `strftime_now(fmt)`, `dict(...)` and a
  `namespace(...)` that refuses `_`-prefixed names;
- variables `messages` (keys whose value is None dropped), `add_generation_prompt`, `tools=None`,
  `documents=None`, the tokenizer's special token strings (`bos_token`, `eos_token`, ...) and any
  extra variables passed to `render`.

The rendered text is encoded with `tokenizer.encode(text)` (no specials added: the template
writes them as text, and the tokenizer parses special token strings as their ids).
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from lwm.errors import LwmError


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


class ChatTemplate:
    """A compiled chat template. `special_tokens`: `bos_token`, `eos_token`, ... strings the
    template may use (the tokenizer's `special_tokens`)."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None):
        import jinja2

        if not isinstance(source, str) or not source:
            raise LwmError("chat template: empty or not a string")
        self.source = source
        self.special_tokens = {str(k): str(v) for k, v in (special_tokens or {}).items()}
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateError as e:
            raise LwmError(f"chat template does not parse: {_one_line(e)}") from None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> str:
        """The template's text for `messages` (`[{"role": ..., "content": ...}, ...]`);
        `variables` are passed to the template too (they override the special tokens)."""
        import jinja2

        if not messages:
            raise LwmError("chat template: no messages to render")
        chat = []
        for m in messages:
            if not isinstance(m, Mapping):
                raise LwmError(f"chat template: a message must be a dict, got {m!r}")
            chat.append({str(k): _plain(v) for k, v in m.items() if v is not None})
        context = {
            **self.special_tokens,
            "tools": None,
            "documents": None,
            **{k: _plain(v) for k, v in variables.items()},
        }
        try:
            return self._template.render(
                messages=chat, add_generation_prompt=add_generation_prompt, **context
            )
        except jinja2.TemplateError as e:
            raise LwmError(f"chat template: {_one_line(e)}") from None
        except Exception as e:  # noqa: BLE001 - a template is data: any failure is the file's
            raise LwmError(f"chat template failed: {type(e).__name__}: {_one_line(e)}") from None

    def __repr__(self) -> str:
        return f"ChatTemplate({len(self.source)} chars)"


@functools.lru_cache(maxsize=8)
def cached_chat_template(source: str, special_tokens: tuple[tuple[str, str], ...]) -> ChatTemplate:
    """A compiled template, shared by every prompt of the same model (compiling takes ms)."""
    return ChatTemplate(source, dict(special_tokens))


def tokenizer_chat_template(tokenizer) -> ChatTemplate | None:
    """The tokenizer's chat template, compiled (None when it ships none)."""
    source = getattr(tokenizer, "chat_template", None)
    if not source:
        return None
    specials = getattr(tokenizer, "special_tokens", None) or {}
    return cached_chat_template(source, tuple(sorted(specials.items())))


def _plain(value: Any) -> Any:
    """Only plain JSON-like data reaches a template (no object with methods to call)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    raise LwmError(f"chat template: cannot pass a {type(value).__name__} to a template")


@functools.cache
def _environment():
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}`: marks assistant text for transformers'
        assistant masks; here it just renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_body")
            return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class SafeNamespace(jinja2.utils.Namespace):
        """`namespace(...)` whose attribute names may not start with `_`."""

        def __init__(*args, **kwargs):  # noqa: N805 (Jinja's signature: `self` may be a key)
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                _check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            _check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")

    class DictMaker:
        """`dict(...)` and `dict.fromkeys(...)` without exposing the `dict` type itself."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = DictMaker()
    env.globals["namespace"] = SafeNamespace
    return env
