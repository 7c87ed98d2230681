"""Reasoning models and chat templates end to end: SmolLM2's weights served under real reasoning
models' templates (set with `gpustack model set --chat-template`), called with the official
openai and anthropic clients.

Under DeepSeek-R1's template the prompt opens the thinking section (`<think>` ends the assistant's
header), and SmolLM2, which was never trained to close it, writes only reasoning: what it writes
must come back as reasoning, apart from the (empty) answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.conftest import ServerProcess, clean_env, gpustack

R1 = "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"
QWEN3 = "Qwen-Qwen3-0.6B.jinja"
HELLO = [{"role": "user", "content": "Hello! Who are you?"}]


@pytest.fixture(scope="module")
def home(models_home: Path, chat_templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of SmolLM2 under three names: with R1's template, Qwen3's, and one that refuses."""
    folder = tmp_path_factory.mktemp("reasoning")
    home = folder / "home"
    env = clean_env(GPUSTACK_HOME=str(home))
    weights = next((models_home / "models" / "smollm2").glob("*.gguf"))
    (folder / "refuses.jinja").write_text("{{ raise_exception('This model takes no system messages.') }}")
    for name, template in (("r1", R1), ("qwen3", QWEN3), ("refuses", None)):
        assert gpustack("pull", str(weights), "--name", name, env=env).returncode == 0
        path = folder / f"{name}.jinja"
        if template is not None:
            path.write_text(chat_templates[template])
        result = gpustack("model", "set", name, "--chat-template", str(path), env=env)
        assert result.returncode == 0, result.stderr
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[ServerProcess]:
    with ServerProcess(home, "--no-pull") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def claude(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)


def test_reasoning_comes_apart_from_the_answer(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="r1", messages=HELLO, max_tokens=24, temperature=0)
    message = reply.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning.strip() and not message.content and "<think>" not in reasoning
    assert 0 < reply.usage.completion_tokens_details.reasoning_tokens <= reply.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model="r1",
            messages=HELLO,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices
    )
    assert streamed == reasoning  # the same greedy answer, in pieces
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens > 0


def test_anthropic_thinking_blocks(claude: anthropic.Anthropic) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    greedy = {"temperature": 0}  # this client version has no `temperature` argument
    message = claude.messages.create(model="r1", max_tokens=24, messages=HELLO, thinking=thinking, extra_body=greedy)
    assert message.content[0].type == "thinking" and message.content[0].thinking.strip()
    with claude.messages.stream(
        model="r1", max_tokens=24, messages=HELLO, thinking=thinking, extra_body=greedy
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds and final.content[0].thinking == message.content[0].thinking
    # Without `thinking`, the reasoning is not shown.
    plain = claude.messages.create(model="r1", max_tokens=24, messages=HELLO, extra_body=greedy)
    assert all(block.type != "thinking" for block in plain.content)


def test_template_variables_reach_the_template(client: openai.OpenAI) -> None:
    """Qwen3's template closes an empty thinking section in the prompt when thinking is off."""

    def prompt_tokens(**fields) -> int:
        reply = client.chat.completions.create(model="qwen3", messages=HELLO, max_tokens=1, **fields)
        return reply.usage.prompt_tokens

    on = prompt_tokens()
    off = prompt_tokens(extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert off > on  # "<think>\n\n</think>\n\n" more


def test_a_template_that_refuses_is_a_400_naming_the_model(server: ServerProcess, claude: anthropic.Anthropic) -> None:
    body = {"model": "refuses", "messages": HELLO, "max_tokens": 4}
    answer = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "'refuses'" in error["message"] and "This model takes no system messages." in error["message"]
    assert error["code"] == "chat_template_error"
    with pytest.raises(anthropic.BadRequestError, match="takes no system messages"):
        claude.messages.create(model="refuses", max_tokens=4, messages=HELLO)


def test_reasoning_can_stay_in_the_text(home: Path) -> None:
    with ServerProcess(home, "--no-pull", "--reasoning-format", "none") as raw:
        body = {"model": "r1", "messages": HELLO, "max_tokens": 24, "temperature": 0}
        reply = httpx.post(raw.url + "/v1/chat/completions", json=body, timeout=120).json()
    message = reply["choices"][0]["message"]
    assert message["content"].strip() and "reasoning_content" not in message
    assert "completion_tokens_details" not in reply["usage"]
    assert json.dumps(reply)  # a plain answer
