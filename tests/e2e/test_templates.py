"""Real models' chat templates end to end: SmolLM2's weights served under the templates of
reasoning and tool-calling models (set with `gpustack model set --chat-template`), called with the
official openai and anthropic clients.

Under DeepSeek-R1's template the prompt opens the thinking section (`<think>` ends the assistant's
header), and SmolLM2, which was never trained to close it, writes only reasoning: what it writes
must come back as reasoning, apart from the (empty) answer. Under the templates of Qwen 2.5,
Llama 3.1, Mistral Nemo, Mistral Small 3.2, Functionary, Command R7B and GPT-OSS the tools reach
the template, and a required tool call is held by grammar to the model's own format, which the
server reads back into OpenAI's and Anthropic's tool calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.support.harness import ServerProcess, clean_env, gpustack

R1 = "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"
QWEN3 = "Qwen-Qwen3-0.6B.jinja"
# Models named for the tool-call format their template shows.
TOOL_TEMPLATES = {
    "hermes": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "llama3": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "mistral": "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "mistral-args": "Mistral-Small-3.2-24B-Instruct-2506.jinja",
    "functionary": "meetkai-functionary-medium-v3.1.jinja",
    "command-r": "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
    "gpt-oss": "openai-gpt-oss-120b.jinja",
}
HELLO = [{"role": "user", "content": "Hello! Who are you?"}]


@pytest.fixture(scope="module")
def home(models_home: Path, chat_templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of SmolLM2 under several names: with R1's template, Qwen3's, one that refuses, and
    one per tool-call format."""
    folder = tmp_path_factory.mktemp("reasoning")
    home = folder / "home"
    env = clean_env(GPUSTACK_HOME=str(home))
    weights = next((models_home / "models" / "smollm2").glob("*.gguf"))
    (folder / "refuses.jinja").write_text("{{ raise_exception('This model takes no system messages.') }}")
    for name, template in (("r1", R1), ("qwen3", QWEN3), ("refuses", None), *TOOL_TEMPLATES.items()):
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


def test_responses_reasoning_items(client: openai.OpenAI) -> None:
    """On the Responses API the thinking is a `reasoning` item before the message, streamed as
    `response.reasoning_text` events, and counted in the usage."""
    response = client.responses.create(model="r1", input="Hello! Who are you?", max_output_tokens=24, temperature=0)
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text.strip() and "<think>" not in reasoning.content[0].text
    assert 0 < response.usage.output_tokens_details.reasoning_tokens <= response.usage.output_tokens
    events = list(
        client.responses.create(
            model="r1", input="Hello! Who are you?", max_output_tokens=24, temperature=0, stream=True
        )
    )
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert streamed == reasoning.content[0].text
    done = next(e for e in events if e.type == "response.reasoning_text.done")
    assert done.text == streamed and events[-1].response.output[0].type == "reasoning"


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


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now", "parameters": {}}}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.mark.parametrize("model", sorted(TOOL_TEMPLATES))
def test_a_tool_call_in_the_models_own_format_round_trips(client: openai.OpenAI, model: str) -> None:
    asked = {
        "model": model,
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,  # a small model may call again and again
        "max_tokens": 60,
    }
    reply = client.chat.completions.create(**asked, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    # The tools reach the template: the prompt is longer than the same chat's without them.
    plain = client.chat.completions.create(model=model, messages=ASK, max_tokens=1)
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens

    chunks = list(client.chat.completions.create(**asked, temperature=0, stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function.name == "get_weather"  # name first, then arguments
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    result = {"role": "tool", "tool_call_id": call.id, "content": "Cold and clear, -3 C."}
    history = [*ASK, choice.message.model_dump(exclude_none=True), result]
    final = client.chat.completions.create(
        model=model, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=12, temperature=0
    )
    assert final.choices[0].finish_reason in ("stop", "length") and not final.choices[0].message.tool_calls


@pytest.mark.parametrize("model", ["hermes", "gpt-oss"])
def test_a_responses_function_call_in_the_models_own_format(client: openai.OpenAI, model: str) -> None:
    tool = {"type": "function", **WEATHER["function"]}
    asked = {"model": model, "tools": [tool], "tool_choice": "required", "parallel_tool_calls": False}
    response = client.responses.create(**asked, input=ASK[0]["content"], max_output_tokens=60, temperature=0)
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Cold and clear, -3 C."}
    then = {"tools": [tool], "tool_choice": "none", "max_output_tokens": 12, "temperature": 0}
    answer = client.responses.create(model=model, previous_response_id=response.id, input=[result], **then)
    assert not [item for item in answer.output if item.type == "function_call"]
    # The stored turn is rendered as the whole conversation sent again would be. (Not compared:
    # the answers, which may differ in a close call with what else the KV cache holds.)
    history = [ASK[0], *[item.model_dump(exclude_none=True) for item in response.output], result]
    resent = client.responses.create(model=model, input=history, store=False, **then)
    assert answer.usage.input_tokens == resent.usage.input_tokens


def test_a_named_tool_is_the_one_called(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="hermes",
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
    )
    message = reply.choices[0].message
    assert [c.function.name for c in message.tool_calls or []] == ["get_time"], message


def test_anthropic_tool_use_in_the_models_own_format(claude: anthropic.Anthropic) -> None:
    tool = {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": WEATHER["function"]["parameters"],
    }
    greedy = {"temperature": 0}  # sampled, a long city name could outlast max_tokens
    message = claude.messages.create(
        model="hermes", max_tokens=60, messages=ASK, tools=[tool], tool_choice={"type": "any"}, extra_body=greedy
    )
    assert message.stop_reason == "tool_use"
    [use] = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)
    history = [
        *ASK,
        {"role": "assistant", "content": [block.model_dump() for block in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Cold."}]},
    ]
    final = claude.messages.create(model="hermes", max_tokens=12, messages=history, tools=[tool], extra_body=greedy)
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use")
