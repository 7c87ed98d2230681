"""Embeddings and rerank through sentence-transformers (and GGUF) on a real `gpustack serve`."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.harness import ServerProcess, clean_env, free_port, gpustack
from tests.support.openapi import validate

MINILM = "all-minilm-l6-v2"
PANDA = {
    "query": "What is a panda?",
    "documents": [
        "hi",
        "it is a bear",
        "The giant panda (Ailuropoda melanoleuca), sometimes called a panda bear or simply panda, "
        "is a bear species endemic to China.",
    ],
}


@pytest.fixture(scope="module")
def server(models_home: Path, cross_encoder: str, minilm_gguf: str, gguf_reranker: str) -> Iterator[ServerProcess]:
    with ServerProcess(models_home, "--no-pull") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def reference(models_home: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(models_home / "models" / MINILM), device="cpu")


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def rerank(server: ServerProcess, **body) -> httpx.Response:
    return httpx.post(server.url + "/v1/rerank", json=body, timeout=120)


# -- embeddings ------------------------------------------------------------------------------------


def test_embeddings_are_sentence_transformers(client: openai.OpenAI, reference) -> None:
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    floats = client.embeddings.create(model=MINILM, input=sentences, encoding_format="float")
    validate(json.loads(floats.model_dump_json()), "CreateEmbeddingResponse")
    vectors = [d.embedding for d in floats.data]
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    expected = reference.encode(sentences, normalize_embeddings=True).tolist()
    for ours, theirs in zip(vectors, expected, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-5)
    tokens = sum(len(reference.tokenizer(s)["input_ids"]) for s in sentences)
    assert floats.usage.prompt_tokens == tokens == floats.usage.total_tokens
    via_base64 = client.embeddings.create(model=MINILM, input=sentences)  # the client's default with numpy
    for a, b in zip(via_base64.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)


def test_official_client_without_numpy(server: ServerProcess, client: openai.OpenAI) -> None:
    code = (
        "import sys; sys.modules['numpy'] = None\n"  # as if numpy were not installed
        "import json, openai\n"
        f"c = openai.OpenAI(base_url='{server.url}/v1', api_key='none')\n"
        f"print(json.dumps(c.embeddings.create(model='{MINILM}', input='hello').data[0].embedding))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=120, check=True
    )
    without = json.loads(result.stdout)
    with_numpy = client.embeddings.create(model=MINILM, input="hello").data[0].embedding
    assert without == pytest.approx(with_numpy, abs=1e-6) and len(without) == 384


def test_token_array_input(client: openai.OpenAI, reference) -> None:
    ids = reference.tokenizer("hello world", add_special_tokens=False)["input_ids"]
    by_tokens = client.embeddings.create(model=MINILM, input=[ids], encoding_format="float")
    by_text = client.embeddings.create(model=MINILM, input="hello world", encoding_format="float")
    assert by_tokens.data[0].embedding == pytest.approx(by_text.data[0].embedding, abs=1e-5)


def test_concurrent_requests_are_batched_correctly(server: ServerProcess, client: openai.OpenAI) -> None:
    texts = [f"sentence number {i} about {topic}" for i, topic in enumerate(["cats", "cars", "rain", "tea"] * 8)]
    alone = {
        t: client.embeddings.create(model=MINILM, input=t, encoding_format="float").data[0].embedding for t in texts[:4]
    }

    async def all_at_once() -> list[list[float]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            responses = await asyncio.gather(
                *(http.post("/v1/embeddings", json={"model": MINILM, "input": t}) for t in texts)
            )
        return [r.json()["data"][0]["embedding"] for r in responses]

    together = asyncio.run(all_at_once())
    for text, vector in zip(texts, together, strict=True):
        if text in alone:
            assert vector == pytest.approx(alone[text], abs=1e-5)  # each got its own vector back
    assert len({json.dumps(v[:4]) for v in together}) == len(texts)


def test_embedding_errors(client: openai.OpenAI, server: ServerProcess, cross_encoder: str) -> None:
    def error(body: dict) -> dict:
        response = httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)
        assert 400 <= response.status_code < 500, response.text
        validate(response.json(), "ErrorResponse")
        return response.json()["error"]

    assert error({"model": MINILM, "input": ""})["param"] == "input"
    assert error({"model": MINILM, "input": []})["param"] == "input"
    assert error({"model": MINILM, "input": [1.5]})["param"] == "input[0]"
    assert error({"model": MINILM, "input": "x", "dimensions": 128})["param"] == "dimensions"
    assert error({"model": MINILM, "input": "word " * 300})["code"] == "context_length_exceeded"
    assert error({"model": "smollm2", "input": "x"})["code"] == "model_not_supported"
    assert error({"model": cross_encoder, "input": "x"})["code"] == "model_not_supported"
    assert error({"input": "x"})["param"] == "model"
    # Token ids: out of this model's vocabulary (it answered 200 with some vector), and past 64 bits.
    assert error({"model": MINILM, "input": [10**9]})["code"] == "invalid_tokens"
    assert error({"model": MINILM, "input": [2**70]})["param"] == "input[0]"


def test_token_counting_while_batches_run(server: ServerProcess) -> None:
    """Lengths are counted on the event loop while a batch is encoded in a worker thread: with one
    tokenizer shared by both, its padding state leaked across ("expected sequence of length 9 at
    dim 1 (got 8)") and some answers were 500s."""
    texts = [("word " * (1 + i % 40)).strip() for i in range(240)]

    async def all_at_once() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            limits = asyncio.Semaphore(48)

            async def one(text: str) -> int:
                async with limits:
                    body = {"model": MINILM, "input": [text, text[: len(text) // 2] or "x"]}
                    return (await http.post("/v1/embeddings", json=body)).status_code

            return await asyncio.gather(*(one(t) for t in texts))

    assert set(asyncio.run(all_at_once())) == {200}


# -- rerank ----------------------------------------------------------------------------------------


def test_rerank_bi_encoder_matches_the_seed_shape(server: ServerProcess) -> None:
    body = rerank(server, model=MINILM, top_n=3, **PANDA).json()
    assert set(body) == {"model", "object", "results", "usage"} and body["object"] == "list"
    assert [r["index"] for r in body["results"]] == [2, 1, 0]
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["results"][0]["document"] == {"text": PANDA["documents"][2]}
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 20


def test_rerank_options(server: ServerProcess) -> None:
    top = rerank(server, model=MINILM, top_n=1, return_documents=False, **PANDA).json()
    assert len(top["results"]) == 1 and top["results"][0]["index"] == 2 and "document" not in top["results"][0]
    objects = rerank(
        server, model=MINILM, query=PANDA["query"], documents=[{"text": d} for d in PANDA["documents"]]
    ).json()
    assert [r["index"] for r in objects["results"]] == [2, 1, 0] and len(objects["results"]) == 3


def test_rerank_cross_encoder_scores_are_the_models(
    server: ServerProcess, models_home: Path, cross_encoder: str
) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    body = rerank(server, model=cross_encoder, **PANDA).json()
    direct = CrossEncoder(str(models_home / "models" / cross_encoder), activation_fn=torch.nn.Identity())
    expected = direct.predict([(PANDA["query"], d) for d in PANDA["documents"]]).tolist()
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert [got[i] for i in range(3)] == pytest.approx(expected, abs=1e-5)
    assert [r["index"] for r in body["results"]] == sorted(range(3), key=lambda i: -expected[i])


def test_rerank_gguf_reranker(server: ServerProcess, models_home: Path, cross_encoder: str, gguf_reranker: str) -> None:
    """llama.cpp's rank pooling: each pair laid out as llama-server does (CLS q SEP SEP d SEP) and
    scored by the classifier head, checked against transformers running the same weights."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    body = rerank(server, model=gguf_reranker, **PANDA).json()
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    folder = models_home / "models" / cross_encoder
    model, tokenizer = (
        BertForSequenceClassification.from_pretrained(folder).eval(),
        AutoTokenizer.from_pretrained(folder),
    )

    def expected(document: str) -> float:
        query_ids = tokenizer(PANDA["query"], add_special_tokens=False)["input_ids"]
        doc_ids = tokenizer(document, add_special_tokens=False)["input_ids"]
        ids = [
            tokenizer.cls_token_id,
            *query_ids,
            tokenizer.sep_token_id,
            tokenizer.sep_token_id,
            *doc_ids,
            tokenizer.sep_token_id,
        ]
        with torch.no_grad():
            hidden = model.bert(
                input_ids=torch.tensor([ids]), token_type_ids=torch.zeros(1, len(ids), dtype=torch.long)
            )
            return float(model.classifier(hidden.last_hidden_state[0, 0]))

    assert [got[i] for i in range(3)] == pytest.approx([expected(d) for d in PANDA["documents"]], abs=1e-4)
    categories = httpx.get(server.url + "/v1/models").json()["data"]
    assert next(m for m in categories if m["id"] == gguf_reranker)["categories"] == ["reranker"]


def test_rerank_gguf_embedding_model(server: ServerProcess, minilm_gguf: str) -> None:
    body = rerank(server, model=minilm_gguf, **PANDA).json()
    assert [r["index"] for r in body["results"]] == [2, 1, 0]
    # It reads each input whole: no slots, no KV cache settings, its context its own.
    [loaded] = [m for m in httpx.get(server.url + "/api/ps").json()["models"] if m["name"] == minilm_gguf]
    assert loaded["kv_cache"] is None and loaded["context_from"] == "model" and loaded["context_length"] > 0


def test_rerank_errors(server: ServerProcess) -> None:
    def error(**body) -> dict:
        response = rerank(server, **body)
        assert response.status_code == 400, response.text
        validate(response.json(), "ErrorResponse")
        return response.json()["error"]

    assert error(model=MINILM, query="q", documents=["a"], top_n=0)["param"] == "top_n"
    assert error(model=MINILM, query="q")["param"] == "documents"
    assert error(model=MINILM, query="q", documents=[])["param"] == "documents"
    assert error(model=MINILM, query="", documents=["a"])["param"] == "query"
    assert error(model=MINILM, query="q", documents=[""])["param"] == "documents"
    assert error(model=MINILM, query="q", documents=[3])["param"] == "documents[0]"
    assert error(model="smollm2", query="q", documents=["a"])["code"] == "model_not_supported"


def test_models_list_rerankers(client: openai.OpenAI, cross_encoder: str, minilm_gguf: str) -> None:
    rerankers = {m.id for m in client.models.list() if "reranker" in m.model_extra["categories"]}
    assert {MINILM, cross_encoder, minilm_gguf} <= rerankers and "smollm2" not in rerankers


# -- gpustack run ----------------------------------------------------------------------------------


def test_run_embedding_and_rerank(models_home: Path, cross_encoder: str) -> None:
    env = clean_env(
        GPUSTACK_HOME=str(models_home), GPUSTACK_SERVER_URL=f"http://127.0.0.1:{free_port()}", COLUMNS="200"
    )
    result = gpustack("run", MINILM, "hello world", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("384 dimensions: [")
    result = gpustack("run", MINILM, "--rerank", PANDA["query"], *PANDA["documents"], env=env)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [row[2] for row in rows] == ["2", "1", "0"]  # INDEX column, best first
    result = gpustack("run", cross_encoder, "--rerank", "q", "a", "b", env=env)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3
    result = gpustack("run", cross_encoder, "some text", env=env)
    assert result.returncode == 1 and "--rerank QUERY" in result.stderr
