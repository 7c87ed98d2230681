"""The Generic Proxy to in-process models' native APIs, on a real `gpustack serve` with keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.harness import ServerProcess, clean_env, gpustack, seeds_proxy_example

KEY = "proxy-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(models_home: Path, bge_m3: str) -> Iterator[ServerProcess]:
    with ServerProcess(
        models_home, "--no-pull", "--generic-proxy", "smollm2", env={"GPUSTACK_API_KEY": KEY}
    ) as running:
        yield running


def post(server: ServerProcess, path: str, body: dict | None = None, model: str | None = None) -> httpx.Response:
    headers = {**AUTH, **({"X-GPUStack-Model": model} if model else {})}
    return httpx.post(server.url + "/model/proxy" + path, json=body, headers=headers, timeout=120)


def test_the_seeds_curl_example_verbatim(server: ServerProcess) -> None:
    vectors = seeds_proxy_example(server.url, KEY)
    assert len(vectors) == 2 and all(len(v) == 384 for v in vectors)


def test_tei_routes(server: ServerProcess) -> None:
    ranked = post(
        server,
        "/rerank",
        {"query": "What is a panda?", "texts": ["hi", "a panda is a bear"], "return_text": True},
        model="bge-m3",
    ).json()
    assert [r["index"] for r in ranked] == [1, 0] and ranked[0]["text"] == "a panda is a bear"
    tokens = post(server, "/tokenize", {"inputs": "hello world"}, model="bge-m3").json()
    assert [t["text"] for t in tokens[0]][1:3] == ["hello", "world"]
    info = httpx.get(server.url + "/model/proxy/info", headers={**AUTH, "X-GPUStack-Model": "bge-m3"}).json()
    assert info["model_id"] == "bge-m3" and info["max_input_length"] == 256
    assert httpx.get(server.url + "/model/proxy/bge-m3/health", headers=AUTH).status_code == 200


def test_llama_server_routes(server: ServerProcess) -> None:
    done = post(
        server,
        "/completion",
        {"model": "smollm2", "prompt": "The capital of France is", "n_predict": 6, "temperature": 0, "seed": 1},
    ).json()
    assert done["stop"] is True and done["tokens_predicted"] == 6 and done["stop_type"] == "limit" and done["content"]
    with httpx.stream(
        "POST",
        server.url + "/model/proxy/smollm2/completion",
        headers=AUTH,
        timeout=120,
        json={"prompt": "The capital of France is", "n_predict": 6, "temperature": 0, "seed": 1, "stream": True},
    ) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == done["content"] and events[-1]["stop"] is True
    tokens = post(server, "/tokenize", {"content": "Hello world"}, model="smollm2").json()["tokens"]
    assert post(server, "/detokenize", {"tokens": tokens}, model="smollm2").json() == {"content": "Hello world"}
    props = httpx.get(server.url + "/model/proxy/smollm2/props", headers=AUTH).json()
    assert props["default_generation_settings"]["n_ctx"] == 8192 and "im_start" in props["chat_template"]


def test_refusals(server: ServerProcess, models_home: Path) -> None:
    assert post(server, "/embed", {"inputs": "x"}).status_code == 400  # no model named
    assert post(server, "/embed", {"inputs": "x"}, model="nope").status_code == 404
    off = post(server, "/health", model="whisper-tiny.en")
    assert off.status_code == 403 and "--generic-proxy" in off.json()["error"]["message"]
    assert post(server, "/nothing", {}, model="bge-m3").status_code == 404
    assert post(server, "/completion", {"prompt": "x"}, model="bge-m3").status_code == 404
    for path in ("/../v1/models", "/%2e%2e/v1/models", "/bge-m3/..%2Fhealth"):
        response = httpx.get(server.url + "/model/proxy" + path, headers={**AUTH, "X-GPUStack-Model": "bge-m3"})
        assert response.status_code in (400, 404), path  # never the route outside the proxy
        assert "data" not in response.text
    assert (
        httpx.post(
            server.url + "/model/proxy/embed", json={"inputs": "x"}, headers={"X-GPUStack-Model": "bge-m3"}
        ).status_code
        == 401
    )
    env = clean_env(GPUSTACK_HOME=str(models_home))
    assert gpustack("model", "set", "whisper-tiny.en", "--generic-proxy", env=env).returncode == 0
    try:
        info = post(server, "/info", model="whisper-tiny.en")
        assert info.status_code == 404  # a GET route, asked with POST
        got = httpx.get(server.url + "/model/proxy/whisper-tiny.en/info", headers=AUTH)
        assert got.status_code == 200 and got.json()["task"] == "speech-to-text"
    finally:
        assert gpustack("model", "set", "whisper-tiny.en", "--no-generic-proxy", env=env).returncode == 0
