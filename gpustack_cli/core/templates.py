"""Render a chat into a prompt with the model's own Jinja chat template (from the GGUF, or the
override a model's settings name).

The environment is the one Hugging Face's `apply_chat_template` gives templates, since that is
what their authors wrote them against (llama.cpp's minja and vLLM follow it too): Jinja's
immutable sandbox with `trim_blocks` and `lstrip_blocks`, loop controls (`{% break %}`,
`{% continue %}`), the `{% generation %}` block (rendered as its body), `tojson` with
`ensure_ascii`, `indent`, `separators` and `sort_keys`, `raise_exception`, `strftime_now`, and a
`namespace` that refuses underscore-prefixed attributes. Templates see `messages`, `tools`,
`documents`, `add_generation_prompt`, `bos_token`, `eos_token`, and any extra variables a request
or the model's settings give (`chat_template_kwargs`: `enable_thinking`, `reasoning_effort`, ...).

Whatever a template raises, or fails to compile with, is a `TemplateFailure` carrying the
template's own message: a template's `raise_exception` is written for the caller. A model without
a template gets one chosen by its architecture, ChatML by default.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
FALLBACKS = {"gemma": GEMMA, "gemma2": GEMMA, "gemma3": GEMMA, "gemma3n": GEMMA}


class TemplateFailure(ValueError):
    """The chat template did not compile, or raised while rendering; the message says why."""


class _Raised(Exception):
    """`raise_exception` in a template: its message is the template author's, kept as written."""


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks what the assistant wrote (for training
    masks); rendering a prompt needs only its body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's `namespace`, refusing attributes whose names begin with an underscore (the sandbox
    guards reads of those; this guards writes)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's own signature trick: `self` may be a key
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a template may not set {name!r} on a namespace")


def _raise(message: Any) -> None:
    raise _Raised(str(message))


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Jinja's own tojson escapes HTML characters, which no prompt wants.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
    return dict(*args, **kwargs)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise, strftime_now=_strftime_now, namespace=_Namespace, dict=_dict)
    return env


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateFailure(f"the chat template does not compile (line {exc.lineno}: {exc.message})") from exc


def check(source: str) -> str | None:
    """Why `source` cannot be used as a chat template, or None when it compiles."""
    try:
        _compile(source)
    except TemplateFailure as exc:
        return str(exc)
    return None


def template_for(template: str | None, architecture: str) -> str:
    return template or FALLBACKS.get(architecture, CHATML)


def supports_role(template: str, role: str) -> bool:
    return f"'{role}'" in template or f'"{role}"' in template


def render(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str,
    eos_token: str,
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    variables: dict[str, Any] | None = None,
) -> str:
    """The prompt `template` makes of the chat. `variables` are extra names for the template
    (a request's `chat_template_kwargs`); the standard names above win over them."""
    compiled = _compile(template)
    names = {
        **(variables or {}),
        "messages": messages,
        "tools": tools,
        "documents": documents,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "add_generation_prompt": add_generation_prompt,
    }
    try:
        return compiled.render(names)
    except _Raised as exc:
        raise TemplateFailure(f"the chat template refused the conversation: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateFailure(f"the chat template failed: {exc}") from exc
    except Exception as exc:  # a template's own error: a bad filter argument, a key it expected
        raise TemplateFailure(f"the chat template failed: {type(exc).__name__}: {exc}") from exc
