"""OpenAI's Responses API on the real SmolLM2 through a real `gpustack serve` with API keys,
called with the official `openai` client: plain and streamed answers, function tools, JSON
schemas, conversations continued by `previous_response_id`, the stored responses' routes, and
their keeping across server processes and apart between keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.support.harness import ServerProcess, clean_env, gpustack, home_sharing_models
from tests.support.openapi import validate

MODEL = "smollm2"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
GREEDY = {"temperature": 0, "extra_body": {"seed": 0}}


@pytest.fixture(scope="module")
def home(models_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home of its own (keys, the response store) sharing the test models' files."""
    return home_sharing_models(models_home, tmp_path_factory.mktemp("responses-home"))


@pytest.fixture(scope="module")
def keys(home: Path) -> dict[str, str]:
    made = {}
    for name in ("alice", "bob"):
        result = gpustack("keys", "create", "--name", name, env=clean_env(GPUSTACK_HOME=str(home)))
        assert result.returncode == 0, result.stderr
        made[name] = result.stdout.strip()
    return made


@pytest.fixture(scope="module")
def server(home: Path, keys: dict[str, str]) -> Iterator[ServerProcess]:
    # Seeded requests read their whole prompt: a conversation's greedy words then do not depend on
    # which earlier test's prefix a slot still holds (a cached prefix is rounded as the batch that
    # read it was, and SmolLM2-135M's recall of a name is a close call).
    env = {"GPUSTACK_SEED_FROM_SCRATCH": "true"}
    with ServerProcess(home, "--no-pull", "--preload", MODEL, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerProcess, keys: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=keys["alice"], max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def vocab(models_home: Path):
    from llama_cpp import Llama

    path = next((models_home / "models" / MODEL).glob("*.gguf"))
    return Llama(str(path), vocab_only=True, verbose=False)


def tokens(vocab, *turns: tuple[str, str]) -> int:
    text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
    return len(vocab.tokenize((text + "<|im_start|>assistant\n").encode(), add_bos=False, special=True))


def raw(server: ServerProcess, key: str, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.request(method, server.url + path, headers=headers, timeout=120, **kwargs)


def test_plain_response(client: openai.OpenAI, server: ServerProcess, keys: dict[str, str], vocab) -> None:
    response = client.responses.create(
        model=MODEL,
        instructions="Answer briefly.",
        input="What is the capital of France?",
        max_output_tokens=30,
        **GREEDY,
    )
    assert response.id.startswith("resp_") and response.object == "response" and response.model == MODEL
    assert response.status in ("completed", "incomplete") and response.output_text.strip()
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    usage = response.usage
    assert usage.input_tokens == tokens(
        vocab, ("system", "Answer briefly."), ("user", "What is the capital of France?")
    )
    assert 0 < usage.output_tokens <= 30 and usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens == len(vocab.tokenize(response.output_text.encode(), add_bos=False))
    with_logprobs = client.responses.create(
        model=MODEL,
        input="Hi",
        max_output_tokens=5,
        include=["message.output_text.logprobs"],
        top_logprobs=2,
        **GREEDY,
    )
    part = with_logprobs.output[0].content[0]
    assert "".join(lp.token for lp in part.logprobs) == part.text
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in part.logprobs)
    # The raw body, as the spec's `Response` has it.
    body = raw(
        server, keys["alice"], "POST", "/v1/responses", json={"model": MODEL, "input": "Hi", "max_output_tokens": 4}
    )
    assert body.status_code == 200
    validate(body.json(), "Response")
    assert body.json()["status"] == "incomplete" and body.json()["incomplete_details"] == {
        "reason": "max_output_tokens"
    }


def test_streamed_response(client: openai.OpenAI, server: ServerProcess, keys: dict[str, str]) -> None:
    events = list(client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=20, stream=True, **GREEDY))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        events[-1].type,
    ] and events[-1].type in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text and final.output_text == text
    assert 0 < final.usage.output_tokens <= 20
    # The raw stream: each event's name on its `event:` line, each data valid.
    with httpx.stream(
        "POST",
        server.url + "/v1/responses",
        headers={"Authorization": f"Bearer {keys['alice']}"},
        json={"model": MODEL, "input": "Hi", "max_output_tokens": 5, "stream": True},
        timeout=120,
    ) as stream:
        lines = [line for line in stream.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    datas = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in datas] and names[-1] == "response.incomplete"
    for data in datas:
        validate(data, "ResponseStreamEvent")


def _call(response) -> openai.types.responses.ResponseFunctionToolCall:
    [call] = [item for item in response.output if item.type == "function_call"]
    return call


def test_function_tool_round_trip(client: openai.OpenAI) -> None:
    called = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=60,
        **GREEDY,
    )
    call = _call(called)
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.status == "completed"
    assert isinstance(json.loads(call.arguments)["city"], str)
    # The result goes back as the whole conversation, sent again...
    items = [
        {"role": "user", "content": "What is the weather in Paris?"},
        *[item.model_dump(exclude_none=True) for item in called.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny", "temperature": "21C"}'},
    ]
    resent = client.responses.create(
        model=MODEL, input=items, tools=[WEATHER], tool_choice="none", max_output_tokens=40, store=False, **GREEDY
    )
    assert resent.output_text and not [i for i in resent.output if i.type == "function_call"]
    # ...or after the stored one: the same prompt.
    continued = client.responses.create(
        model=MODEL,
        previous_response_id=called.id,
        input=items[-1:],
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=40,
        **GREEDY,
    )
    assert continued.usage.input_tokens == resent.usage.input_tokens
    with pytest.raises(openai.NotFoundError):  # store: false kept nothing
        client.responses.retrieve(resent.id)


def test_streamed_function_call(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=MODEL,
            input="Weather in Rome?",
            tools=[WEATHER],
            tool_choice="required",
            parallel_tool_calls=False,
            max_output_tokens=60,
            stream=True,
            **GREEDY,
        )
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert done.arguments == deltas and "city" in json.loads(deltas)
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "function_call" and added.item.name == "get_weather"
    call = _call(events[-1].response)
    answer = list(
        client.responses.create(
            model=MODEL,
            previous_response_id=events[-1].response.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21C"}],
            max_output_tokens=30,
            stream=True,
            **GREEDY,
        )
    )
    assert answer[-1].response.output_text


def test_json_schema_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    for seed in range(2):
        response = client.responses.create(
            model=MODEL,
            input="Describe a person as JSON.",
            text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}},
            max_output_tokens=100,
            temperature=0.7,
            extra_body={"seed": seed},
        )
        assert response.status == "completed"
        jsonschema.validate(json.loads(response.output_text), schema)
        assert response.text.format.type == "json_schema"


def test_previous_response_continues_the_conversation(client: openai.OpenAI, vocab) -> None:
    first = client.responses.create(
        model=MODEL,
        instructions="You are a helpful assistant.",
        input="My name is Zorblax. Remember it.",
        max_output_tokens=30,
        **GREEDY,
    )
    question = "What is my name?"
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, input=question, max_output_tokens=20, **GREEDY
    )
    # The model read the first turn: its prompt holds both turns (the earlier instructions are
    # not carried over, as with OpenAI), and the name given in it comes back.
    turns = [("user", "My name is Zorblax. Remember it."), ("assistant", first.output_text), ("user", question)]
    assert second.usage.input_tokens == tokens(vocab, ("system", SYSTEM), *turns)
    assert "Zorblax" in second.output_text
    assert second.previous_response_id == first.id
    # Counting the input of a third turn takes the same history.
    counted = client.responses.input_tokens.count(model=MODEL, previous_response_id=second.id, input="And yours?")
    history = [*turns, ("assistant", second.output_text), ("user", "And yours?")]
    assert counted.input_tokens == tokens(vocab, ("system", SYSTEM), *history)


def test_stored_responses(client: openai.OpenAI, server: ServerProcess, keys: dict[str, str]) -> None:
    items = [{"role": "user", "content": f"Item {n}"} for n in range(3)]
    made = client.responses.create(model=MODEL, input=items, max_output_tokens=3, metadata={"topic": "test"})
    got = client.responses.retrieve(made.id)
    assert got.output_text == made.output_text and got.metadata == {"topic": "test"}
    validate(raw(server, keys["alice"], "GET", f"/v1/responses/{made.id}").json(), "Response")
    listed = client.responses.input_items.list(made.id, order="asc")
    assert [i.content[0].text for i in listed.data] == ["Item 0", "Item 1", "Item 2"] and not listed.has_more
    page = raw(server, keys["alice"], "GET", f"/v1/responses/{made.id}/input_items?limit=2")
    validate(page.json(), "ResponseItemList")
    assert [i["content"][0]["text"] for i in page.json()["data"]] == ["Item 2", "Item 1"] and page.json()["has_more"]
    after = page.json()["last_id"]
    rest = raw(server, keys["alice"], "GET", f"/v1/responses/{made.id}/input_items?limit=2&after={after}").json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["Item 0"] and not rest["has_more"]
    # Another key sees none of it.
    for method, path in [
        ("GET", f"/v1/responses/{made.id}"),
        ("GET", f"/v1/responses/{made.id}/input_items"),
        ("DELETE", f"/v1/responses/{made.id}"),
    ]:
        answer = raw(server, keys["bob"], method, path)
        assert answer.status_code == 404 and answer.json()["error"]["message"], (method, path)
    other = raw(
        server,
        keys["bob"],
        "POST",
        "/v1/responses",
        json={"model": MODEL, "input": "Hi", "previous_response_id": made.id},
    )
    assert other.status_code == 404 and other.json()["error"]["param"] == "previous_response_id"
    deleted = client.responses.delete(made.id)
    assert deleted is None  # the client returns nothing; the raw body says it
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    gone = raw(server, keys["alice"], "DELETE", f"/v1/responses/{made.id}")
    assert gone.status_code == 404


def test_deleted_body(server: ServerProcess, keys: dict[str, str]) -> None:
    made = raw(
        server, keys["alice"], "POST", "/v1/responses", json={"model": MODEL, "input": "Hi", "max_output_tokens": 2}
    )
    deleted = raw(server, keys["alice"], "DELETE", f"/v1/responses/{made.json()['id']}")
    assert deleted.json() == {"id": made.json()["id"], "object": "response", "deleted": True}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "Hi", "background": True}, "background"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]},
            "input[0].content[0].image_url",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
            "input[0].content[0]",
        ),
        ({"input": "Hi", "previous_response_id": "resp_missing"}, "previous_response_id"),
        ({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"input": "Hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": []}, "input"),
    ],
)
def test_bad_requests(server: ServerProcess, keys: dict[str, str], body: dict, param: str) -> None:
    answer = raw(server, keys["alice"], "POST", "/v1/responses", json={"model": MODEL, **body})
    assert answer.status_code in (400, 404), answer.text
    assert answer.json()["error"]["param"] == param
    validate(answer.json(), "ErrorResponse")


def test_no_key_no_response(server: ServerProcess) -> None:
    answer = httpx.post(server.url + "/v1/responses", json={"model": MODEL, "input": "Hi"}, timeout=30)
    assert answer.status_code == 401


def test_stored_responses_outlive_a_restart(home: Path, server: ServerProcess, keys: dict[str, str]) -> None:
    made = raw(
        server, keys["alice"], "POST", "/v1/responses", json={"model": MODEL, "input": "Hi", "max_output_tokens": 3}
    )
    made = made.json()
    server.__exit__(None, None, None)  # the module's server stops: this test is its last
    with ServerProcess(home, "--no-pull") as again:
        fresh = openai.OpenAI(base_url=again.url + "/v1", api_key=keys["alice"], max_retries=0, timeout=60)
        kept = fresh.responses.retrieve(made["id"])
        assert kept.output_text == made["output"][0]["content"][0]["text"] and kept.usage.total_tokens > 0
        with pytest.raises(openai.NotFoundError):
            openai.OpenAI(base_url=again.url + "/v1", api_key=keys["bob"], max_retries=0).responses.retrieve(made["id"])
