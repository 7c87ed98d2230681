"""Anthropic's converters, without a model or a server: messages bodies (as coding agents send
them) to the text core's request, the core's events to messages and their stream."""

from __future__ import annotations

import json

import pytest

from engines.base import Sampling
from gpustack_cli.anthropic import messages as anthropic
from gpustack_cli.core.types import (
    MEDIA_MARKER,
    Answer,
    ChatMessage,
    Finished,
    GenerationError,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallEvent,
)
from tests.support.streams import aiter, run

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def anthropic_body(**fields) -> anthropic.MessagesBody:
    return anthropic.MessagesBody.model_validate({"model": "m", "max_tokens": 64, **fields})


def test_an_anthropic_body_becomes_the_cores_request() -> None:
    body = anthropic_body(
        system=[{"type": "text", "text": "Be brief."}],
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such city", "is_error": True}
                ],
            },
        ],
        tools=[{"name": "weather", "input_schema": WEATHER}],
        tool_choice={"type": "any"},
        stop_sequences=["END"],
        temperature=0.5,
        top_k=5,
    )
    chat = anthropic.chat_request(body)
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool"]
    assert chat.messages[2].content == "Checking."
    assert chat.messages[2].tool_calls == [ToolCall("toolu_1", "weather", '{"city": "Oslo"}')]
    assert chat.messages[3] == ChatMessage("tool", "Error: no such city", tool_call_id="toolu_1")
    assert chat.tool_choice == "required" and chat.stop == ["END"] and chat.max_tokens == 64
    assert (chat.sampling.temperature, chat.sampling.top_k, chat.sampling.max_tokens) == (0.5, 5, 64)
    assert chat.sampling.top_p == Sampling.of().top_p


def test_an_anthropic_tool_choice_naming_no_tool_is_refused() -> None:
    body = anthropic_body(
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"name": "weather", "input_schema": WEATHER}],
        tool_choice={"type": "tool", "name": "other"},
    )
    with pytest.raises(GenerationError, match="no tool named 'other'"):
        anthropic.chat_request(body)


def test_an_answer_becomes_an_anthropic_message() -> None:
    answer = Answer(
        [TextDelta("Let me "), TextDelta("look.")],
        [ToolCall("call_ab", "weather", '{"city":"Oslo"}')],
        Finished("tool_calls", 10, 4),
    )
    message = anthropic.message_of(answer, "msg_1", "m")
    assert message["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_ab", "name": "weather", "input": {"city": "Oslo"}},
    ]
    assert (message["stop_reason"], message["stop_sequence"]) == ("tool_use", None)
    assert message["usage"] == {"input_tokens": 10, "output_tokens": 4}
    stopped = anthropic.message_of(Answer([TextDelta("a")], [], Finished("stop", 1, 1, "END")), "msg_2", "m")
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "END")
    assert anthropic.message_of(Answer([], [], Finished("length", 1, 9)), "m3", "m")["stop_reason"] == "max_tokens"


def test_the_anthropic_stream_event_sequence() -> None:
    events = [
        TextDelta("Hel"),
        TextDelta("lo"),
        ToolCallEvent(0, ToolCall("call_x", "f", '{"a": 1}')),
        Finished("tool_calls", 7, 3),
    ]

    async def items() -> list[dict]:
        return [item async for item in anthropic.stream_events(aiter(events), "msg_1", "m", 7)]

    stream = run(items())
    assert [(i["type"], i.get("index")) for i in stream] == [
        ("message_start", None),
        ("ping", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert stream[0]["message"]["usage"] == {"input_tokens": 7, "output_tokens": 0}
    assert stream[2]["content_block"] == {"type": "text", "text": ""}
    assert stream[4]["delta"] == {"type": "text_delta", "text": "lo"}
    assert stream[6]["content_block"] == {"type": "tool_use", "id": "toolu_x", "name": "f", "input": {}}
    assert json.loads(stream[7]["delta"]["partial_json"]) == {"a": 1}
    assert stream[9]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert stream[9]["usage"] == {"output_tokens": 3}


def test_an_anthropic_stream_without_text_opens_no_text_block() -> None:
    async def items() -> list[str]:
        return [i["type"] async for i in anthropic.stream_events(aiter([Finished("length", 2, 0)]), "m1", "m", 2)]

    assert run(items()) == ["message_start", "ping", "message_delta", "message_stop"]


def test_anthropic_thinking_blocks_when_asked_for() -> None:
    answer = Answer([TextDelta("4")], [], Finished("stop", 5, 9, reasoning_tokens=7), reasoning="2+2 is 4.")
    assert anthropic.message_of(answer, "m1", "m", thinking=True)["content"] == [
        {"type": "thinking", "thinking": "2+2 is 4.", "signature": ""},
        {"type": "text", "text": "4"},
    ]
    assert anthropic.message_of(answer, "m1", "m")["content"] == [{"type": "text", "text": "4"}]
    body = anthropic_body(
        messages=[{"role": "user", "content": "hi"}], thinking={"type": "enabled", "budget_tokens": 1024}
    )
    assert anthropic.chat_request(body).template_kwargs == {"enable_thinking": True}
    assert anthropic.chat_request(anthropic_body(messages=[{"role": "user", "content": "hi"}])).template_kwargs == {}

    events = [ReasoningDelta("2+2"), ReasoningDelta(" is 4."), TextDelta("4"), Finished("stop", 5, 9)]

    async def items(thinking: bool) -> list[dict]:
        return [i async for i in anthropic.stream_events(aiter(events), "m1", "m", 5, thinking)]

    shown = run(items(True))
    assert [(i["type"], i.get("index")) for i in shown][2:9] == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
    ]
    assert shown[2]["content_block"]["type"] == "thinking" and shown[4]["delta"] == {
        "type": "thinking_delta",
        "thinking": " is 4.",
    }
    hidden = run(items(False))
    assert [i["type"] for i in hidden if i["type"].startswith("content_block")] == [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    ]


def agent_tools(count: int = 24) -> list[dict]:
    """Tools shaped as a coding agent's: nested objects, arrays of objects, enums, descriptions."""
    return [
        {
            "name": f"Tool{n}",
            "description": f"Tool number {n}. " * 20,
            "input_schema": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "An absolute path."},
                    "mode": {"type": "string", "enum": ["read", "write", "append"]},
                    "edits": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "old": {"type": "string"},
                                "new": {"type": "string"},
                                "all": {"type": "boolean"},
                            },
                            "required": ["old", "new"],
                            "additionalProperties": False,
                        },
                    },
                    "options": {"type": "object", "properties": {"timeout": {"type": "number", "minimum": 0}}},
                },
                "required": ["path"],
                "additionalProperties": False,
                "$schema": "http://json-schema.org/draft-07/schema#",
            },
        }
        for n in range(count)
    ]


def agent_body(**changes) -> dict:
    """A Messages request in the shape Claude Code sends its first one (written here, not copied)."""
    body = {
        "model": "m",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are a coding agent."},
            {"type": "text", "text": "Work carefully.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<context>the repository</context>"},
                    {"type": "text", "text": "Fix the bug.", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {"role": "system", "content": "Reminder: the tools are described above. " * 100},
        ],
        "tools": agent_tools(),
        "metadata": {"user_id": '{"device_id": "d", "session_id": "s"}'},
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
    }
    return {**body, **changes}


def test_a_coding_agents_request_becomes_a_chat() -> None:
    body = anthropic.MessagesBody.model_validate(agent_body())
    chat = anthropic.chat_request(body)
    assert [m.role for m in chat.messages] == ["system", "user", "system"]
    assert chat.messages[0].content == "You are a coding agent.\nWork carefully."
    assert chat.messages[2].content.startswith("Reminder:")
    assert chat.template_kwargs == {"enable_thinking": True, "reasoning_effort": "high"}
    assert len(chat.tools) == 24 and chat.max_tokens == 32000 and chat.tool_choice == "auto"
    # The thinking of an earlier answer comes back, and is left out of the prompt.
    later = agent_body(
        messages=[
            {"role": "user", "content": "Hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xyz"},
                    {"type": "text", "text": "Hello."},
                ],
            },
            {"role": "user", "content": "Again"},
        ]
    )
    chat = anthropic.chat_request(anthropic.MessagesBody.model_validate(later))
    assert [(m.role, m.content) for m in chat.messages[1:]] == [
        ("user", "Hi"),
        ("assistant", "Hello."),
        ("user", "Again"),
    ]


def test_structured_output_and_effort() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    for fields in (
        {"output_config": {"format": {"type": "json_schema", "schema": schema}}},
        {"output_format": {"type": "json_schema", "schema": schema}},
    ):
        chat = anthropic.chat_request(anthropic.MessagesBody.model_validate(agent_body(**fields)))
        assert chat.json_schema == schema
    off = anthropic.chat_request(anthropic.MessagesBody.model_validate(agent_body(thinking={"type": "disabled"})))
    assert off.template_kwargs["enable_thinking"] is False


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
        ({"frobnicate": True}, "frobnicate"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "'document' blocks"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]},
            "messages.0.content.0.source.data",
        ),
    ],
)
def test_what_cannot_be_served_is_a_400_naming_it(changes: dict, words: str) -> None:
    body = anthropic.MessagesBody.model_validate(agent_body(**changes))
    with pytest.raises(GenerationError) as caught:
        anthropic.chat_request(body)
    assert words in str(caught.value)


def test_fields_that_change_nothing_here_are_accepted() -> None:
    extra = {"service_tier": "auto", "container": "c1", "inference_geo": "us", "cache_control": {"type": "ephemeral"}}
    assert anthropic.chat_request(anthropic.MessagesBody.model_validate(agent_body(**extra))).messages


def test_image_blocks_become_media_in_place() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}}
    content = [{"type": "text", "text": "what is"}, image, {"type": "text", "text": "this?"}]
    body = anthropic.MessagesBody.model_validate(agent_body(messages=[{"role": "user", "content": content}]))
    message = anthropic.chat_request(body).messages[-1]
    assert message.content == f"what is\n{MEDIA_MARKER}\nthis?"
    assert [(m.kind, m.param, m.data) for m in message.media] == [
        ("image", "messages.0.content.1.source", b"\x89PNG\r\n")
    ]
    url = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    body = anthropic.MessagesBody.model_validate(agent_body(messages=[{"role": "user", "content": [url]}]))
    assert anthropic.chat_request(body).messages[-1].media[0].url == "https://example.com/a.png"
