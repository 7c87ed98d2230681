"""Requests that used to crash the server or stall everyone on a model, against real engines:
SmolLM2 on llama.cpp and Whisper tiny on faster-whisper."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import math
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.support.harness import ServerProcess
from tests.support.streams import stream_times

MODEL = "smollm2"
# The patterns that stalled every stream on the model (refused by default now), and two of the same
# kind whose grammar takes about 2 s to apply to the whole vocabulary once (past the loop bound
# too, which the server below raises): a normal stream beside them waited that long per token.
REPORTED = [r"^([a-z]*[a-z]*){20}$", r"^(.*){50}$", r"^a{1000000}$", r"^[\s\S]{0,30000}$"]
SLOW = [r"^([a-z]*[a-z]*){10}$", r"^(.*){30}$"]


@pytest.fixture(scope="module")
def server(models_home: Path) -> Iterator[ServerProcess]:
    """Pattern loops allowed far past the default, so that a slow grammar reaches the engine."""
    env = {"GPUSTACK_MAX_PATTERN_LOOPS": "100", "GPUSTACK_GRAMMAR_TOKEN_BUDGET": "0.3"}
    args = ("--no-pull", "--preload", MODEL, "--parallel", "2", "--sse-keepalive", "0.2")
    with ServerProcess(models_home, *args, env=env) as running:
        yield running


def _pattern(pattern: str) -> dict:
    return {"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}, "required": ["a"]}


def _format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}


def chat(text: str, **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "temperature": 0, **fields}


def test_repetitions_around_the_bound_never_crash(server: ServerProcess) -> None:
    for size in (999, 1000, 1001, 30000, 100000):
        for schema in (
            _pattern(f"^a{{0,{size}}}$"),
            _pattern(f"^.{{0,{size}}}$"),
            _pattern(rf"^[\s\S]{{0,{size}}}$"),
            {"type": "string", "maxLength": size, "minLength": min(size, 3)},
        ):
            body = chat("Say a word.", max_tokens=8, response_format=_format(schema))
            response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
            if size > 1000 and "maxLength" not in schema:  # a tool's large maxLength is dropped, not refused
                assert response.status_code == 400, (size, schema)
                assert "over the limit of 1000" in response.json()["error"]["message"]
            else:  # served, or refused as llama.cpp cannot parse it (`\s` is no GBNF class): never a crash
                assert response.status_code in (200, 400), response.text
                if response.status_code == 400:
                    assert response.json()["error"]["code"] == "invalid_schema"
    assert httpx.get(server.url + "/healthz").status_code == 200


async def _stream_gaps(client: httpx.AsyncClient, body: dict) -> tuple[str, list[float]]:
    """The streamed text, and the time before each of its pieces (from the request's start)."""
    started = time.monotonic()
    text, times = await stream_times(client, body)
    return text, [b - a for a, b in itertools.pairwise([started, *times])]


@pytest.mark.parametrize("pattern", SLOW)
async def test_a_slow_grammar_does_not_stall_the_other_streams(server: ServerProcess, pattern: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        normal = asyncio.create_task(_stream_gaps(client, chat("Count from one to fifty in words.", max_tokens=60)))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        slow = await client.post(
            "/v1/chat/completions",
            json=chat("Write a long story.", max_tokens=40, response_format=_format(_pattern(pattern))),
        )
        slow_seconds = time.monotonic() - started
        text, gaps = await normal
    # The slow grammar either finished (drawn without it as often as it allowed) or was ended by
    # its budget with a clear error; the other stream kept its pace meanwhile.
    if slow.status_code == 400:
        error = slow.json()["error"]
        assert error["code"] == "invalid_schema" and "grammar took over 0.3 s" in error["message"], error
    else:
        assert slow.status_code == 200, slow.text
    assert slow_seconds < 120
    assert text and max(gaps) < 2.0, (max(gaps), len(gaps))


def test_the_patterns_of_the_report_are_refused_by_default(models_home: Path, tmp_path: Path) -> None:
    with ServerProcess(models_home, "--no-pull") as default:
        for pattern in REPORTED + SLOW:
            body = chat("hi", max_tokens=4, response_format=_format(_pattern(pattern)))
            response = httpx.post(default.url + "/v1/chat/completions", json=body, timeout=60)
            assert response.status_code == 400, pattern
            assert response.json()["error"]["param"] == "response_format"
            assert "response_format.properties.a.pattern" in response.json()["error"]["message"]


async def test_a_large_completion_request_shares_the_model(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
        prompts = [f"List {i}:" for i in range(60)]
        started = time.monotonic()
        large = asyncio.create_task(
            client.post("/v1/completions", json={"model": MODEL, "prompt": prompts, "n": 2, "max_tokens": 16})
        )
        await asyncio.sleep(1.0)
        asked = time.monotonic()
        text, _ = await _stream_gaps(client, chat("Say hello.", max_tokens=4))
        first_chat = time.monotonic() - asked
        answer = await large
        large_seconds = time.monotonic() - started
    assert answer.status_code == 200 and len(answer.json()["choices"]) == 120
    assert text
    # The chat got a slot within a few of the large request's parts, not after all 120 of them.
    assert first_chat < large_seconds / 3, (first_chat, large_seconds)


def test_keepalives_arrive_while_a_long_prompt_is_read(server: ServerProcess) -> None:
    long = "The quick brown fox jumps over the lazy dog. " * 350  # about 3,500 tokens to read
    body = chat(long + "\nHow many foxes?", max_tokens=4, stream=True)
    pings_before_text = 0
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line == ": keep-alive":
                pings_before_text += 1
            elif line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
    assert pings_before_text >= 1
    anthropic_body = {
        "model": MODEL,
        "max_tokens": 4,
        "stream": True,
        # Another prompt: the first one's tokens are cached now.
        "messages": [{"role": "user", "content": "A slow green turtle crosses the wide road. " * 350 + "\nWho?"}],
    }
    events: list[str] = []
    with httpx.stream("POST", server.url + "/v1/messages", json=anthropic_body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
                if events[-1] == "content_block_delta":
                    break
    # message_start and its ping, then the keep-alive pings while the prompt is read.
    assert events.index("content_block_delta") > 0 and events[: events.index("content_block_delta")].count("ping") >= 2
    # The official clients read through the pings.
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    body["messages"][0]["content"] = "Rain falls on the quiet old town square. " * 350 + "\nWhere?"
    chunks = list(client.chat.completions.create(**body))
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    messages = [{"role": "user", "content": "Snow covers the hills near the northern lake. " * 350 + "\nWhat?"}]
    with anthropic.Anthropic(base_url=server.url, api_key="none").messages.stream(
        model=MODEL, max_tokens=4, messages=messages
    ) as stream:
        assert stream.get_final_message().content


def test_a_named_tool_choice_is_one_call(server: ServerProcess) -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What is the weather in Paris and in Oslo?"}],
            tools=[weather],
            tool_choice=choice,
            temperature=0,
            max_tokens=120,
        )
        calls = reply.choices[0].message.tool_calls or []
        assert calls and reply.choices[0].finish_reason == "tool_calls"
        if choice != "required":
            assert len(calls) == 1
        made = [(c.function.name, json.dumps(json.loads(c.function.arguments), sort_keys=True)) for c in calls]
        assert len(made) == len(set(made)), made  # no call repeated in one answer


def test_a_model_that_does_not_fit_is_a_clear_507(models_home: Path) -> None:
    with ServerProcess(models_home, "--no-pull", "--parallel", "512", "--ctx-size", "8192") as big:
        for _ in range(2):  # the next request tries again, and gets the same answer
            response = httpx.post(big.url + "/v1/chat/completions", json=chat("hi", max_tokens=2), timeout=120)
            assert response.status_code == 507, response.text
            error = response.json()["error"]
            assert error["code"] == "insufficient_memory" and "GiB" in error["message"]
            assert "512 slots of 8192 tokens" in error["message"]
        assert httpx.get(big.url + "/healthz").status_code == 200
        embedded = httpx.post(big.url + "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x"}, timeout=120)
        assert embedded.status_code == 200  # the server goes on serving its other models


def _wav(seconds: float, rate: int = 16000) -> bytes:
    samples = b"".join(
        struct.pack("<h", int(3000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(int(seconds * rate))
    )
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + len(samples))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", len(samples))
    )
    return header + samples


def test_audio_past_its_bound_is_refused(models_home: Path) -> None:
    env = {"GPUSTACK_MAX_AUDIO_SECONDS": "2"}
    with ServerProcess(models_home, "--no-pull", env=env) as served:
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="none")
        with pytest.raises(openai.BadRequestError) as refused:
            client.audio.transcriptions.create(model="whisper-tiny.en", file=("long.wav", io.BytesIO(_wav(5))))
        assert "longer than the limit of 2 seconds" in str(refused.value)
        assert refused.value.body["code"] == "invalid_audio"
        short = client.audio.transcriptions.create(model="whisper-tiny.en", file=("short.wav", io.BytesIO(_wav(1))))
        assert isinstance(short.text, str)


def test_serve_on_ipv6_loopback(models_home: Path) -> None:
    with ServerProcess(models_home, "--no-pull", "--host", "::1", host="::1") as served:
        assert served.url.startswith("http://[::1]:")
        assert httpx.get(served.url + "/v1/models").status_code == 200
    with ServerProcess(models_home, "--no-pull", env={"GPUSTACK_HOST": "[::1]"}, host="::1") as served:
        assert httpx.get(served.url + "/v1/models").status_code == 200
