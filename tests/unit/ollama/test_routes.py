"""Ollama's routes over HTTP on stand-in models: shapes, names, keys and the store (no model runs:
chats and embeddings with real models are tests/e2e/test_ollama.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gpustack_cli.server.app import create_app
from gpustack_cli.server.context import ServerContext
from tests.support.api import bearer, keyed, make_context


@pytest.fixture
def ctx(home: Path) -> ServerContext:
    return make_context(home)


@pytest.fixture
async def client(aiohttp_client, ctx: ServerContext) -> TestClient:
    return await aiohttp_client(create_app(ctx))


async def test_version_root_tags_and_show(client: TestClient) -> None:
    assert (await (await client.get("/api/version")).json())["version"].count(".") == 2
    assert await (await client.get("/")).text() == "Ollama is running"
    tags = (await (await client.get("/api/tags")).json())["models"]
    assert {t["name"] for t in tags} == {"chat", "embed", "qwen2.5:0.5b"}
    assert all(
        set(t["details"]) >= {"format", "family", "families", "parameter_size", "quantization_level"} for t in tags
    )
    shown = await (await client.post("/api/show", json={"model": "chat:latest"})).json()  # `:latest` is the name
    assert shown["capabilities"] == ["completion", "tools"] and shown["model_info"]["general.architecture"] == "fake"
    assert all(shown[k] is not None for k in ("template", "parameters", "license", "modelfile", "details"))
    assert (await (await client.post("/api/show", json={"name": "embed"})).json())["capabilities"] == ["embedding"]
    tagged = await (await client.post("/api/show", json={"model": "qwen2.5:0.5b"})).json()  # a tag of its own
    assert tagged["capabilities"][0] == "completion"


async def test_errors_are_ollamas_shape(client: TestClient) -> None:
    missing = await client.post("/api/show", json={"model": "nope"})
    assert missing.status == 404 and isinstance((await missing.json())["error"], str)
    malformed = await client.post("/api/chat", data=b"{oops", headers={"Content-Type": "application/json"})
    assert malformed.status == 400 and isinstance((await malformed.json())["error"], str)
    nameless = await client.post("/api/show", json={})
    assert nameless.status == 400 and "model" in (await nameless.json())["error"]
    bad = await client.post("/api/chat", json={"model": "chat", "messages": [{"role": "robot", "content": "x"}]})
    assert bad.status == 400 and "role" in (await bad.json())["error"]
    for path in ("/api/create", "/api/push"):
        refused = await client.post(path, json={"model": "x"})
        assert refused.status == 501 and "not supported" in (await refused.json())["error"]


async def test_an_empty_request_loads_and_keep_alive_zero_unloads(client: TestClient) -> None:
    loaded = await (await client.post("/api/generate", json={"model": "chat"})).json()
    assert loaded["done"] and loaded["done_reason"] == "load" and loaded["response"] == ""
    running = (await (await client.get("/api/ps")).json())["models"]
    assert [m["name"] for m in running] == ["chat"]
    assert running[0]["expires_at"].endswith("Z") and running[0]["size_vram"] == 0 and running[0]["concurrency"] == 2
    gone = await (await client.post("/api/chat", json={"model": "chat", "messages": [], "keep_alive": 0})).json()
    assert gone["done_reason"] == "unload" and gone["message"]["content"] == ""
    assert (await (await client.get("/api/ps")).json())["models"] == []


async def test_copy_and_delete(client: TestClient, ctx: ServerContext) -> None:
    assert (await client.post("/api/copy", json={"source": "chat", "destination": "chat2"})).status == 200
    assert ctx.store.exists("chat2")
    exists = await client.post("/api/copy", json={"source": "chat", "destination": "chat2"})
    assert exists.status == 400 and "exists" in (await exists.json())["error"]
    assert (await client.request("DELETE", "/api/delete", json={"model": "chat2"})).status == 200
    assert not ctx.store.exists("chat2")
    assert (await client.request("DELETE", "/api/delete", json={"model": "chat2"})).status == 404


async def test_keys_and_scopes(aiohttp_client, home: Path) -> None:
    ctx = make_context(home)
    client = await aiohttp_client(create_app(ctx))
    inference = keyed(ctx)
    assert (await client.get("/api/version")).status == 200  # no key, as Ollama's
    unkeyed = await client.get("/api/tags")
    assert unkeyed.status == 401 and isinstance((await unkeyed.json())["error"], str)
    assert (await client.get("/api/tags", headers=bearer(inference))).status == 200
    refused = await client.request("DELETE", "/api/delete", json={"model": "chat"}, headers=bearer(inference))
    assert refused.status == 403 and ctx.store.exists("chat")  # changing the store is the operator's
    limited = keyed(ctx, models=["embed"])
    listed = (await (await client.get("/api/tags", headers=bearer(limited))).json())["models"]
    assert [m["name"] for m in listed] == ["embed"]
