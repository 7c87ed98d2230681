"""Render a chat into a prompt with the model's own Jinja chat template (from the GGUF).

Templates run in Jinja's immutable sandbox, with the helpers Hugging Face templates expect
(`raise_exception`, `strftime_now`, `tojson`). A model without a template gets one chosen by its
architecture, ChatML by default.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
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
    pass


def _raise(message: str) -> None:
    raise TemplateFailure(message)


@functools.cache
def _compile(source: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    return env.from_string(source)


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
    add_generation_prompt: bool = True,
) -> str:
    try:
        return _compile(template).render(
            messages=messages,
            tools=tools,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except TemplateError as exc:
        raise TemplateFailure(f"the model's chat template failed: {exc}") from exc
