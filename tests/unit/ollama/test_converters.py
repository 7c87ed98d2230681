"""Ollama's converters: its bodies to the core's request, the core's events to its chunks."""

from __future__ import annotations

import json

import pytest

from gpustack_cli.core.types import (
    MEDIA_MARKER,
    Answer,
    Finished,
    GenerationError,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallEvent,
)
from gpustack_cli.ollama import convert, wire
from gpustack_cli.ollama.routes import pull_spec
from gpustack_cli.server.errors import APIError


def test_a_chat_body_becomes_the_cores_request() -> None:
    body = wire.ChatBody.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Rome and Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "weather", "arguments": {"city": "Rome"}}},
                        {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                        {"function": {"name": "time", "arguments": '{"zone": "CET"}'}},
                    ],
                },
                {"role": "tool", "content": "12:00", "tool_name": "time"},
                {"role": "tool", "content": "rain", "tool_name": "weather"},
                {"role": "tool", "content": "sun", "tool_name": "weather"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
            "format": {"type": "object", "properties": {"a": {"type": "string"}}},
            "options": {"temperature": 0.2, "top_k": 5, "seed": 7, "stop": "END", "num_predict": 12, "num_ctx": 4096},
            "think": "high",
        }
    )
    chat = convert.chat_request(body)
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool", "tool", "tool"]
    calls = chat.messages[2].tool_calls
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Rome"}, {"city": "Paris"}, {"zone": "CET"}]
    # Each result goes to the earliest unanswered call of the tool it names.
    assert [m.tool_call_id for m in chat.messages[3:]] == [calls[2].id, calls[0].id, calls[1].id]
    assert chat.sampling.temperature == 0.2 and chat.sampling.top_k == 5 and chat.sampling.seed == 7
    assert chat.stop == ["END"] and chat.max_tokens == 12
    assert chat.json_schema == {"type": "object", "properties": {"a": {"type": "string"}}}
    assert chat.template_kwargs == {"enable_thinking": True, "reasoning_effort": "high"}
    assert chat.tools[0].name == "weather"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, None),
        ({"num_predict": -1}, None),
        ({"num_predict": -2}, None),
        ({"num_predict": 0}, None),
        ({"num_predict": 9}, 9),
    ],
)
def test_num_predict(options: dict, expected: int | None) -> None:
    assert convert.max_tokens(wire.Options.model_validate(options)) == expected


def test_format_and_think() -> None:
    assert convert.schema_of("json") == {"type": "object"} and convert.schema_of("") is None
    assert convert.thinking_variables(False) == {"enable_thinking": False} and convert.thinking_variables(None) == {}


def test_images_go_before_the_text_and_what_cannot_be_served_is_refused_by_name() -> None:
    chat = convert.chat_request(
        wire.ChatBody.model_validate({"model": "m", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]})
    )
    assert chat.messages[0].content == f"{MEDIA_MARKER}\nx"
    assert [(m.param, m.data) for m in chat.messages[0].media] == [("messages[0].images[0]", b"hi")]
    with pytest.raises(GenerationError) as refused:
        convert.chat_request(
            wire.ChatBody.model_validate({"model": "m", "messages": [{"role": "user", "images": ["not base64!"]}]})
        )
    assert refused.value.param == "messages[0].images[0]"
    for fields, param in (
        ({"context": [1, 2]}, "context"),
        ({"template": "{{ .Prompt }}"}, "template"),
        ({"images": ["aGk="], "raw": True}, "images"),
    ):
        with pytest.raises(GenerationError) as refused:
            convert.refuse_unsupported(wire.GenerateBody.model_validate({"model": "m", "prompt": "x", **fields}))
        assert refused.value.param == param


def test_events_become_chunks_and_a_last_object() -> None:
    clock = convert.Clock()
    assert convert.chat_chunk("m", TextDelta("Hi"))["message"] == {"role": "assistant", "content": "Hi"}
    assert convert.chat_chunk("m", ReasoningDelta("hmm"))["message"]["thinking"] == "hmm"
    call = convert.chat_chunk("m", ToolCallEvent(0, ToolCall("call_1", "weather", '{"city": "Rome"}')))
    assert call["message"]["tool_calls"] == [
        {"id": "call_1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Rome"}}}
    ]
    assert convert.chat_chunk("m", Finished("stop", 3, 2)) is None
    clock.ready()
    final = convert.chat_final("m", Finished("tool_calls", 3, 2), clock)
    assert final["done"] and final["done_reason"] == "stop" and final["message"] == {"role": "assistant", "content": ""}
    assert final["prompt_eval_count"] == 3 and final["eval_count"] == 2
    assert final["total_duration"] >= final["load_duration"] >= 0 and final["created_at"].endswith("Z")
    whole = convert.chat_answer("m", Answer([TextDelta("ok")], [], Finished("length", 3, 2), "why"), clock)
    assert (
        whole["message"] == {"role": "assistant", "content": "ok", "thinking": "why"}
        and whole["done_reason"] == "length"
    )
    thinking = convert.generate_chunk("m", ReasoningDelta("x"))
    assert thinking is not None and (thinking["response"], thinking["thinking"], thinking["done"]) == ("", "x", False)
    assert convert.lifecycle("m", "unload", chat=False)["done_reason"] == "unload"


def test_what_a_pull_over_the_api_may_fetch() -> None:
    assert pull_spec("smollm2") == "smollm2"  # the catalog
    assert pull_spec("llama3.2:1b") == "ollama:llama3.2:1b"  # Ollama's registry, as its pull means
    assert pull_spec("hf:org/repo") == "hf:org/repo" and pull_spec("https://x.example/m.gguf").startswith("https")
    for local in ("/etc/passwd", "./m.gguf", "file:/m.gguf", "http://10.0.0.1/m.gguf", "remote:http://x"):
        with pytest.raises(APIError) as refused:
            pull_spec(local)
        assert refused.value.status == 400
