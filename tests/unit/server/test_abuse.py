"""Requests an attacker or a careless client sends, at the HTTP layer (FakeEngine, no model):
each is a 4xx in the route's own shape, never a 500, and the server goes on serving."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gpustack_cli.core.json_values import MAX_DEPTH
from gpustack_cli.openai.response_routes import RESPONSES
from gpustack_cli.openai.response_store import StoredResponse
from gpustack_cli.server.app import create_app
from gpustack_cli.server.context import KEY_CHECKS, ServerContext
from gpustack_cli.server.keys import Authenticator, KeyStore, Scope, Throttle
from tests.unit.server.test_api import bearer, error_of, keyed, make_context

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture
def ctx(home: Path) -> ServerContext:
    return make_context(home, max_response_chain=5, max_choices=8, max_stops=4, max_stop_chars=50)


@pytest.fixture
async def client(aiohttp_client, ctx: ServerContext) -> TestClient:
    return await aiohttp_client(create_app(ctx))


async def reached_the_model(response) -> bool:
    """Whether a request passed every check and reached the model: the fake engine generates no
    text, which is the first thing a text route finds out once its checks are done."""
    body = await response.json()
    return response.status == 400 and body["error"]["code"] == "model_not_supported"


def nested(levels: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(levels):
        value = {"a": [value]}
    return value


def deep_json(levels: int) -> str:
    return "[" * levels + "]" * levels


# -- schemas whose grammar would crash or stall llama.cpp ------------------------------------

PATTERN_ROUTES = [
    ("/v1/chat/completions", lambda s: {"messages": CHAT, "response_format": _format(s)}, "response_format"),
    (
        "/v1/chat/completions",
        lambda s: {"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": s}}]},
        "tools[0].parameters",
    ),
    (
        "/v1/responses",
        lambda s: {"input": "hi", "text": {"format": {"type": "json_schema", "name": "r", "schema": s}}},
        "text.format",
    ),
    (
        "/v1/messages",
        lambda s: {
            "max_tokens": 5,
            "messages": CHAT,
            "output_config": {"format": {"type": "json_schema", "schema": s}},
        },
        "output_config.format",
    ),
]


def _format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}


def _pattern(pattern: str) -> dict:
    return {"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}, "required": ["a"]}


async def _schema_error(client: TestClient, path: str, body: dict) -> str:
    response = await client.post(path, json={"model": "chat", **body})
    assert response.status == 400, await response.text()
    error = (await response.json())["error"]
    return error["message"] if path == "/v1/messages" else f"{error['param']}: {error['message']}"


@pytest.mark.parametrize(("path", "make", "where"), PATTERN_ROUTES)
@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        (r"^[\s\S]{0,30000}$", "{0,30000} is over the limit of 1000"),
        (r"^a{0,100000}$", "{0,100000} is over the limit of 1000"),
        (r"^[\s\S]{0,100000}$", "{0,100000} is over the limit of 1000"),
        (r"^a{1000000}$", "{1000000} is over the limit of 1000"),
        (r"^(a{0,100}){0,100}$", "too large"),
        (r"^(.*){50}$", "50 unbounded repetitions"),
        (r"^([a-z]*[a-z]*){20}$", "40 unbounded repetitions"),
    ],
)
async def test_patterns_that_would_crash_or_stall_are_refused_on_every_route(
    client: TestClient, ctx: ServerContext, path: str, make, where: str, pattern: str, words: str
) -> None:
    message = await _schema_error(client, path, make(_pattern(pattern)))
    assert words in message and ".properties.a.pattern" in message, message
    if path != "/v1/messages":
        assert message.startswith(where)
    assert not ctx.scheduler._loader.loaded  # refused before any model was loaded


@pytest.mark.parametrize("size", [999, 1000, 1001])
async def test_a_sweep_of_repetitions_around_the_bound(client: TestClient, ctx: ServerContext, size: int) -> None:
    for pattern in (f"^a{{0,{size}}}$", f"^a{{{size}}}$", f"^(ab){{{size},}}$"):
        body = {"model": "chat", "messages": CHAT, "response_format": _format(_pattern(pattern))}
        response = await client.post("/v1/chat/completions", json=body)
        if size > 1000:
            assert response.status == 400 and "over the limit of 1000" in (await response.json())["error"]["message"]
        else:
            assert await reached_the_model(response), await response.text()


# -- JSON nested past what Python's parsers take ---------------------------------------------


async def test_json_nested_inside_strings_and_free_form_fields(client: TestClient) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep_json(500)}}
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]
    error = await error_of(await client.post("/v1/chat/completions", json={"model": "chat", "messages": messages}), 400)
    assert error["param"] == "messages" and f"deeper than {MAX_DEPTH} levels" in error["message"]
    # Deeper than any JSON parser here takes: not JSON, so the template gets it as text.
    call["function"]["arguments"] = deep_json(5000)
    assert await reached_the_model(
        await client.post("/v1/chat/completions", json={"model": "chat", "messages": messages})
    )
    tool_use = {"type": "tool_use", "id": "t1", "name": "f", "input": nested(400)}
    anthropic = [{"role": "user", "content": "x"}, {"role": "assistant", "content": [tool_use]}]
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = await client.post(path, json={"model": "chat", "max_tokens": 5, "messages": anthropic})
        assert response.status == 400, await response.text()
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    item = {"type": "message", "role": "user", "content": "x", "extra": nested(400)}
    for path in ("/v1/responses", "/v1/responses/input_tokens"):
        error = await error_of(await client.post(path, json={"model": "chat", "input": [item]}), 400)
        assert "deeper than" in error["message"]
    # Just within the bound is served.
    shallow = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep_json(MAX_DEPTH - 1)}}
    fine = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [shallow]}]
    assert await reached_the_model(await client.post("/v1/chat/completions", json={"model": "chat", "messages": fine}))


@pytest.mark.parametrize("kind", [{"a": 1}, ["function"], 3, None])
async def test_responses_tools_whose_type_is_not_a_string(client: TestClient, kind: object) -> None:
    for path in ("/v1/responses", "/v1/responses/input_tokens"):
        body = {"model": "chat", "input": "hi", "tools": [{"type": kind, "name": "f"}]}
        error = await error_of(await client.post(path, json=body), 400)
        assert error["param"].startswith("tools"), error
        item = {"type": kind, "role": "user", "content": "x"}
        response = await client.post(path, json={"model": "chat", "input": [item]})
        assert response.status == 400, await response.text()


# -- numbers, headers and paths the parsers choke on ------------------------------------------


async def test_numbers_that_str_isdigit_takes_and_int_does_not(client: TestClient) -> None:
    for key in ("²", "١٢", "9" * 5000, "1.5", "-"):
        body = {"model": "chat", "messages": CHAT, "logit_bias": {key: 1}}
        error = await error_of(await client.post("/v1/chat/completions", json=body), 400)
        assert error["param"] == "logit_bias"
    store = client.app[RESPONSES]
    store.put(StoredResponse("resp_x", "", None, {"id": "resp_x", "output": []}, []))
    for value in ("%C2%B2", "9" * 50, "-1"):
        error = await error_of(await client.get(f"/v1/responses/resp_x/input_items?limit={value}"), 400)
        assert error["param"] == "limit"


async def test_stop_strings_are_bounded(client: TestClient) -> None:
    long, many = ["x" * 51], [str(i) for i in range(5)]
    for stop in (long, many):
        error = await error_of(
            await client.post("/v1/chat/completions", json={"model": "chat", "messages": CHAT, "stop": stop}), 400
        )
        assert error["param"] == "stop", error
        error = await error_of(
            await client.post("/v1/completions", json={"model": "chat", "prompt": "a", "stop": stop}), 400
        )
        assert error["param"] == "stop"
        body = {"model": "chat", "max_tokens": 5, "messages": CHAT, "stop_sequences": stop}
        response = await client.post("/v1/messages", json=body)
        assert response.status == 400 and "stop string" in (await response.json())["error"]["message"]
    ok = {"model": "chat", "messages": CHAT, "stop": ["x" * 50] * 4}
    assert await reached_the_model(await client.post("/v1/chat/completions", json=ok))


async def test_completions_prompts_times_n_are_bounded(client: TestClient) -> None:
    body = {"model": "chat", "prompt": ["a"] * 5, "n": 2}
    error = await error_of(await client.post("/v1/completions", json=body), 400)
    assert error["param"] == "n" and "10 completions" in error["message"] and "limit is 8" in error["message"]
    error = await error_of(await client.post("/v1/completions", json={"model": "chat", "prompt": ["a"] * 9}), 400)
    assert error["param"] == "prompt"


async def test_a_response_chain_past_its_bound(client: TestClient) -> None:
    store = client.app[RESPONSES]
    previous = None
    for turn in range(7):
        output = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": f"a{turn}"}]}]
        items = [{"type": "message", "role": "user", "content": f"q{turn}"}]
        store.put(StoredResponse(f"resp_{turn}", "", previous, {"id": f"resp_{turn}", "output": output}, items))
        previous = f"resp_{turn}"
    body = {"model": "chat", "input": "next", "previous_response_id": "resp_6"}
    error = await error_of(await client.post("/v1/responses", json=body), 400)
    assert error["param"] == "previous_response_id" and "longer than 5 responses" in error["message"]
    ok = {"model": "chat", "input": "next", "previous_response_id": "resp_3"}  # four turns
    assert await reached_the_model(await client.post("/v1/responses/input_tokens", json=ok))


async def test_keys_in_bytes_no_header_can_hold(aiohttp_client, home: Path) -> None:
    ctx = make_context(home)
    keyed(ctx)
    client = await aiohttp_client(create_app(ctx))
    for raw in (b"Bearer \xff\xfe", b"Bearer caf\xe9", b"Bearer gpustack_\xc3\x28_x", b"Bearer \xe2\x82"):
        response = await client.get("/v1/models", headers={"Authorization": raw.decode("latin-1")})
        assert response.status == 401, await response.text()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    for name in (b"Authorization: Bearer \xff\xfe", b"x-api-key: caf\xe9"):
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n" + name + b"\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 401 "), head
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
        )
        await reader.readexactly(length)
    writer.close()


async def test_a_null_byte_in_a_playground_path(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    for path in ("/ui/%00", "/ui/a%00b.js", "/ui/js/%00.js"):
        assert (await client.get(path)).status == 404
    assert "\x00" not in caplog.text


# -- web pages, hosts and content types -------------------------------------------------------


async def test_keyless_servers_refuse_foreign_hosts(client: TestClient) -> None:
    for host in ("evil.example", "evil.example:11500", "127.0.0.1.evil.example", "localhost.evil.example"):
        for path in ("/v1/models", "/metrics", "/api/ps"):
            response = await client.get(path, headers={"Host": host})
            assert response.status == 403, (host, path)
            error = (await response.json())["error"]  # OpenAI's shape, or Ollama's on /api/ps
            assert error["code"] == "host_not_allowed" if isinstance(error, dict) else "host name" in error
    for host in ("localhost", "127.0.0.1:8", "[::1]:11500", "app.localhost"):
        assert (await client.get("/v1/models", headers={"Host": host})).status == 200, host


async def test_allowed_hosts(aiohttp_client, home: Path) -> None:
    client = await aiohttp_client(create_app(make_context(home, allowed_hosts="gpu.lan,*.corp.example")))
    for host, status in (("gpu.lan", 200), ("a.corp.example:80", 200), ("evil.example", 403)):
        assert (await client.get("/v1/models", headers={"Host": host})).status == status, host


async def test_cross_site_pages_are_refused(client: TestClient) -> None:
    evil = {"Origin": "https://evil.example"}
    for path, body in (("/v1/embeddings", b'{"model": "embed", "input": "x"}'), ("/api/stop", b'{"model": "chat"}')):
        response = await client.post(path, data=body, headers={**evil, "Content-Type": "text/plain"})
        assert response.status == 403, path
        assert "Access-Control-Allow-Origin" not in response.headers
        assert (await response.json())["error"]["code"] == "origin_not_allowed"
    preflight = await client.options("/v1/chat/completions", headers={**evil, "Access-Control-Request-Method": "POST"})
    assert preflight.status == 403
    # The server's own pages and pages on loopback are let through.
    own = f"http://{client.server.host}:{client.server.port}"
    for origin in (own, "http://localhost:3000"):
        response = await client.post(
            "/v1/embeddings", json={"model": "embed", "input": "x"}, headers={"Origin": origin}
        )
        assert response.status != 403, origin
        assert response.headers["Access-Control-Allow-Origin"] == origin


async def test_text_plain_and_forms_on_json_routes_are_415(client: TestClient) -> None:
    form = aiohttp.FormData({"model": "embed", "input": "x"}, default_to_multipart=True)
    response = await client.post("/v1/embeddings", data=form)
    assert response.status == 415, await response.text()
    for kind in ("text/plain", "text/plain; charset=utf-8", "application/xml"):
        response = await client.post(
            "/v1/embeddings", data=b'{"model": "embed", "input": "x"}', headers={"Content-Type": kind}
        )
        assert response.status == 415, kind
        assert (await response.json())["error"]["code"] == "unsupported_media_type"
    # curl -d (a urlencoded type) and untyped bodies from clients that are not browsers still work.
    for headers in ({"Content-Type": "application/x-www-form-urlencoded"}, {}):
        response = await client.post("/v1/embeddings", data=b'{"model": "embed", "input": "x"}', headers=headers)
        assert await reached_the_model(response), headers
    page = {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://localhost:3000"}
    assert (await client.post("/v1/embeddings", data=b'{"model": "embed"}', headers=page)).status == 415


async def test_allowed_origins_get_cors_and_a_preflight(aiohttp_client, home: Path) -> None:
    ctx = make_context(home, origins="https://app.example,https://*.tools.example")
    keyed(ctx)
    client = await aiohttp_client(create_app(ctx))
    origin = {"Origin": "https://app.example"}
    preflight = await client.options(
        "/v1/chat/completions",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
    )
    assert preflight.status == 204  # no key needed: browsers send none with a preflight
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization"
    refused = await client.get("/v1/models", headers=origin)
    assert refused.status == 401 and refused.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = await client.get("/v1/models", headers={"Origin": "https://x.tools.example"})
    assert other.headers["Access-Control-Allow-Origin"] == "https://x.tools.example"
    assert (await client.get("/v1/models", headers={"Origin": "https://evil.example"})).status == 403


# -- keys -------------------------------------------------------------------------------------


async def test_repeated_wrong_keys_are_slowed_down(aiohttp_client, home: Path) -> None:
    ctx = make_context(home)
    good = keyed(ctx)
    key_id = good.split("_")[1]
    client = await aiohttp_client(create_app(ctx))
    await client.get("/v1/models", headers=bearer(good))  # verified once: cached
    started = time.monotonic()
    answers = await asyncio.gather(
        *(client.get("/v1/models", headers=bearer(f"gpustack_{key_id}_wrong{i}")) for i in range(60))
    )
    statuses = [a.status for a in answers]
    # About the throttle's limit were hashed (those checked at once when it was reached too); the
    # rest were turned away at once.
    assert Throttle().limit <= statuses.count(401) < Throttle().limit + KEY_CHECKS
    assert statuses.count(401) + statuses.count(429) == 60
    assert time.monotonic() - started < 20
    too_many = next(a for a in answers if a.status == 429)
    assert int(too_many.headers["Retry-After"]) > 0
    assert (await too_many.json())["error"]["code"] == "rate_limit_exceeded"
    # The key that verified before still works from the same address.
    assert (await client.get("/v1/models", headers=bearer(good))).status == 200


def test_throttle_forgets_after_its_window() -> None:
    throttle = Throttle(limit=2, window=10)
    throttle.failed(["a"], now=0)
    throttle.failed(["a", "k"], now=1)
    assert throttle.retry_after(["a"], now=2) == pytest.approx(8)
    assert throttle.retry_after(["k"], now=2) == 0
    assert throttle.retry_after(["a"], now=10.5) == 0


def test_verified_keys_are_kept_by_a_keyed_digest(home: Path) -> None:
    store = KeyStore(home / "keys.json")
    _, key = store.create(scope=Scope.all)
    auth = Authenticator(store)
    assert auth.verify(key) is not None and auth.cached(key) is not None
    assert hashlib.sha256(key.encode()).digest() not in auth._verified  # not a plain hash of the key
    assert auth.cached(key + "x") is None


async def test_a_model_limited_key_sees_only_its_models_in_ps(aiohttp_client, home: Path) -> None:
    ctx = make_context(home)
    limited = keyed(ctx, scope=Scope.all, models=["chat"])
    client = await aiohttp_client(create_app(ctx))
    await ctx.scheduler.preload("chat")
    await ctx.scheduler.preload("embed")
    everyone = await (await client.get("/api/ps", headers=bearer(keyed(ctx, scope=Scope.all)))).json()
    assert sorted(m["name"] for m in everyone["models"]) == ["chat", "embed"]
    mine = await (await client.get("/api/ps", headers=bearer(limited))).json()
    assert [m["name"] for m in mine["models"]] == ["chat"]


async def test_answers_say_nosniff_and_no_versions(client: TestClient) -> None:
    for path in ("/v1/models", "/healthz", "/nowhere"):
        response = await client.get(path)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Server"] == "gpustack"
