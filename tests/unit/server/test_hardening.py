"""Bad input at the HTTP layer answers a 4xx in the API's own shape, checked before any model is
loaded (the FakeEngine loader counts loads); no model runs here."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gpustack_cli.openai.images import FILES
from gpustack_cli.server import access_log
from gpustack_cli.server.app import create_app
from gpustack_cli.server.context import ServerContext
from gpustack_cli.server.keys import Scope
from tests.unit.server.test_api import bearer, error_of, keyed, make_context

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture
def ctx(home: Path) -> ServerContext:
    return make_context(home, max_messages=10, max_text_chars=5000, body_timeout=0.5)


@pytest.fixture
async def client(aiohttp_client, ctx: ServerContext) -> TestClient:
    return await aiohttp_client(create_app(ctx))


def loads(ctx: ServerContext) -> int:
    return len(ctx.scheduler._loader.loaded)


@pytest.mark.parametrize("name", ["", "a b", "mödel", "../x", "x" * 200])
async def test_names_no_model_can_have_are_not_found(client: TestClient, name: str) -> None:
    for path, body in (
        ("/v1/chat/completions", {"model": name, "messages": CHAT}),
        ("/v1/embeddings", {"model": name, "input": "x"}),
        ("/tokenize", {"model": name, "content": "x"}),
        ("/api/stop", {"model": name}),
    ):
        error = await error_of(await client.post(path, json=body), 404)
        assert error["code"] == "model_not_found", path
    response = await client.post("/v1/messages", json={"model": name, "max_tokens": 5, "messages": CHAT})
    assert response.status == 404 and (await response.json())["error"]["type"] == "not_found_error"
    if name and name.isascii():  # an empty header names no model (a 400 that says how to name one)
        proxied = await client.get("/model/proxy/health", headers={"X-GPUStack-Model": name})
        assert proxied.status == 404
    if name.isascii() and " " not in name and name:
        assert (await client.get(f"/v1/models/{name}")).status == 404
    assert (await client.get("/v1/models/a%20b")).status == 404


async def test_chat_limits_are_checked_before_a_model_loads(client: TestClient, ctx: ServerContext) -> None:
    many = await error_of(await client.post("/v1/chat/completions", json={"model": "chat", "messages": CHAT * 11}), 400)
    assert many["param"] == "messages" and "limit is 10" in many["message"]
    long = [{"role": "user", "content": "x" * 5001}]
    error = await error_of(await client.post("/v1/chat/completions", json={"model": "chat", "messages": long}), 400)
    assert error["param"] == "messages" and "5001 characters" in error["message"]
    body = {"model": "chat", "max_tokens": 5, "messages": CHAT * 11}
    response = await client.post("/v1/messages", json=body)
    assert response.status == 400 and (await response.json())["error"]["type"] == "invalid_request_error"
    prompt = await error_of(await client.post("/v1/completions", json={"model": "chat", "prompt": "x" * 6000}), 400)
    assert prompt["param"] == "prompt"
    assert loads(ctx) == 0


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "object", "properties": {"a": {"enum": []}}, "required": ["a"]}, "enum"),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 1_000_000_000}, "minItems"),
        ({"enum": list(range(100_000))}, "too large"),
        ({"type": "banana"}, "not a JSON type"),
        ({"$ref": "#/nowhere"}, "points at nothing"),
        ({"type": "object", "properties": ["a"]}, "properties"),
    ],
)
async def test_schemas_are_checked_before_a_model_loads(
    client: TestClient, ctx: ServerContext, schema: dict, words: str
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    body = {"model": "chat", "messages": CHAT, "response_format": fmt}
    error = await error_of(await client.post("/v1/chat/completions", json=body), 400)
    assert error["code"] == "invalid_schema" and error["param"] == "response_format" and words in error["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    body = {"model": "chat", "messages": CHAT, "tools": [tool]}
    error = await error_of(await client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == "tools[0].parameters"
    body = {"model": "chat", "max_tokens": 5, "messages": CHAT, "tools": [{"name": "f", "input_schema": schema}]}
    response = await client.post("/v1/messages", json=body)
    assert response.status == 400 and words in (await response.json())["error"]["message"]
    assert loads(ctx) == 0


async def test_json_nested_past_any_parser_limit(client: TestClient) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/model/proxy/completion"):
        response = await client.post(path, data=deep, headers={"Content-Type": "application/json"})
        assert response.status == 400, (path, await response.text())


async def test_malformed_multipart_bodies(client: TestClient) -> None:
    for path in ("/v1/audio/transcriptions", "/v1/images/edits"):
        cut = await client.post(
            path, data=b"garbage--zzz", headers={"Content-Type": "multipart/form-data; boundary=zzz"}
        )
        assert cut.status == 400, await cut.text()
        json_as_form = await client.post(path, data=b'{"model": "x"}', headers={"Content-Type": "multipart/form-data"})
        assert json_as_form.status == 400
        plain = await client.post(path, json={"model": "x"})
        assert plain.status == 415 and (await plain.json())["error"]["code"] == "unsupported_media_type"


async def test_form_limits_and_binary_fields_without_a_filename(client: TestClient) -> None:
    form = aiohttp.FormData(default_to_multipart=True)
    for index in range(1000):
        form.add_field(f"f{index}", "x")
    error = await error_of(await client.post("/v1/audio/transcriptions", data=form), 400)
    assert "at most 64" in error["message"]
    # curl's `-F 'file=<speech.wav'`: the bytes as a field without a filename, not text.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nnowhere\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nRIFF\x00\xff\xfe binary audio\r\n--b--\r\n'
    )
    response = await client.post(
        "/v1/audio/transcriptions", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    error = await error_of(response, 404)
    assert error["code"] == "model_not_found"  # the form was read, the file found: only the model is missing


async def test_transcription_fields_are_validated(client: TestClient) -> None:
    for temperature in ("NaN", "1e308", "-1", "hot"):
        form = aiohttp.FormData()
        form.add_field("model", "x")
        form.add_field("temperature", temperature)
        form.add_field("file", b"data", filename="a.wav")
        error = await error_of(await client.post("/v1/audio/transcriptions", data=form), 400)
        assert error["param"] == "temperature", temperature


async def test_speech_input_with_control_characters(client: TestClient) -> None:
    body = {"model": "x", "input": "a\u0000b"}
    error = await error_of(await client.post("/v1/audio/speech", json=body), 400)
    assert error["param"] == "input" and "control characters" in error["message"]


async def test_embedding_inputs_out_of_range(client: TestClient, ctx: ServerContext) -> None:
    for value in ([2**70], [-1]):
        error = await error_of(await client.post("/v1/embeddings", json={"model": "embed", "input": value}), 400)
        assert error["param"] == "input[0]"  # the token out of range
    too_much = ["x" * 3000, "y" * 3000]
    error = await error_of(await client.post("/v1/embeddings", json={"model": "embed", "input": too_much}), 400)
    assert "6000 characters" in error["message"]
    assert loads(ctx) == 0


async def test_a_body_that_does_not_arrive_in_time(client: TestClient) -> None:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert b" 408 " in head


async def test_metrics_are_the_operators(client: TestClient, ctx: ServerContext) -> None:
    inference = keyed(ctx)
    limited = keyed(ctx, scope=Scope.all, models=["chat"])
    operator = keyed(ctx, scope=Scope.management)
    await error_of(await client.get("/metrics", headers=bearer(inference)), 403)
    await error_of(await client.get("/metrics", headers=bearer(limited)), 403)
    assert (await client.get("/metrics", headers=bearer(operator))).status == 200


async def test_image_links_belong_to_the_key_that_made_them(client: TestClient, ctx: ServerContext) -> None:
    alice, bob = keyed(ctx), keyed(ctx)
    alice_id = alice.split("_")[1]
    name = client.server.app[FILES].add(b"png bytes", "png", alice_id)
    assert (await client.get(f"/v1/images/files/{name}", headers=bearer(alice))).status == 200
    await error_of(await client.get(f"/v1/images/files/{name}", headers=bearer(bob)), 404)


async def test_internal_errors_are_counted(aiohttp_client, ctx: ServerContext) -> None:
    app = create_app(ctx)

    async def broken(request: web.Request) -> web.Response:
        raise KeyError("a bug")

    app.router.add_get("/broken", broken)
    client = await aiohttp_client(app)
    response = await client.get("/broken")
    assert response.status == 500 and "request id" in (await response.json())["error"]["message"]
    metrics = await (await client.get("/metrics")).text()
    assert "gpustack_internal_errors_total 1.0" in metrics


def test_keys_in_query_strings_never_reach_the_access_log() -> None:
    class Request:
        raw_path = "/v1/models?api_key=sk-secret&limit=2&x=abc&k=t0k&%6Bey=s3cr3t&name=ok&%00=%00"

    logged = access_log.target(Request())  # type: ignore[arg-type]
    for secret in ("sk-secret", "abc", "t0k", "s3cr3t", "ok"):
        assert secret not in logged
    assert logged == "/v1/models?api_key=*&limit=*&x=*&k=*&%6Bey=*&name=*&%00=*"

    class Raw:
        raw_path = "/ui/\x00\n?a=1"

    assert access_log.target(Raw()) == "/ui/\\x00\\x0a?a=*"  # type: ignore[arg-type]


async def test_clients_that_leave_are_logged_as_499(
    aiohttp_client, ctx: ServerContext, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(ctx)
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(30)
        return web.Response()

    app.router.add_get("/slow", slow)
    client = await aiohttp_client(app)
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    task = asyncio.create_task(client.get("/slow?api_key=secret"))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    for _ in range(200):
        if any("/slow" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if "/slow" in r.getMessage()]
    assert any('/slow?api_key=* HTTP/1.1" 499 ' in line for line in lines), lines
    assert not any("secret" in line for line in lines)


async def test_uploads_wait_for_the_model_and_tokenizing_for_its_limit(client: TestClient, ctx: ServerContext) -> None:
    form = aiohttp.FormData()
    form.add_field("model", "nope")
    form.add_field("prompt", "x")
    form.add_field("image", b"not decoded: the model is looked up first", filename="a.png")
    error = await error_of(await client.post("/v1/images/edits", data=form), 404)
    assert error["code"] == "model_not_found"
    error = await error_of(await client.post("/tokenize", json={"model": "chat", "content": "x" * 6000}), 400)
    assert error["param"] == "content"
    assert loads(ctx) == 0


async def test_requests_aiohttp_refuses_are_one_line_in_the_log(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    server_log, refusals = logging.getLogger("aiohttp.server"), access_log.RefusedRequests()
    server_log.addFilter(refusals)  # as `gpustack serve` sets it up
    caplog.set_level(logging.INFO, logger="aiohttp.server")
    try:
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Bad: a\rb\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    finally:
        server_log.removeFilter(refusals)
    assert b" 400 " in head
    refused = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert refused and all(r.levelno == logging.INFO and r.exc_info is None for r in refused)
    assert "refused" in refused[0].getMessage()
