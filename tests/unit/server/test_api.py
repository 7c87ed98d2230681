"""The HTTP layer (middlewares, errors, keys, /v1/models, management routes) on a FakeEngine."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gpustack_cli.server.app import create_app
from gpustack_cli.server.context import CONTEXT, ServerContext
from gpustack_cli.server.keys import Scope
from gpustack_cli.server.plumbing import PUBLIC_PATHS, PUBLIC_PREFIXES
from tests.support.api import bearer, error_of, keyed, make_context
from tests.support.openapi import validate


@pytest.fixture
def ctx(home: Path) -> ServerContext:
    return make_context(home)


@pytest.fixture
async def client(aiohttp_client, ctx: ServerContext) -> TestClient:
    return await aiohttp_client(create_app(ctx))


# -- /v1/models -------------------------------------------------------------------------------


async def test_list_models_matches_openai_schema(client: TestClient, ctx: ServerContext) -> None:
    response = await client.get("/v1/models")
    assert response.status == 200
    body = await response.json()
    validate(body, "ListModelsResponse")
    assert [m["id"] for m in body["data"]] == ["chat", "embed", "qwen2.5:0.5b"]
    first = body["data"][0]
    assert first["object"] == "model" and first["owned_by"] == "gpustack"
    assert first["categories"] == ["llm"] and first["loaded"] is False
    await ctx.scheduler.preload("chat")
    body = await (await client.get("/v1/models")).json()
    assert body["data"][0]["loaded"] is True


async def test_category_filter(client: TestClient) -> None:
    body = await (await client.get("/v1/models?categories=reranker")).json()
    assert [m["id"] for m in body["data"]] == ["embed"]
    body = await (await client.get("/v1/models?categories=reranker,llm")).json()
    assert len(body["data"]) == 3
    error = await error_of(await client.get("/v1/models?categories=video"), 400)
    assert error["param"] == "categories" and "speech_to_text" in error["message"]


async def test_retrieve_model(client: TestClient) -> None:
    response = await client.get("/v1/models/qwen2.5:0.5b")
    assert response.status == 200
    body = await response.json()
    validate(body, "Model")
    assert body["id"] == "qwen2.5:0.5b"
    error = await error_of(await client.get("/v1/models/nope"), 404)
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"


# -- errors -------------------------------------------------------------------------------------


async def test_unknown_route_and_method(client: TestClient) -> None:
    error = await error_of(await client.post("/v1/nothing"), 404)
    assert error["message"] == "Invalid URL (POST /v1/nothing)"
    error = await error_of(await client.delete("/v1/models"), 405)
    assert error["code"] == "method_not_allowed"


async def test_request_ids(client: TestClient) -> None:
    response = await client.get("/v1/models")
    assert re.match(r"^req_[0-9a-f]{32}$", response.headers["x-request-id"])
    response = await client.get("/v1/models", headers={"X-Request-Id": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"
    response = await client.get("/v1/nothing", headers={"X-Request-Id": "bad id\twith tab"})
    assert response.headers["x-request-id"].startswith("req_")


async def test_bad_bodies(client: TestClient) -> None:
    error = await error_of(await client.post("/api/stop", data=b"{nope"), 400)
    assert "could not parse the JSON body" in error["message"]
    error = await error_of(await client.post("/api/stop", data=b""), 400)
    assert "empty" in error["message"]
    error = await error_of(await client.post("/api/stop", data=b"[1]"), 400)
    assert "JSON object" in error["message"]
    error = await error_of(await client.post("/api/stop", json={}), 400)
    assert error["param"] == "model" and error["code"] == "missing_required_parameter"
    error = await error_of(await client.post("/api/stop", json={"model": 3}), 400)
    assert error["param"] == "model" and "string" in error["message"]
    error = await error_of(await client.post("/api/stop", json={"model": "chat", "x": 1}), 400)
    assert error["param"] == "x"


async def test_body_size_limits(aiohttp_client, home: Path) -> None:
    ctx = make_context(home, max_json_bytes=2048, max_upload_bytes=4096)
    client = await aiohttp_client(create_app(ctx))
    big = {"model": "x" * 3000}
    error = await error_of(await client.post("/api/stop", json=big), 413)
    assert error["code"] == "request_too_large" and "2048" in error["message"]
    error = await error_of(await client.post("/api/stop", data=b"x" * 10_000), 413)
    assert "2048" in error["message"]
    assert (await client.get("/healthz")).status == 200  # still serving


async def test_upload_size_limit(aiohttp_client, home: Path) -> None:
    ctx = make_context(home, max_json_bytes=2048, max_upload_bytes=4096)
    app = create_app(ctx)

    async def upload(request: web.Request) -> web.Response:
        return web.json_response({"size": len(await request.read())})

    app.router.add_post("/v1/upload", upload)
    client = await aiohttp_client(app)
    assert (await (await client.post("/v1/upload", data=b"x" * 4000)).json()) == {"size": 4000}
    error = await error_of(await client.post("/v1/upload", data=b"x" * 5000), 413)
    assert error["code"] == "request_too_large" and "4096" in error["message"]


async def test_internal_errors_are_500_without_details(aiohttp_client, ctx: ServerContext, caplog) -> None:
    app = create_app(ctx)

    async def boom(request: web.Request) -> web.Response:
        raise ZeroDivisionError("secret detail")

    app.router.add_get("/v1/boom", boom)
    client = await aiohttp_client(app)
    response = await client.get("/v1/boom")
    error = await error_of(response, 500)
    assert "secret detail" not in error["message"] and response.headers["x-request-id"] in error["message"]
    assert error["type"] == "server_error"
    assert "secret detail" in caplog.text  # logged for the operator, with the request id
    assert (await client.get("/v1/models")).status == 200


async def test_an_error_after_the_answer_began_cuts_it_short(aiohttp_client, ctx: ServerContext, caplog) -> None:
    app = create_app(ctx)

    async def broken_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"the first part")
        raise ZeroDivisionError("secret detail")

    app.router.add_get("/v1/broken", broken_stream)
    client = await aiohttp_client(app)
    response = await client.get("/v1/broken")
    with pytest.raises(aiohttp.ClientPayloadError):  # cut short: no error answer written into it
        await response.read()
    assert "secret detail" in caplog.text
    assert (await client.get("/v1/models")).status == 200


async def test_busy_model_is_503(aiohttp_client, ctx: ServerContext) -> None:
    import asyncio

    app = create_app(ctx)
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        async with ctx.scheduler.use("chat"):
            await release.wait()
        return web.json_response({})

    app.router.add_get("/v1/hold", hold)
    client = await aiohttp_client(app)
    holders = [asyncio.create_task(client.get("/v1/hold")) for _ in range(2)]  # FakeEngine runs 2 at once
    await asyncio.sleep(0.2)
    response = await client.get("/v1/hold")
    error = await error_of(response, 503)
    assert error["code"] == "model_busy" and response.headers["Retry-After"] == "1"
    release.set()
    assert [r.status for r in await asyncio.gather(*holders)] == [200, 200]


# -- keys ---------------------------------------------------------------------------------------


async def test_no_keys_means_open_on_loopback(client: TestClient) -> None:
    assert (await client.get("/v1/models")).status == 200
    assert (await client.get("/api/ps")).status == 200


async def test_network_server_without_keys_stays_closed(aiohttp_client, home: Path) -> None:
    """Startup refuses this case; the key check refuses it again if the server got there anyway."""
    client = await aiohttp_client(create_app(make_context(home, host="0.0.0.0")))
    await error_of(await client.get("/v1/models"), 401)
    assert (await client.get("/healthz")).status == 200
    insecure = await aiohttp_client(create_app(make_context(home / "2", host="0.0.0.0", insecure_no_auth=True)))
    assert (await insecure.get("/v1/models")).status == 200


async def test_keys_required_once_one_exists(client: TestClient, ctx: ServerContext) -> None:
    key = keyed(ctx)
    error = await error_of(await client.get("/v1/models"), 401)
    assert "didn't provide an API key" in error["message"]
    error = await error_of(await client.get("/v1/models", headers=bearer("gpustack_abc_wrong")), 401)
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert (await client.get("/v1/models", headers=bearer(key))).status == 200
    assert (await client.get("/v1/models", headers={"x-api-key": key})).status == 200
    assert (await client.get("/healthz")).status == 200


async def test_scopes(client: TestClient, ctx: ServerContext) -> None:
    inference, management = keyed(ctx), keyed(ctx, scope=Scope.management)
    error = await error_of(await client.get("/metrics", headers=bearer(inference)), 403)
    assert "management" in error["message"]
    refused = await client.post("/api/pull", json={"model": "x"}, headers=bearer(inference))
    assert refused.status == 403 and "management" in (await refused.json())["error"]  # Ollama's shape
    assert (await client.get("/metrics", headers=bearer(management))).status == 200
    await error_of(await client.get("/v1/models", headers=bearer(management)), 403)
    for key in (inference, management):  # what is loaded: for a key of either scope
        assert (await client.get("/api/ps", headers=bearer(key))).status == 200
    both = keyed(ctx, scope=Scope.all)
    for path in ("/api/ps", "/v1/models", "/metrics", "/api/tags"):
        assert (await client.get(path, headers=bearer(both))).status == 200


async def test_model_allowlist(client: TestClient, ctx: ServerContext) -> None:
    key = keyed(ctx, models=["embed"], scope=Scope.all)
    body = await (await client.get("/v1/models", headers=bearer(key))).json()
    assert [m["id"] for m in body["data"]] == ["embed"]
    await error_of(await client.get("/v1/models/chat", headers=bearer(key)), 404)
    await error_of(await client.post("/api/stop", json={"model": "chat"}, headers=bearer(key)), 404)


async def test_environment_key(aiohttp_client, home: Path) -> None:
    client = await aiohttp_client(create_app(make_context(home, api_key="env-key-123")))
    await error_of(await client.get("/v1/models"), 401)
    assert (await client.get("/v1/models", headers=bearer("env-key-123"))).status == 200


async def test_anthropic_route_errors_in_anthropic_shape(client: TestClient, ctx: ServerContext) -> None:
    keyed(ctx)
    response = await client.post("/v1/messages", json={}, headers={"x-api-key": "wrong"})
    assert response.status == 401
    body = await response.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert body["error"]["message"] and body["request_id"] == response.headers["x-request-id"]


async def test_every_route_but_health_needs_a_key(client: TestClient, ctx: ServerContext) -> None:
    """Walk the router: with a key configured, nothing answers without it but the liveness probe,
    the API's description and the playground's static files (which hold no data)."""
    keyed(ctx)
    app = client.server.app
    public = {"/healthz", "/openapi.json", "/", "/api/version"}
    assert app[PUBLIC_PATHS] == public and app[PUBLIC_PREFIXES] == {"/ui/"}
    checked = 0
    for route in client.server.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or re.sub(r"\{[^}]+\}", "x", info.get("formatter", ""))
        if not path or route.method == "HEAD":
            continue
        for method in ("GET", "POST", "PUT", "DELETE") if route.method == "*" else (route.method,):
            response = await client.request(method, path, json={"model": "chat"})
            if path in app[PUBLIC_PATHS] or path.startswith(tuple(app[PUBLIC_PREFIXES])):
                assert response.status != 401 and response.status < 500, (method, path, response.status)
            else:
                assert response.status == 401, (method, path, response.status)
            checked += 1
    assert checked >= 6


# -- management and metrics --------------------------------------------------------------------


async def test_ps_and_stop(client: TestClient, ctx: ServerContext) -> None:
    assert (await (await client.get("/api/ps")).json()) == {"models": []}
    await ctx.scheduler.preload("chat")
    [loaded] = (await (await client.get("/api/ps")).json())["models"]
    assert loaded["name"] == "chat" and loaded["active"] == 0 and loaded["concurrency"] == 2
    response = await client.post("/api/stop", json={"model": "chat"})
    assert response.status == 200 and (await response.json())["unloaded"] is True
    error = await error_of(await client.post("/api/stop", json={"model": "chat"}), 404)
    assert error["code"] == "model_not_loaded"
    error = await error_of(await client.post("/api/stop", json={"model": "ghost"}), 404)
    assert error["code"] == "model_not_found"


async def test_metrics(client: TestClient, ctx: ServerContext) -> None:
    await client.get("/v1/models")
    await client.get("/v1/nothing")
    await ctx.scheduler.preload("chat")
    response = await client.get("/metrics")
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert 'gpustack_http_requests_total{method="GET",route="/v1/models",status="200"} 1.0' in text
    assert 'route="unmatched",status="404"' in text
    assert "gpustack_models_loaded 1.0" in text
    assert 'gpustack_model_requests_active{model="chat"} 0.0' in text


# -- the playground ----------------------------------------------------------------------------


async def test_the_playground_is_public_and_can_be_turned_off(aiohttp_client, client: TestClient, home: Path) -> None:
    keyed_ctx = client.server.app[CONTEXT]
    keyed(keyed_ctx)
    root = await client.get("/", allow_redirects=False, headers={"Accept": "text/html,*/*;q=0.8"})
    assert root.status == 302 and root.headers["Location"] == "/ui/"  # a browser goes to the playground
    other = await client.get("/", headers={"Accept": "*/*"})  # other clients learn that the API answers
    assert other.status == 200 and await other.text() == "Ollama is running"
    page = await client.get("/ui/")
    assert page.status == 200 and "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert (await client.get("/ui/js/api.js")).headers["Content-Type"].startswith("text/javascript")
    # Nothing outside the playground's folder is served (a client may fold the `..` itself: then
    # the path is outside /ui/, and not public).
    for path in ("/ui/../../keys.json", "/ui/%2e%2e/config.py", "/ui/%2e%2e/%2e%2e/keys.json", "/ui/nothing.js"):
        assert (await client.get(path)).status in (401, 404), path
    assert (await client.get("/v1/models")).status == 401  # the page is public, the API is not
    off = await aiohttp_client(create_app(make_context(home / "off", ui=False)))
    assert (
        await (await off.get("/", allow_redirects=False, headers={"Accept": "text/html"})).text() == "Ollama is running"
    )
    assert (await off.get("/ui/")).status == 404
