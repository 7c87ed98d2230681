"""The protocol converters, without a model or a server: wire JSON to the text core's types and
the core's events back to each protocol's answers and streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable

import pytest

from engines.base import Ranking, Sampling
from gpustack_cli.anthropic import messages as anthropic
from gpustack_cli.core.textgen import (
    Answer,
    ChatMessage,
    ChatRequest,
    Event,
    Finished,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallEvent,
    collect,
)
from gpustack_cli.jina.rerank import rerank_answer
from gpustack_cli.native.engine_apis import tei_ranks
from gpustack_cli.openai import chat as openai
from gpustack_cli.server.errors import APIError

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


async def aiter(items: Iterable[Event | dict]) -> AsyncIterator:
    for item in items:
        yield item


def run(coroutine):
    return asyncio.run(coroutine)


# -- OpenAI ------------------------------------------------------------------------------------


def test_an_openai_chat_body_becomes_the_cores_request() -> None:
    body = openai.ChatCompletionBody.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Weather in Oslo?"}, {"type": "text", "text": "Be brief."}],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": WEATHER}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "temperature": 0,
            "max_completion_tokens": 50,
            "stop": "END",
            "logprobs": True,
            "top_logprobs": 2,
            "logit_bias": {"15": -100},
            "seed": 7,
        }
    )
    chat = openai.chat_request(body)
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool"]
    assert chat.messages[1].content == "Weather in Oslo?\nBe brief."  # parts a line apart
    assert chat.messages[2].tool_calls == [ToolCall("call_1", "weather", '{"city":"Oslo"}')]
    assert chat.messages[3].tool_call_id == "call_1"
    assert chat.tools == [Tool("weather", "", WEATHER)] and chat.tool_choice == "weather"
    assert chat.max_tokens == 50 and chat.stop == ["END"]
    s = chat.sampling
    assert (s.temperature, s.seed, s.logit_bias, s.logprobs) == (0, 7, {15: -100}, 2)
    assert (s.top_p, s.top_k) == (Sampling.of().top_p, Sampling.of().top_k)  # absent: the defaults


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
    ],
)
def test_an_openai_chat_body_that_cannot_be_served_names_its_field(fields: dict, param: str) -> None:
    body = openai.ChatCompletionBody.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )
    with pytest.raises(APIError) as raised:
        openai.chat_request(body)
    assert raised.value.status == 400 and raised.value.param == param


def test_image_parts_are_refused_for_a_text_model() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body = openai.ChatCompletionBody.model_validate({"model": "m", "messages": [{"role": "user", "content": [image]}]})
    with pytest.raises(APIError) as raised:
        openai.chat_request(body)
    assert raised.value.param == "messages[0].content" and raised.value.code == "unsupported_content"


def test_json_modes_become_schemas() -> None:
    def schema(response_format: dict) -> dict | None:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": response_format}
        return openai.chat_request(openai.ChatCompletionBody.model_validate(body)).json_schema

    assert schema({"type": "text"}) is None
    assert schema({"type": "json_object"}) == {"type": "object"}
    assert schema({"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}) == WEATHER


def test_a_core_chat_goes_to_another_server_as_openai_would_send_it() -> None:
    chat = ChatRequest(
        messages=[
            ChatMessage("system", "Be brief."),
            ChatMessage("assistant", "", [ToolCall("call_1", "weather", '{"city":"Oslo"}')]),
            ChatMessage("tool", "cold", tool_call_id="call_1"),
        ],
        sampling=Sampling.of(temperature=0.2, seed=3),
        max_tokens=20,
        stop=["END"],
        tools=[Tool("weather", "The weather", WEATHER)],
        tool_choice="weather",
        parallel_tool_calls=False,
    )
    body = openai.chat_body(chat, "upstream-name")
    assert body["model"] == "upstream-name" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][1]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert (body["temperature"], body["seed"], body["max_tokens"], body["stop"]) == (0.2, 3, 20, ["END"])
    # What goes out reads back as the same chat.
    back = openai.chat_request(openai.ChatCompletionBody.model_validate(body))
    assert back.messages == chat.messages and back.tools == chat.tools and back.tool_choice == "weather"
    assert body["parallel_tool_calls"] is False and back.parallel_tool_calls is False


def test_an_upstreams_chunks_become_the_cores_events() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Let me check."}}]},
        {
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_9", "function": {"name": "weather"}}]}}
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9}},
    ]
    answer = run(collect(openai.events_of_chunks(aiter(chunks))))
    assert answer.text == "Let me check."
    assert answer.calls == [ToolCall("call_9", "weather", '{"city":"Oslo"}')]
    assert answer.finished == Finished("tool_calls", 12, 9)


def test_an_answer_becomes_a_chat_choice_and_its_chunks() -> None:
    logprob = TokenLogprob("Hi", [72, 105], -0.5, [("Hi", [72, 105], -0.5), ("Yo", [89, 111], -1.5)])
    answer = Answer([TextDelta("Hi", [logprob])], [ToolCall("call_1", "f", "{}")], Finished("tool_calls", 3, 1))
    choice = openai.chat_choice(answer, 0, with_logprobs=True)
    assert choice["message"]["content"] == "Hi" and choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    entry = choice["logprobs"]["content"][0]
    assert entry["token"] == "Hi" and entry["bytes"] == [72, 105] and entry["top_logprobs"][1]["token"] == "Yo"
    only_calls = Answer([], [ToolCall("call_1", "f", "{}")], Finished("tool_calls", 3, 1))
    assert openai.chat_choice(only_calls, 1, with_logprobs=False)["message"]["content"] is None

    [(text, finish, _)] = openai.chunk_deltas(TextDelta("Hi"), with_logprobs=False)
    assert text == {"content": "Hi"} and finish is None
    opening, arguments = openai.chunk_deltas(ToolCallEvent(0, ToolCall("call_1", "f", '{"a":1}')), False)
    assert opening[0]["tool_calls"][0] == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    assert arguments[0]["tool_calls"][0]["function"] == {"arguments": '{"a":1}'}
    assert openai.chunk_deltas(Finished("length", 3, 5), False) == [({}, "length", None)]


# -- Anthropic ---------------------------------------------------------------------------------


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
    with pytest.raises(APIError, match="no tool named 'other'"):
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


# -- Jina and text-embeddings-inference ----------------------------------------------------------


def test_rerank_answers() -> None:
    ranking = Ranking(scores=[0.1, 0.9, 0.5], prompt_tokens=30)
    texts = ["a", "b", "c"]
    jina = rerank_answer(ranking, texts, "r", top_n=2, return_documents=True)
    assert [(r["index"], r["relevance_score"], r["document"]["text"]) for r in jina["results"]] == [
        (1, 0.9, "b"),
        (2, 0.5, "c"),
    ]
    assert jina["usage"] == {"prompt_tokens": 30, "total_tokens": 30} and jina["model"] == "r"
    assert "document" not in rerank_answer(ranking, texts, "r", None, False)["results"][0]
    assert tei_ranks(ranking, texts, return_text=False) == [
        {"index": 1, "score": 0.9},
        {"index": 2, "score": 0.5},
        {"index": 0, "score": 0.1},
    ]
    assert tei_ranks(ranking, texts, return_text=True)[0]["text"] == "b"


def test_legacy_completion_logprobs_count_offsets_from_the_echoed_prompt() -> None:
    deltas = [
        TextDelta("Hi", [TokenLogprob("Hi", [72, 105], -0.1, [("Hi", [72, 105], -0.1)])]),
        TextDelta(" there", [TokenLogprob(" there", [32], -0.7, [(" there", [32], -0.7), (" you", [32], -1.2)])]),
    ]
    logprobs = openai.completion_logprobs(deltas, offset=10)
    assert logprobs["tokens"] == ["Hi", " there"] and logprobs["token_logprobs"] == [-0.1, -0.7]
    assert logprobs["text_offset"] == [10, 12]
    assert logprobs["top_logprobs"][1] == {" there": -0.7, " you": -1.2}


# -- reasoning -----------------------------------------------------------------------------------


def test_reasoning_in_openai_answers_and_chunks() -> None:
    answer = Answer([TextDelta("4")], [], Finished("stop", 5, 9, reasoning_tokens=7), reasoning="2+2 is 4.")
    message = openai.chat_choice(answer, 0, with_logprobs=False)["message"]
    assert message["reasoning_content"] == "2+2 is 4." and message["content"] == "4"
    assert (
        "reasoning_content"
        not in openai.chat_choice(Answer([TextDelta("4")], [], Finished("stop", 5, 1)), 0, False)["message"]
    )
    assert openai.chunk_deltas(ReasoningDelta("Hmm"), False) == [({"reasoning_content": "Hmm"}, None, None)]
    chunks = [
        {"choices": [{"index": 0, "delta": {"reasoning_content": "Hmm."}}]},
        {"choices": [{"index": 0, "delta": {"content": "4"}, "finish_reason": "stop"}]},
    ]
    upstream = run(collect(openai.events_of_chunks(aiter(chunks))))
    assert (upstream.reasoning, upstream.text) == ("Hmm.", "4")


def test_an_openai_body_passes_its_template_variables() -> None:
    body = openai.ChatCompletionBody.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "chat_template_kwargs": {"enable_thinking": False},
            "reasoning_effort": "low",
        }
    )
    assert openai.chat_request(body).template_kwargs == {"enable_thinking": False, "reasoning_effort": "low"}


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


# -- what coding agents send ---------------------------------------------------------------------


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
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "text only"),
    ],
)
def test_what_cannot_be_served_is_a_400_naming_it(changes: dict, words: str) -> None:
    body = anthropic.MessagesBody.model_validate(agent_body(**changes))
    with pytest.raises(APIError) as caught:
        anthropic.chat_request(body)
    assert caught.value.status == 400 and words in caught.value.message


def test_fields_that_change_nothing_here_are_accepted() -> None:
    extra = {"service_tier": "auto", "container": "c1", "inference_geo": "us", "cache_control": {"type": "ephemeral"}}
    assert anthropic.chat_request(anthropic.MessagesBody.model_validate(agent_body(**extra))).messages
