"""OpenAI's converters, without a model or a server: chat and completions bodies to the text core's
request, the core's events to choices and chunks, and a core chat to and from another server."""

from __future__ import annotations

import pytest

from engines.base import Sampling
from gpustack_cli.core.media import check_parts
from gpustack_cli.core.streams import collect
from gpustack_cli.core.types import (
    MEDIA_MARKER,
    Answer,
    ChatMessage,
    ChatRequest,
    Finished,
    GenerationError,
    MediaLimits,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallEvent,
)
from gpustack_cli.openai import chat as openai
from tests.support.streams import aiter, run

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


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
    with pytest.raises(GenerationError) as raised:
        openai.chat_request(body)
    assert raised.value.param == param


def test_image_and_audio_parts_become_media_in_place() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    content = [{"type": "text", "text": "compare"}, image, {"type": "text", "text": "with"}, audio]
    body = openai.ChatCompletionBody.model_validate({"model": "m", "messages": [{"role": "user", "content": content}]})
    message = openai.chat_request(body).messages[0]
    assert message.content == f"compare\n{MEDIA_MARKER}\nwith\n{MEDIA_MARKER}"
    assert [(m.kind, m.param, m.data) for m in message.media] == [
        ("image", "messages[0].content[1].image_url", b"\x89PNG\r\n"),
        ("audio", "messages[0].content[3].input_audio", b"RIFF"),
    ]
    # Back to the wire for an upstream server: the same parts, in order.
    wire = openai.chat_body(openai.chat_request(body), "m")["messages"][0]["content"]
    assert [part["type"] for part in wire] == ["text", "image_url", "text", "input_audio"]
    assert wire[1]["image_url"]["url"] == "data:image/png;base64,iVBORw0K"


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("data:image/png,rawtext", "messages[0].content[0].image_url"),
        ("data:image/png;base64,!!!", "messages[0].content[0].image_url"),
        ("ftp://example.com/a.png", "messages[0].content[0].image_url"),
    ],
)
def test_bad_image_urls_name_their_part(url: str, param: str) -> None:
    image = {"type": "image_url", "image_url": {"url": url}}
    body = openai.ChatCompletionBody.model_validate({"model": "m", "messages": [{"role": "user", "content": [image]}]})
    with pytest.raises(GenerationError) as raised:
        openai.chat_request(body)
    assert raised.value.param == param


def test_an_image_url_is_refused_unless_the_server_fetches_them() -> None:
    image = {"type": "image_url", "image_url": "https://example.com/cat.png"}
    body = openai.ChatCompletionBody.model_validate({"model": "m", "messages": [{"role": "user", "content": [image]}]})
    chat = openai.chat_request(body)
    with pytest.raises(GenerationError) as raised:
        check_parts(chat.media, MediaLimits())
    assert raised.value.code == "media_url_not_allowed" and "--allow-image-urls" in str(raised.value)
    check_parts(chat.media, MediaLimits(allow_urls=True))
    with pytest.raises(GenerationError, match="Too many"):
        check_parts(chat.media * 3, MediaLimits(max_media=2, allow_urls=True))


def test_file_parts_are_refused() -> None:
    part = {"type": "file", "file": {"file_id": "f"}}
    body = openai.ChatCompletionBody.model_validate({"model": "m", "messages": [{"role": "user", "content": [part]}]})
    with pytest.raises(GenerationError) as raised:
        openai.chat_request(body)
    assert raised.value.param == "messages[0].content[0]" and raised.value.code == "unsupported_content"


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


def test_legacy_completion_logprobs_count_offsets_from_the_echoed_prompt() -> None:
    deltas = [
        TextDelta("Hi", [TokenLogprob("Hi", [72, 105], -0.1, [("Hi", [72, 105], -0.1)])]),
        TextDelta(" there", [TokenLogprob(" there", [32], -0.7, [(" there", [32], -0.7), (" you", [32], -1.2)])]),
    ]
    logprobs = openai.completion_logprobs(deltas, offset=10)
    assert logprobs["tokens"] == ["Hi", " there"] and logprobs["token_logprobs"] == [-0.1, -0.7]
    assert logprobs["text_offset"] == [10, 12]
    assert logprobs["top_logprobs"][1] == {" there": -0.7, " you": -1.2}


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
