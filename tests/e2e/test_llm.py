"""Chat, completions and Anthropic messages on the real SmolLM2 through a real `gpustack serve`,
called with the official `openai` and `anthropic` clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import jsonschema
import openai
import pytest

from gpustack_cli.config import Settings
from gpustack_cli.models.loading import load_model
from gpustack_cli.models.store import ModelStore
from tests.support.harness import ServerProcess
from tests.support.openapi import validate

MODEL = "smollm2"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def server(models_home: Path) -> Iterator[ServerProcess]:
    with ServerProcess(models_home, "--no-pull", "--preload", MODEL) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def claude(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def vocab(models_home: Path):
    """SmolLM2's tokenizer straight from llama.cpp, to check our token counts independently."""
    from llama_cpp import Llama

    path = next((models_home / "models" / MODEL).glob("*.gguf"))
    return Llama(str(path), vocab_only=True, verbose=False)


def chatml(*turns: tuple[str, str]) -> str:
    text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    return text + "<|im_start|>assistant\n"


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- chat completions ------------------------------------------------------------------------------


def test_chat_and_usage_counts(client: openai.OpenAI, vocab, server: ServerProcess) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=ask("What is the capital of France?"), max_tokens=24, temperature=0, seed=0
    )
    validate(json.loads(response.model_dump_json(exclude_unset=True)), "CreateChatCompletionResponse")
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    prompt = chatml(("system", SYSTEM), ("user", "What is the capital of France?"))
    assert response.usage.prompt_tokens == len(vocab.tokenize(prompt.encode(), add_bos=False, special=True))
    assert 0 < response.usage.completion_tokens <= 24
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert response.usage.completion_tokens == len(vocab.tokenize(choice.message.content.encode(), add_bos=False))


def test_raw_body_matches_the_spec(server: ServerProcess) -> None:
    body = {"model": MODEL, "messages": ask("Hi"), "max_tokens": 5, "logprobs": True, "top_logprobs": 2}
    raw = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()
    validate(raw, "CreateChatCompletionResponse")
    assert raw["object"] == "chat.completion" and raw["id"].startswith("chatcmpl-")


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=ask("Write a long story about a dragon."), max_completion_tokens=7, temperature=0, seed=0
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 7


def test_stop_sequences_are_not_echoed(client: openai.OpenAI) -> None:
    free = client.chat.completions.create(
        model=MODEL, messages=ask("Count from 1 to 10, separated by commas."), max_tokens=40, temperature=0, seed=0
    )
    text = free.choices[0].message.content
    assert "4" in text, text
    stop = text[text.index("4") : text.index("4") + 1]
    stopped = client.chat.completions.create(
        model=MODEL,
        messages=ask("Count from 1 to 10, separated by commas."),
        max_tokens=40,
        temperature=0,
        seed=0,
        stop=[stop, "never-seen"],
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]


def test_seed_reproducibility_and_n(client: openai.OpenAI) -> None:
    def sample(seed: int, n: int = 1):
        return client.chat.completions.create(
            model=MODEL, messages=ask("Tell me a one-line joke."), max_tokens=20, temperature=1.0, seed=seed, n=n
        )

    first, again, other = sample(7), sample(7), sample(8)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    several = sample(7, n=3)
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert several.choices[0].message.content == first.choices[0].message.content
    assert len({c.message.content for c in several.choices}) > 1
    # usage counts the tokens of every choice
    assert several.usage.completion_tokens > first.usage.completion_tokens
    assert several.usage.prompt_tokens == first.usage.prompt_tokens


def test_logprobs(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=ask("Say hello."), max_tokens=6, temperature=0, seed=0, logprobs=True, top_logprobs=3
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert "".join(t.token for t in content) == response.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the most likely
        assert bytes(entry.bytes).decode() == entry.token


def test_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ask("Name three colours."),
        max_tokens=16,
        temperature=0,
        seed=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    for chunk in chunks:
        validate(json.loads(chunk.model_dump_json(exclude_unset=True)), "CreateChatCompletionStreamResponse")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    whole = client.chat.completions.create(
        model=MODEL, messages=ask("Name three colours."), max_tokens=16, temperature=0, seed=0
    )
    assert text == whole.choices[0].message.content


def test_async_streaming(server: ServerProcess) -> None:
    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        stream = await client.chat.completions.create(model=MODEL, messages=ask("Hi!"), max_tokens=10, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        plain = await client.chat.completions.create(model=MODEL, messages=ask("Hi!"), max_tokens=5)
        await client.close()
        return "".join(parts) + plain.choices[0].message.content

    assert asyncio.run(run()).strip()


def test_json_schema_output(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"type": "string", "maxLength": 20},
        },
        "required": ["name", "age", "city"],
        "additionalProperties": False,
    }
    for seed in range(3):
        response = client.chat.completions.create(
            model=MODEL,
            messages=ask("Describe a person living in Paris as JSON."),
            max_tokens=120,
            temperature=0.7,
            seed=seed,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": schema, "strict": True},
            },
        )
        assert response.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(response.choices[0].message.content), schema)
    loose = client.chat.completions.create(
        model=MODEL,
        messages=ask("Give me a JSON object with the name and age of a cat."),
        max_tokens=300,
        seed=1,
        response_format={"type": "json_object"},
    )
    # JSON mode guarantees JSON unless the answer is cut off by max_tokens (as with OpenAI).
    if loose.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(loose.choices[0].message.content), dict)
    else:
        assert loose.choices[0].message.content.lstrip().startswith("{")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


# One call to the weather tool, asked for greedily.
ONE_CALL = {
    "model": MODEL,
    "tools": [WEATHER],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "max_tokens": 60,
    "temperature": 0,
    "seed": 0,
}


def test_tool_call_round_trip(client: openai.OpenAI) -> None:
    messages = ask("What is the weather in Paris?")
    response = client.chat.completions.create(messages=messages, **ONE_CALL)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": "21C", "sky": "sunny"}'},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=40, temperature=0, seed=0
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    named = client.chat.completions.create(
        model=MODEL,
        messages=ask("Hello"),
        tools=[WEATHER],
        max_tokens=60,
        temperature=0,
        seed=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert named.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(messages=ask("Weather in Rome?"), stream=True, **ONE_CALL)
    name, arguments, finish, ids = "", "", None, set()
    for chunk in stream:
        validate(json.loads(chunk.model_dump_json(exclude_unset=True)), "CreateChatCompletionStreamResponse")
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            ids.add(call.id) if call.id else None
            name += call.function.name or ""
            arguments += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and name == "get_weather" and len(ids) == 1
    assert "city" in json.loads(arguments)


def test_auto_tool_choice_parses(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=ask("What's the weather in Berlin?"),
        tools=[WEATHER],
        max_tokens=60,
        temperature=0,
        seed=0,
    )
    message = response.choices[0].message
    assert bool(message.tool_calls) != bool(message.content)  # one or the other, always well-formed
    if message.tool_calls:
        assert response.choices[0].finish_reason == "tool_calls"
        assert "city" in json.loads(message.tool_calls[0].function.arguments)
    else:
        assert response.choices[0].finish_reason in ("stop", "length")


# -- legacy completions ----------------------------------------------------------------------------


def test_completions(client: openai.OpenAI, server: ServerProcess) -> None:
    response = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, seed=0, logprobs=2
    )
    validate(json.loads(response.model_dump_json(exclude_unset=True)), "CreateCompletionResponse")
    choice = response.choices[0]
    assert choice.text and choice.finish_reason == "length"
    assert "".join(choice.logprobs.tokens) == choice.text and len(choice.logprobs.top_logprobs[0]) == 2
    echoed = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, echo=True, temperature=0, seed=0)
    assert echoed.choices[0].text.startswith("Hello")
    several = client.completions.create(model=MODEL, prompt=["One", "Two"], max_tokens=3, n=2, temperature=0.9, seed=1)
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    tokens = client.completions.create(model=MODEL, prompt=[[504, 3575, 282]], max_tokens=2, temperature=0, seed=0)
    assert tokens.usage.prompt_tokens == 3
    default = httpx.post(
        server.url + "/v1/completions", json={"model": MODEL, "prompt": "Once upon"}, timeout=120
    ).json()
    assert default["usage"]["completion_tokens"] <= 16  # OpenAI's default max_tokens
    stream = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=6, temperature=0, seed=0, stream=True)
    streamed = "".join(c.choices[0].text for c in stream)
    plain = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=6, temperature=0, seed=0)
    assert streamed == plain.choices[0].text


def test_completions_refusals(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="def f(", suffix="return x", max_tokens=5)
    assert caught.value.body["param"] == "suffix"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="x", best_of=3, max_tokens=5)
    assert caught.value.body["param"] == "best_of"


# -- Anthropic messages ----------------------------------------------------------------------------


def test_anthropic_message(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=20,
        system="Answer briefly.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        extra_body={"temperature": 0, "seed": 0},  # anthropic 2.x takes no sampling arguments
        metadata={"user_id": "u1"},
    )
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    counted = claude.messages.count_tokens(
        model=MODEL, system="Answer briefly.", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    assert counted.input_tokens == message.usage.input_tokens
    story = [{"role": "user", "content": "Tell a story"}]
    short = claude.messages.create(model=MODEL, max_tokens=3, messages=story, extra_body={"temperature": 0})
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_anthropic_stop_sequence(claude: anthropic.Anthropic) -> None:
    free = claude.messages.create(
        model=MODEL,
        max_tokens=40,
        extra_body={"temperature": 0, "seed": 0},
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
    )
    text = free.content[0].text
    message = claude.messages.create(
        model=MODEL,
        max_tokens=40,
        extra_body={"temperature": 0, "seed": 0},
        stop_sequences=["5"],
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "5"
    assert message.content[0].text == text[: text.index("5")]


def test_anthropic_stream(claude: anthropic.Anthropic) -> None:
    kinds = []
    with claude.messages.stream(model=MODEL, max_tokens=12, messages=[{"role": "user", "content": "Hello!"}]) as s:
        for event in s:
            kinds.append(event.type)
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_delta" in kinds and "message_delta" in kinds
    assert final.content[0].text and final.usage.output_tokens > 0


TOOL = {
    "name": "get_weather",
    "description": "Get the weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_anthropic_tool_round_trip(claude: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    message = claude.messages.create(
        model=MODEL,
        max_tokens=60,
        messages=messages,
        tools=[TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        extra_body={"temperature": 0, "seed": 0},
    )
    assert message.stop_reason == "tool_use"
    [use] = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str) and use.id.startswith("toolu_")
    messages += [
        {"role": "assistant", "content": message.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21C"}]},
    ]
    answer = claude.messages.create(
        model=MODEL,
        max_tokens=30,
        messages=messages,
        tools=[TOOL],
        tool_choice={"type": "none"},
        extra_body={"temperature": 0, "seed": 0},
    )
    assert answer.content[0].type == "text" and answer.stop_reason in ("end_turn", "max_tokens")


def test_anthropic_streamed_tool_use(claude: anthropic.Anthropic) -> None:
    events = []
    with claude.messages.stream(
        model=MODEL,
        max_tokens=120,
        tools=[TOOL],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        extra_body={"temperature": 0, "seed": 0},  # sampled freely, a city name may outrun max_tokens
    ) as s:
        events = list(s)
        final = s.get_final_message()
    starts = [e for e in events if e.type == "content_block_start"]
    assert starts and starts[0].content_block.type == "tool_use"  # no empty text block before it
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    assert final.stop_reason == "tool_use" and "city" in final.content[0].input


def test_claude_code_style_request(server: ServerProcess) -> None:
    response = httpx.post(
        server.url + "/v1/messages?beta=true",
        timeout=60,
        headers={"x-api-key": "none", "anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"},
        json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert response.status_code == 200 and response.json()["type"] == "message"
    # What Claude Code sends now: a system message among the others, adaptive thinking, an effort,
    # context edits, metadata, and a max_tokens past the context (cut to fit), streamed.
    body = {
        "model": MODEL,
        "max_tokens": 32000,
        "stream": True,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Say hi.", "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": "Answer in at most three words."},
        ],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": "u"},
        "stop_sequences": ["\n"],
    }
    with httpx.stream(
        "POST", server.url + "/v1/messages?beta=true", json=body, headers={"x-api-key": "none"}, timeout=120
    ) as streamed:
        events = [line for line in streamed.iter_lines() if line.startswith("event: ")]
    assert streamed.status_code == 200 and events[0] == "event: message_start" and events[-1] == "event: message_stop"
    refused = httpx.post(server.url + "/v1/messages", json={**body, "mcp_servers": []}, timeout=60)
    assert refused.status_code == 400 and "mcp_servers" in refused.json()["error"]["message"]


# -- bad input -------------------------------------------------------------------------------------


def test_bad_requests(client: openai.OpenAI, server: ServerProcess) -> None:
    def post(body: dict) -> tuple[int, dict]:
        response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        validate(response.json(), "ErrorResponse")
        return response.status_code, response.json()["error"]

    status, error = post({"model": MODEL})
    assert status == 400 and error["param"] == "messages"
    status, error = post({"model": MODEL, "messages": "hi"})
    assert status == 400 and error["param"] == "messages"
    status, error = post({"model": MODEL, "messages": ask("hi"), "temperature": 5})
    assert status == 400 and error["param"] == "temperature"
    status, error = post(
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
            ],
        }
    )
    assert status == 400 and "does not take images" in error["message"]
    assert error["param"] == "messages[0].content[0].image_url"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=ask("hi"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="all-minilm-l6-v2", messages=ask("hi"))
    assert caught.value.body["code"] == "model_not_supported"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ask("word " * 9000))
    assert caught.value.body["code"] == "context_length_exceeded" and "8192" in caught.value.body["message"]
    assert client.chat.completions.create(model=MODEL, messages=ask("still there?"), max_tokens=3).choices
    # A budget past the context is cut to it (the answer here is held to one short value).
    held = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"const": "ok"}}}
    clamped = client.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=100_000, response_format=held)
    assert clamped.choices[0].message.content == '"ok"' and clamped.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        # llama.cpp's grammar code crashed the process on the empty rule this made.
        ({"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]}, "non-empty"),
        # The converter wrote the item out a billion times, until memory ran out.
        ({"type": "array", "items": {"type": "integer"}, "minItems": 1_000_000_000}, "over the limit"),
        ({"type": "object", "properties": {"x": {"type": "string", "pattern": "(["}}}, "unbalanced"),
        ({"$defs": {"n": {"properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"}, "grammar"),
        ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2000)}}, "optional properties"),
    ],
)
def test_schemas_the_engine_cannot_serve(client: openai.OpenAI, schema: dict, words: str) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ask("hi"), response_format=fmt, max_tokens=3)
    assert caught.value.body["code"] == "invalid_schema" and words in caught.value.body["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=ask("hi"), tools=[tool], stream=True, max_tokens=3)
    assert client.chat.completions.create(model=MODEL, messages=ask("still there?"), max_tokens=3).choices
    # A budget past the context is cut to it (the answer here is held to one short value).
    held = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"const": "ok"}}}
    clamped = client.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=100_000, response_format=held)
    assert clamped.choices[0].message.content == '"ok"' and clamped.choices[0].finish_reason == "stop"


def test_anthropic_errors(claude: anthropic.Anthropic, server: ServerProcess) -> None:
    response = httpx.post(server.url + "/v1/messages", json={"model": MODEL, "messages": ask("hi")}, timeout=30)
    body = response.json()
    assert response.status_code == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and "max_tokens" in body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="nope", max_tokens=5, messages=ask("hi"))
    assert caught.value.body["error"]["type"] == "not_found_error"


def test_tokenize_routes(server: ServerProcess, vocab) -> None:
    tokens = httpx.post(server.url + "/tokenize", json={"model": MODEL, "content": "Hello world"}, timeout=120).json()[
        "tokens"
    ]
    assert tokens == vocab.tokenize(b"Hello world", add_bos=False, special=False)
    pieces = httpx.post(
        server.url + "/tokenize", json={"model": MODEL, "content": "Hello world", "with_pieces": True}
    ).json()["tokens"]
    assert "".join(p["piece"] for p in pieces) == "Hello world"
    text = httpx.post(server.url + "/detokenize", json={"model": MODEL, "tokens": tokens}).json()["content"]
    assert text == "Hello world"


def reset_after_first_bytes(server: ServerProcess, route: str, body: dict) -> None:
    """A client that reads the start of a streamed answer and then resets its connection."""
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(0.2)  # some tokens on their way
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST


def test_client_disconnect_frees_the_model(server: ServerProcess) -> None:
    body = {
        "model": MODEL,
        "messages": ask("Write a very long essay about the sea."),
        "max_tokens": 4000,
        "stream": True,
        "temperature": 1,
    }
    anthropic_body = {"model": MODEL, "messages": ask("Write a long essay."), "max_tokens": 4000, "stream": True}
    for _ in range(4):  # clients that leave after a few events, on both APIs, closing or resetting
        for route, sent in (("/v1/chat/completions", body), ("/v1/messages", anthropic_body)):
            with httpx.stream("POST", server.url + route, json=sent, timeout=60) as response:
                lines = response.iter_lines()
                for _ in range(6):
                    next(lines)
            reset_after_first_bytes(server, route, sent)
    started = time.monotonic()
    quick = httpx.post(
        server.url + "/v1/chat/completions", timeout=60, json={"model": MODEL, "messages": ask("Hi"), "max_tokens": 3}
    )
    assert quick.status_code == 200
    assert time.monotonic() - started < 10  # the abandoned 4000-token streams were cancelled
    log = server.log.read_text()  # a client that left is no server error
    assert "error while streaming" not in log and "internal error" not in log


def test_token_ids_outside_the_vocabulary(client: openai.OpenAI, server: ServerProcess) -> None:
    """llama.cpp aborts the process on an unknown token id: the server refuses them first."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=[[1, 10**6]], max_tokens=2)
    assert caught.value.body["code"] == "invalid_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=2, logit_bias={"999999": 5})
    response = httpx.post(server.url + "/detokenize", json={"model": MODEL, "tokens": [10**6]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_tokens"
    proxied = httpx.post(server.url + "/tokenize", json={"model": MODEL, "content": "still alive"})
    assert proxied.status_code == 200


def test_empty_prompt(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="", max_tokens=2)
    assert caught.value.body["param"] == "prompt"
    assert client.completions.create(model=MODEL, prompt="Hello", max_tokens=2).choices


@pytest.mark.parametrize("threads", [None, "1"])
def test_threads_setting(models_home: Path, monkeypatch: pytest.MonkeyPatch, threads: str | None) -> None:
    """GPUSTACK_THREADS (or `serve --threads`) reaches llama.cpp; unset, one thread per core this
    process may use."""
    if threads is None:
        monkeypatch.delenv("GPUSTACK_THREADS", raising=False)
    else:
        monkeypatch.setenv("GPUSTACK_THREADS", threads)
    engine = load_model(ModelStore(models_home), MODEL, Settings.load(home=models_home))
    try:
        expected = int(threads) if threads else len(os.sched_getaffinity(0))
        assert engine.llm.context_params.n_threads == expected
        assert engine.llm.context_params.n_threads_batch == expected
    finally:
        engine.close()
