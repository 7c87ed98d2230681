"""Chat templates render as Hugging Face's `apply_chat_template` renders them: every real template
llama.cpp collects (models/templates/ in the llama-cpp-python sdist), on conversations with and
without tools, by our renderer and by transformers' own."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from engines.base import Sampling
from gpustack_cli.core import templates

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {
    "one turn": ([{"role": "user", "content": "Hello!"}], None),
    "system and turns": (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ],
        None,
    ),
    "tools offered": ([{"role": "user", "content": "Weather in Oslo?"}], [WEATHER]),
    "tool call and result": (
        [
            {"role": "system", "content": "You help."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "cold"},
        ],
        [WEATHER],
    ),
}
# Templates that refuse some conversations, in transformers as here; why, and which.
REFUSING = {
    # The tool-use variants of these templates need `tools` (they iterate over it unguarded);
    # Command R+ also reads `description` at the top of each tool, not under `function`.
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja": {
        "one turn",
        "system and turns",
        "tools offered",
        "tool call and result",
    },
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": {"one turn", "system and turns"},
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": {"one turn", "system and turns"},
    # Written for Fireworks' own `functions` variable, which no other caller sets.
    "fireworks-ai-llama-3-firefunction-v2.jinja": {
        "one turn",
        "system and turns",
        "tools offered",
        "tool call and result",
    },
    # Gemma 2 raises "System role not supported" by design.
    "google-gemma-2-2b-it.jinja": {"system and turns", "tool call and result"},
    # Kimi K2 appends to a list, which the immutable sandbox forbids (in transformers too).
    "Kimi-K2-Instruct.jinja": {"tool call and result"},
    "Kimi-K2-Thinking.jinja": {"tool call and result"},
    # Mistral's templates demand 9-character alphanumeric tool call ids ("call_1" is not one).
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": {"tool call and result"},
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": {"tool call and result"},
    # llama.cpp's own DeepSeek R1 template passes a generator to tojson, which JSON cannot write.
    "llama-cpp-deepseek-r1.jinja": {"tools offered", "tool call and result"},
    # Functionary v3.2 joins the arguments to a string, so it wants them as a JSON string.
    "meetkai-functionary-medium-v3.2.jinja": {"tool call and result"},
}


def ours(source: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    return templates.render(source, copy.deepcopy(messages), bos_token="<s>", eos_token="</s>", tools=tools)


def theirs(source: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    rendered = render_jinja_template(
        [copy.deepcopy(messages)],
        tools=tools,
        chat_template=source,
        add_generation_prompt=True,
        bos_token="<s>",
        eos_token="</s>",
    )
    texts = rendered[0] if isinstance(rendered, tuple) else rendered
    return texts[0] if isinstance(texts, list) else texts


def test_every_real_template_renders_as_transformers_renders_it(chat_templates: dict[str, str]) -> None:
    assert len(chat_templates) >= 60
    refused: dict[str, set[str]] = {}
    for name, source in chat_templates.items():
        for conversation, (messages, tools) in CONVERSATIONS.items():
            try:
                expected = theirs(source, messages, tools)
            except Exception:
                expected = None
            try:
                got = ours(source, messages, tools)
            except templates.TemplateFailure:
                got = None
            assert got == expected, (name, conversation)
            if got is None:
                refused.setdefault(name, set()).add(conversation)
    assert refused == REFUSING


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ raise_exception('System role not supported') }}", "refused the conversation: System role not supported"),
        ("{% for m in messages %}", "does not compile"),
        ("{{ messages[0].content | tojson(nonsense=1) }}", "TypeError"),
        ("{% set ns = namespace(_hidden=1) %}", "may not set '_hidden'"),
        ("{{ messages.append(1) }}", "unsafe"),
    ],
)
def test_a_template_that_fails_says_why(source: str, message: str) -> None:
    with pytest.raises(templates.TemplateFailure, match=message):
        ours(source, [{"role": "user", "content": "hi"}], None)


def test_the_environment_has_what_templates_use() -> None:
    source = (
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{% if m.role == 'system' %}{% continue %}"
        "{% endif %}{% generation %}{{ m.content | tojson(separators=(',', ':'), sort_keys=true) }}{% endgeneration %}"
        "{% endfor %}|{{ enable_thinking }}|{{ strftime_now('%Y') | length }}|{{ documents | length }}"
    )
    messages = [
        {"role": "system", "content": "skip"},
        {"role": "user", "content": {"b": 1, "a": "é"}},
        {"role": "user", "content": "never"},
    ]
    rendered = templates.render(
        source,
        messages,
        bos_token="",
        eos_token="",
        documents=[{"title": "t", "text": "x"}],
        variables={"enable_thinking": False, "messages": "ignored: the chat's own names win"},
    )
    assert rendered == '{"a":"é","b":1}|False|4|1'
    assert templates.check(source) is None and "does not compile" in (templates.check("{% if %}") or "")


class TemplatedGenerator:
    """Unit tests only: what render_chat reads of an engine, with a given chat template."""

    n_ctx = 4096
    architecture = "llama"
    bos_text, eos_text = "<s>", "</s>"

    def __init__(self, template: str):
        self.chat_template = template

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return list(range(len(text)))


@pytest.mark.parametrize(
    ("name", "in_place"),
    [
        ("Qwen-Qwen2.5-7B-Instruct.jinja", True),  # renders a system turn anywhere
        ("meta-llama-Llama-3.1-8B-Instruct.jinja", True),
        ("Qwen3.5-4B.jinja", False),  # refuses a system message past the first
        ("HuggingFaceTB-SmolLM3-3B.jinja", False),  # leaves it out
        ("openai-gpt-oss-120b.jinja", False),  # leaves it out too
    ],
)
def test_a_late_system_message_is_never_dropped(chat_templates: dict[str, str], name: str, in_place: bool) -> None:
    """Coding agents send system messages among the others: rendered where they stand when the
    template allows, else joined in order to the first system message."""
    from gpustack_cli.core.prompts import render_chat
    from gpustack_cli.core.types import ChatMessage, ChatRequest

    engine = TemplatedGenerator(chat_templates[name])
    messages = [
        ChatMessage("system", "FIRST-RULE"),
        ChatMessage("user", "Hello"),
        ChatMessage("system", "LATE-REMINDER"),
    ]
    text = render_chat(engine, ChatRequest(messages, Sampling.of()))
    assert "FIRST-RULE" in text and "LATE-REMINDER" in text and "Hello" in text
    if in_place:
        assert text.index("Hello") < text.index("LATE-REMINDER")
    else:
        assert text.index("LATE-REMINDER") < text.index("Hello")
