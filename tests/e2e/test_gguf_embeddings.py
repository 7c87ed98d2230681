"""`/v1/embeddings` on a real GGUF embedding model through llama.cpp's embedding mode."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.harness import ServerProcess
from tests.support.openapi import validate

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]


@pytest.fixture(scope="module")
def server(models_home: Path, minilm_gguf: str) -> Iterator[ServerProcess]:
    with ServerProcess(models_home, "--no-pull") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_match_sentence_transformers(client: openai.OpenAI, minilm_gguf: str, models_home: Path) -> None:
    response = client.embeddings.create(model=minilm_gguf, input=SENTENCES, encoding_format="float")
    vectors = [d.embedding for d in response.data]
    assert [d.index for d in response.data] == [0, 1, 2] and all(len(v) == 384 for v in vectors)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(models_home / "models" / "all-minilm-l6-v2"), device="cpu").encode(SENTENCES)
    for ours, theirs in zip(vectors, reference.tolist(), strict=True):
        assert cosine(ours, theirs) > 0.99  # the same model, converted to f16 GGUF


def test_wire_format_and_base64(client: openai.OpenAI, server: ServerProcess, minilm_gguf: str) -> None:
    raw = httpx.post(server.url + "/v1/embeddings", json={"model": minilm_gguf, "input": "hello"}, timeout=120).json()
    validate(raw, "CreateEmbeddingResponse")
    assert raw["object"] == "list" and raw["data"][0]["object"] == "embedding" and raw["model"] == minilm_gguf
    encoded = httpx.post(
        server.url + "/v1/embeddings",
        json={"model": minilm_gguf, "input": "hello", "encoding_format": "base64"},
        timeout=120,
    ).json()
    # The spec types `embedding` as an array only; with base64 OpenAI sends (and clients expect) a string.
    assert isinstance(encoded["data"][0]["embedding"], str) and encoded["usage"] == raw["usage"]
    data = base64.b64decode(encoded["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(data) // 4}f", data)) == pytest.approx(raw["data"][0]["embedding"], abs=1e-6)
    # The official client asks for base64 by default (with numpy installed) and decodes it.
    default = client.embeddings.create(model=minilm_gguf, input="hello")
    assert default.data[0].embedding == pytest.approx(raw["data"][0]["embedding"], abs=1e-6)


def test_token_inputs_and_usage(client: openai.OpenAI, server: ServerProcess, minilm_gguf: str) -> None:
    tokens = httpx.post(
        server.url + "/tokenize",
        json={"model": minilm_gguf, "content": "hello world", "add_special": True},
        timeout=120,
    ).json()["tokens"]
    by_text = client.embeddings.create(model=minilm_gguf, input="hello world", encoding_format="float")
    assert by_text.usage.prompt_tokens == len(tokens) == by_text.usage.total_tokens
    plain = httpx.post(
        server.url + "/tokenize", json={"model": minilm_gguf, "content": "hello world"}, timeout=120
    ).json()
    by_tokens = client.embeddings.create(model=minilm_gguf, input=[plain["tokens"]], encoding_format="float")
    assert cosine(by_tokens.data[0].embedding, by_text.data[0].embedding) > 0.999


def test_bad_inputs(client: openai.OpenAI, server: ServerProcess, minilm_gguf: str) -> None:
    def error(body: dict) -> dict:
        response = httpx.post(server.url + "/v1/embeddings", json={"model": minilm_gguf, **body}, timeout=120)
        assert response.status_code == 400, response.text
        validate(response.json(), "ErrorResponse")
        return response.json()["error"]

    assert "empty" in error({"input": ""})["message"]
    assert error({"input": []})["param"] == "input"
    assert error({"input": ["ok", ""]})["param"] == "input"
    assert error({"input": 5})["param"] == "input"
    assert error({"input": "x", "encoding_format": "hex"})["param"] == "encoding_format"
    assert error({"input": "x", "dimensions": 100})["param"] == "dimensions"
    assert error({"input": "word " * 600})["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="smollm2", input="hi")
    assert caught.value.body["code"] == "model_not_supported"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=minilm_gguf, messages=[{"role": "user", "content": "hi"}])
    listed = {m.id: m.model_extra["categories"] for m in client.models.list()}
    assert listed[minilm_gguf] == ["embedding", "reranker"]
    assert json.loads(httpx.get(server.url + "/healthz").text)["status"] == "ok"


def test_unknown_token_ids_are_refused(client: openai.OpenAI, minilm_gguf: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=minilm_gguf, input=[[101, 10**7]])
    assert caught.value.body["code"] == "invalid_tokens"
    assert client.embeddings.create(model=minilm_gguf, input="still alive").data
