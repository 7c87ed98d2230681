"""Schemathesis against the server's own /openapi.json, every operation, on the default models:
valid and invalid requests (a fixed seed, a bounded number of each), and no answer may be a
5xx or a broken connection. The server's internal-error count must stay zero (conftest)."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from tests.support.harness import ServerProcess

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Each operation's requests: enough to reach every field's edge cases, few enough for minutes.
EXAMPLES = 40
# The text routes take the largest bodies (messages, tools, items of many kinds): more of them,
# most where nothing is generated, so that nested fields of every kind are drawn too.
MORE_EXAMPLES = {
    "/v1/responses/input_tokens": 200,
    "/v1/messages/count_tokens": 200,
    "/v1/responses": 100,
    "/v1/messages": 100,
    "/v1/chat/completions": 100,
    "/api/chat": 100,
    "/api/generate": 60,
}
# Routes that answer 501 by design (Ollama's create and push: not supported here).
DECLINED = {"/api/create", "/api/push"}
MODELS = ("smollm2", "all-minilm-l6-v2", "whisper-tiny.en", "piper-joe")


@pytest.fixture(scope="module")
def server(models_home: Path) -> Iterator[ServerProcess]:
    env = {
        "GPUSTACK_API_KEY": KEY,
        # Every answer is short: the fuzzer asks for any max_tokens, and tests the validation.
        "GPUSTACK_MAX_COMPLETION_TOKENS": "4",
        "GPUSTACK_GENERIC_PROXY": "smollm2,all-minilm-l6-v2",
        # A pull of a drawn name asks Ollama's registry: here a closed port, refused at once.
        "GPUSTACK_OLLAMA_REGISTRY": "http://127.0.0.1:9",
    }
    with ServerProcess(models_home, "--no-pull", env=env) as running:
        yield running


# The models each route's bodies name: the right kind, so that valid requests reach the engine
# (invalid requests name others: the negative mode draws outside the list).
ROUTE_MODELS = {
    "/v1/chat/completions": ["smollm2"],
    "/v1/completions": ["smollm2"],
    "/v1/messages": ["smollm2"],
    "/v1/responses": ["smollm2"],
    "/v1/responses/input_tokens": ["smollm2"],
    "/v1/messages/count_tokens": ["smollm2"],
    "/tokenize": ["smollm2", "all-minilm-l6-v2"],
    "/detokenize": ["smollm2", "all-minilm-l6-v2"],
    "/v1/embeddings": ["all-minilm-l6-v2"],
    "/v1/rerank": ["all-minilm-l6-v2"],
    "/v1/audio/speech": ["piper-joe"],
    "/v1/audio/transcriptions": ["whisper-tiny.en"],
    "/v1/audio/translations": ["whisper-tiny.en"],
    "/api/chat": ["smollm2"],
    "/api/generate": ["smollm2"],
    "/api/embed": ["all-minilm-l6-v2"],
    "/api/embeddings": ["all-minilm-l6-v2"],
    # Never a model of the shared store: a drawn delete must not remove one.
    "/api/delete": ["no-such-model"],
}


# Bodies that once answered 500 here, sent before each route's drawn requests: the drawing does
# not reach every one of them (a tool whose `type` is an object took a probe of thousands).
_DEEP: Any = 1
for _ in range(400):
    _DEEP = {"a": [_DEEP]}
_ODD_TOOLS = [[{"type": {"a": 1}, "name": "f"}], [{"type": ["function"], "name": "f"}], [{"type": None}]]
SEEDS: dict[str, list[dict[str, Any]]] = {
    "/v1/responses": [{"model": "smollm2", "input": "hi", "tools": t} for t in _ODD_TOOLS]
    + [
        {"model": "smollm2", "input": [{"type": {"x": 1}, "role": "user", "content": "x"}]},
        {"model": "smollm2", "input": [{"type": "message", "role": "user", "content": "x", "extra": _DEEP}]},
    ],
    "/v1/chat/completions": [
        {"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"²": 1}},
        {
            "model": "smollm2",
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "[" * 500 + "]" * 500}}
                    ],
                },
            ],
        },
        {"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "stop": ["x" * 300_000]},
    ],
    "/v1/messages": [
        {
            "model": "smollm2",
            "max_tokens": 4,
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": _DEEP}]},
            ],
        }
    ],
}
SEEDS["/v1/responses/input_tokens"] = SEEDS["/v1/responses"]
SEEDS["/v1/messages/count_tokens"] = SEEDS["/v1/messages"]


def _with_real_models(document: dict[str, Any]) -> dict[str, Any]:
    """The document with each body's `model` drawn from the store's models of the route's kind,
    so that requests reach the engines too, not only the model lookup."""
    changed = copy.deepcopy(document)
    components = changed["components"]["schemas"]
    for path, methods in changed["paths"].items():
        for operation in methods.values():
            for content in operation.get("requestBody", {}).get("content", {}).values():
                schema = content["schema"]
                if "$ref" in schema:
                    schema = components[schema["$ref"].rsplit("/", 1)[1]]
                if "model" in schema.get("properties", {}):
                    names = ROUTE_MODELS.get(path, list(MODELS))
                    schema["properties"]["model"] = {"type": "string", "enum": names}
    return changed


def _server_error(path: str, status: int) -> bool:
    return status >= 500 and not (status == 501 and path in DECLINED)


def operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, methods in document["paths"].items() for method in methods]


def test_the_document_covers_every_route(server: ServerProcess) -> None:
    document = httpx.get(server.url + "/openapi.json").json()  # no key needed
    assert document["openapi"].startswith("3.1")
    listed = set(operations(document))
    for needed in [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/rerank"),
        ("POST", "/v1/audio/transcriptions"),
        ("POST", "/v1/images/edits"),
        ("POST", "/tokenize"),
        ("GET", "/api/ps"),
        ("POST", "/model/proxy/{path}"),
        ("POST", "/api/chat"),
        ("POST", "/api/generate"),
        ("POST", "/api/embed"),
        ("GET", "/api/tags"),
        ("DELETE", "/api/delete"),
    ]:
        assert needed in listed


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(server: ServerProcess, mode: GenerationMode) -> None:
    document = _with_real_models(httpx.get(server.url + "/openapi.json").json())
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    answered: Counter[tuple[str, int]] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy(generation_mode=mode)
        for seed in SEEDS.get(operation.path, []) if operation.method.upper() == "POST" else []:
            response = operation.Case(body=seed, media_type="application/json").call(
                base_url=server.url, headers=AUTH, timeout=120
            )
            answered[(operation.path, response.status_code)] += 1
            if _server_error(operation.path, response.status_code):
                failures.append(f"seed for {operation.path}: {response.status_code} {response.text[:300]}")

        @settings(
            max_examples=MORE_EXAMPLES.get(operation.path, EXAMPLES),
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            try:
                response = case.call(base_url=server.url, headers=AUTH, timeout=120)
            except Exception as exc:  # a dropped connection is a failure like a 5xx
                failures.append(f"{case.method} {case.formatted_path}: {type(exc).__name__}: {exc}")
                return
            answered[(case.path, response.status_code)] += 1
            if _server_error(case.path, response.status_code):
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")

        try:
            run()
        except Unsatisfiable:  # nothing in this operation to make invalid (a GET without parameters)
            assert mode == GenerationMode.NEGATIVE and not operation.body and not operation.path_parameters
    assert not failures, "\n".join(failures[:20])
    if mode == GenerationMode.POSITIVE:  # valid requests reached the engines, not only the lookups
        engines = (
            "/v1/chat/completions",
            "/v1/messages",
            "/v1/embeddings",
            "/v1/audio/speech",
            "/api/chat",
            "/api/embed",
        )
        assert sum(answered[(path, 200)] for path in engines) > 0, sorted(answered.items())
    assert httpx.get(server.url + "/healthz").status_code == 200
