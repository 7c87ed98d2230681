"""Remote models: a `gpustack serve` (downstream) whose models another real `gpustack serve`
(upstream) runs, called with the official clients; edge cases against a small test upstream."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from gpustack_cli.models.store import ModelStore
from tests.support.harness import ServerProcess, clean_env, gpustack, seeds_proxy_example
from tests.support.upstream import TestUpstream, closed_port_url

UP_KEY, DOWN_KEY = "upstream-secret", "downstream-secret"
DOWN = {"Authorization": f"Bearer {DOWN_KEY}"}


@pytest.fixture(scope="module")
def upstream(models_home: Path, bge_m3: str) -> Iterator[ServerProcess]:
    # Everything preloaded, so that no test waits on a cold load upstream.
    preload = [
        arg
        for name in ("smollm2", "all-minilm-l6-v2", "whisper-tiny.en", "piper-joe", "bge-m3")
        for arg in ("--preload", name)
    ]
    with ServerProcess(
        models_home, "--no-pull", *preload, env={"GPUSTACK_API_KEY": UP_KEY, "GPUSTACK_MAX_LOADED_MODELS": "6"}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def test_upstream(upstream: ServerProcess) -> Iterator[TestUpstream]:
    server = TestUpstream(relay_to=upstream.url).start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["raw", "aiohttp"])
def downstream(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: ServerProcess,
    test_upstream: TestUpstream,
) -> Iterator[ServerProcess]:
    """The server under test, once with each client of the byte relay (`GPUSTACK_RELAY_CLIENT`)."""
    home = tmp_path_factory.mktemp("downstream")
    env = clean_env(GPUSTACK_HOME=str(home))

    def add(name: str, *args: str) -> None:
        result = gpustack("add-remote", name, *args, env=env)
        assert result.returncode == 0, result.stderr

    key = ["--api-key", UP_KEY]
    add("chat", upstream.url, *key, "--upstream-model", "smollm2")
    add("emb", upstream.url, *key, "--upstream-model", "all-minilm-l6-v2", "--categories", "embedding,reranker")
    add(
        "whisper",
        upstream.url,
        *key,
        "--upstream-model",
        "whisper-tiny.en",
        "--categories",
        "speech_to_text",
        "--generic-proxy",
    )
    add("voice", upstream.url, *key, "--upstream-model", "piper-joe", "--categories", "text_to_speech")
    add("bge-m3", upstream.url, *key, "--categories", "embedding", "--generic-proxy", "--proxy-prefix", "/model/proxy")
    add("nokey", upstream.url, "--upstream-model", "smollm2")
    add("balanced", closed_port_url(), upstream.url, *key, "--upstream-model", "smollm2")
    add("relayed", test_upstream.url, *key, "--upstream-model", "smollm2")  # no /v1/messages or /v1/responses
    # A short upstream timeout for the model the timeout tests use, and for it only.
    add("edge", test_upstream.url, "--categories", "embedding", "--generic-proxy", "--timeout", "5")
    # By host name: a cookie jar would keep cookies of a named host (not those of an IP address).
    named = test_upstream.url.replace("127.0.0.1", "localhost")
    add("edge-named", named, "--categories", "embedding", "--generic-proxy")
    add("watched", test_upstream.url, "--categories", "embedding", "--generic-proxy", "--health-path", "echo/health")
    result = gpustack("keys", "create", "--name", "only-chat", "--models", "chat", env=env)
    assert result.returncode == 0
    (home / "only-chat.key").write_text(result.stdout.strip())
    env = {"GPUSTACK_API_KEY": DOWN_KEY, "GPUSTACK_HEALTH_INTERVAL": "0.5", "GPUSTACK_RELAY_CLIENT": request.param}
    with ServerProcess(home, "--no-pull", env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(downstream: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=downstream.url + "/v1", api_key=DOWN_KEY, max_retries=0)


def test_models_are_listed(client: openai.OpenAI) -> None:
    models = {m.id: m.model_extra["categories"] for m in client.models.list()}
    assert models["chat"] == ["llm"] and models["emb"] == ["embedding", "reranker"]


def test_chat_through_the_upstream(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0, seed=0
    )
    assert reply.choices[0].message.content and reply.usage.completion_tokens == 5
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0, seed=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply.choices[0].message.content


def test_embeddings_rerank_speech_and_transcription(client: openai.OpenAI, downstream: ServerProcess) -> None:
    vectors = client.embeddings.create(model="emb", input=["a cat", "a dog"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384
    ranked = httpx.post(
        downstream.url + "/v1/rerank",
        headers=DOWN,
        timeout=60,
        json={"model": "emb", "query": "What is a panda?", "documents": ["hi", "a panda is a bear"]},
    )
    assert ranked.json()["results"][0]["index"] == 1
    audio = client.audio.speech.create(model="voice", voice="alloy", input="Hello there.", response_format="wav")
    text = client.audio.transcriptions.create(model="whisper", file=("hello.wav", audio.content)).text
    assert "hello" in text.lower()
    # The same upload through the Generic Proxy, forwarded as it came.
    via_proxy = httpx.post(
        downstream.url + "/model/proxy/v1/audio/transcriptions",
        timeout=60,
        headers={**DOWN, "X-GPUStack-Model": "whisper"},
        files={"file": ("hello.wav", audio.content)},
        data={"model": "whisper"},
    )
    assert via_proxy.status_code == 200 and "hello" in via_proxy.json()["text"].lower()


def test_anthropic_messages(downstream: ServerProcess) -> None:
    claude = anthropic.Anthropic(base_url=downstream.url, api_key=DOWN_KEY, max_retries=0)
    # Both through the same converters as a local model, onto the upstream's chat completions: a
    # gpustack upstream (which has /v1/messages too) and one with chat completions only.
    for model in ("chat", "relayed"):
        # Greedy (anthropic 2.x takes no sampling arguments): a sampled greeting may end before its 6 tokens.
        hi = [{"role": "user", "content": "Hi"}]
        message = claude.messages.create(model=model, max_tokens=6, messages=hi, extra_body={"temperature": 0})
        assert message.content[0].text and message.stop_reason == "max_tokens", model
        with claude.messages.stream(model=model, max_tokens=6, messages=[{"role": "user", "content": "Hi"}]) as s:
            kinds = [e.type for e in s]
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop", model
    tool = {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    message = claude.messages.create(
        model="relayed",
        max_tokens=80,
        tools=[tool],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        extra_body={"temperature": 0, "seed": 0},
    )
    assert message.stop_reason == "tool_use" and "city" in message.content[-1].input


def test_responses(client: openai.OpenAI) -> None:
    # Both made by the upstream's chat completions (one upstream has /v1/responses, one has not).
    for model in ("chat", "relayed"):
        response = client.responses.create(model=model, input="Hi", max_output_tokens=6, temperature=0)
        assert response.status == "incomplete" and response.output_text, model
        kinds = [e.type for e in client.responses.create(model=model, input="Hi", max_output_tokens=6, stream=True)]
        assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.incomplete", model
    weather = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    called = client.responses.create(
        model="relayed",
        input="Weather in Paris?",
        tools=[weather],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=80,
        temperature=0,
        extra_body={"seed": 0},
    )
    [call] = [item for item in called.output if item.type == "function_call"]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    # The translated response is stored here, and continues here: the upstream reads the same
    # prompt as for the whole conversation sent again.
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21C"}
    again = client.responses.create(
        model="relayed", previous_response_id=called.id, input=[result], max_output_tokens=5
    )
    history = [{"role": "user", "content": "Weather in Paris?"}, call.model_dump(exclude_none=True), result]
    resent = client.responses.create(model="relayed", input=history, max_output_tokens=5, store=False)
    assert again.usage.input_tokens == resent.usage.input_tokens > 0
    assert client.responses.retrieve(again.id).previous_response_id == called.id


def test_the_seeds_curl_example_through_a_remote(downstream: ServerProcess) -> None:
    assert [len(v) for v in seeds_proxy_example(downstream.url, DOWN_KEY)] == [384, 384]


def test_keys(downstream: ServerProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=downstream.url + "/v1", api_key=UP_KEY, max_retries=0).models.list()
    # Without the upstream's own key, the upstream refuses, and its answer comes back as it was.
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="nokey", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    only_chat = (Path(downstream.env["GPUSTACK_HOME"]) / "only-chat.key").read_text()
    limited = {"Authorization": f"Bearer {only_chat}", "X-GPUStack-Model": "bge-m3"}
    assert httpx.post(downstream.url + "/model/proxy/embed", json={"inputs": ["x"]}, headers=limited).status_code == 404
    assert (
        httpx.post(
            downstream.url + "/model/proxy/embed", json={"inputs": ["x"]}, headers={"X-GPUStack-Model": "bge-m3"}
        ).status_code
        == 401
    )


def test_round_robin_skips_a_dead_upstream(client: openai.OpenAI) -> None:
    for _ in range(4):
        reply = client.chat.completions.create(
            model="balanced", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert reply.choices[0].message.content


def test_health_checks_show_which_upstream_is_up(downstream: ServerProcess, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="balanced", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    dead, live = ModelStore(Path(downstream.env["GPUSTACK_HOME"])).get("balanced").options["urls"]
    wanted = {
        f'gpustack_upstream_up{{model="balanced",url="{dead}"}} 0.0',
        f'gpustack_upstream_up{{model="balanced",url="{live}"}} 1.0',
    }
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = set(httpx.get(downstream.url + "/metrics", headers=DOWN).text.splitlines())
        if wanted <= metrics:
            break
        time.sleep(0.2)
    assert wanted <= metrics


def test_health_checks_run_on_their_own(downstream: ServerProcess, test_upstream: TestUpstream) -> None:
    headers = {**DOWN, "X-GPUStack-Model": "watched"}
    httpx.get(downstream.url + "/model/proxy/echo/load", headers=headers).raise_for_status()  # loads the model
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(s["path"] == "/echo/health" for s in test_upstream.seen):
        time.sleep(0.1)
    check = test_upstream.last("/echo/health")
    assert check["method"] == "GET" and "Authorization" not in check["headers"]  # no key set: none sent


def test_proxy_forwarding_details(downstream: ServerProcess, test_upstream: TestUpstream) -> None:
    headers = {**DOWN, "X-GPUStack-Model": "edge", "X-Custom": "kept"}
    got = httpx.get(downstream.url + "/model/proxy/echo/path?x=1&y=two", headers=headers)
    assert got.status_code == 200 and got.json() == {"path": "/echo/path?x=1&y=two", "method": "GET", "length": 0}
    assert got.headers.get_list("set-cookie") == ["a=1", "b=2"] and got.headers["x-upstream"] == "test"
    assert got.headers["server"] == "gpustack" and got.headers["x-content-type-options"] == "nosniff"
    seen = test_upstream.last("/echo/path?x=1&y=two")["headers"]
    assert seen["X-Custom"] == "kept" and "Authorization" not in seen  # our key never leaves
    sent_id = next(v for k, v in seen.items() if k.lower() == "x-request-id")
    assert sent_id == got.headers["x-request-id"]  # one id in both servers' logs
    put = httpx.put(downstream.url + "/model/proxy/echo/raw", headers=headers, content=b"\x00\x01binary")
    assert put.json() == {"path": "/echo/raw", "method": "PUT", "length": 8}
    big = httpx.get(downstream.url + "/model/proxy/big?mb=20", headers=headers, timeout=120)
    assert big.status_code == 200 and len(big.content) == 20 * 1024 * 1024
    assert big.headers["transfer-encoding"] == "chunked" and big.headers["x-request-id"].startswith("req_")
    # A browser's cookies for this server, and the headers `Connection` names for this hop, stay here.
    hop = {**headers, "Cookie": "session=ours", "Connection": "keep-alive, X-Hop", "X-Hop": "this hop"}
    assert httpx.get(downstream.url + "/model/proxy/echo/hop", headers=hop).status_code == 200
    seen = {k.lower(): v for k, v in test_upstream.last("/echo/hop")["headers"].items()}
    assert "cookie" not in seen and "x-hop" not in seen and seen["x-custom"] == "kept"
    # An HTTP/1.0 client takes no chunks: the body comes unframed, and ends where the connection does.
    host, port = downstream.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        sock.sendall(f"GET /model/proxy/big?mb=1 HTTP/1.0\r\n{fields}\r\n".encode())
        answer = b"".join(iter(lambda: sock.recv(1 << 16), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower() and body == b"x" * 1024 * 1024
    assert httpx.get(downstream.url + "/model/proxy/%2e%2e/v1/models", headers=headers).status_code == 400


def test_upstream_cookies_are_not_kept_for_other_users(downstream: ServerProcess, test_upstream: TestUpstream) -> None:
    headers = {**DOWN, "X-GPUStack-Model": "edge-named"}
    first = httpx.get(downstream.url + "/model/proxy/echo/first", headers=headers)
    assert first.status_code == 200 and first.headers.get_list("set-cookie") == ["a=1", "b=2"]
    httpx.get(downstream.url + "/model/proxy/echo/second", headers=headers).raise_for_status()
    assert "Cookie" not in test_upstream.last("/echo/second")["headers"]  # the Set-Cookie went to its user only


def test_upstream_failures(downstream: ServerProcess, test_upstream: TestUpstream) -> None:
    headers = {**DOWN, "X-GPUStack-Model": "edge"}
    dropped = httpx.get(downstream.url + "/model/proxy/drop", headers=headers)
    assert dropped.status_code == 502 and "upstream" in dropped.json()["error"]["message"].lower()
    for query in ("", "?length=1"):  # cut off mid-answer: the client sees it cut, not complete
        with pytest.raises(httpx.RemoteProtocolError, match=r"without sending complete message body"):
            httpx.get(downstream.url + "/model/proxy/cut" + query, headers=headers)
    started = time.monotonic()
    slow = httpx.get(downstream.url + "/model/proxy/slow", headers=headers, timeout=60)
    assert slow.status_code == 504 and time.monotonic() - started < 20  # edge's --timeout 5
    test_upstream.disconnected.clear()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(downstream.url + "/v1/embeddings", headers=DOWN, json={"model": "edge", "input": "x"}, timeout=1)
    assert test_upstream.disconnected.wait(10)  # our client left, so the upstream request was closed
    for _ in range(10):  # clients that leave a proxied stream after its first piece, the rest unread
        test_upstream.disconnected.clear()
        with httpx.stream("GET", downstream.url + "/model/proxy/big?mb=500", headers=headers) as streaming:
            assert len(next(streaming.iter_raw())) > 0
        assert test_upstream.disconnected.wait(10)  # the relay stopped, and closed its request
    assert httpx.get(downstream.url + "/model/proxy/echo/after", headers=headers).status_code == 200
    assert "internal error" not in downstream.log.read_text()  # a client that left is no server error
