"""The Generic Proxy: `ANY /model/proxy/{path}` reaches a model's own API (see `native_apis`), or
for a remote model its upstream server.

The model is named by the `X-GPUStack-Model` header, else the JSON body's `model` field, else
the first path segment (`/model/proxy/{model}/{path}`). Only models with the proxy switched on
answer (`gpustack pull --generic-proxy`, `gpustack model set NAME --generic-proxy`, or
`gpustack serve --generic-proxy NAME`); keys and per-key model lists apply as on `/v1`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from aiohttp import web

from gpustack_cli.models.loading import in_child
from gpustack_cli.models.store import Manifest, ModelNotFound, StoreError
from gpustack_cli.native.engine_apis import ROUTES
from gpustack_cli.server.context import (
    context,
    engine_for,
    principal,
    read_body,
    read_form,
    read_json_object,
    resolve_model,
)
from gpustack_cli.server.errors import APIError, bad_request
from gpustack_cli.server.operations import STREAM, Operation, describe
from gpustack_cli.server.routing import REMOTE_ENGINE
from gpustack_cli.upstream.forward import forward

PREFIX = "/model/proxy"
MODEL_HEADER = "X-GPUStack-Model"


def _enabled(request: web.Request, manifest: Manifest) -> bool:
    return manifest.generic_proxy or manifest.name in context(request).settings.generic_proxy


def _names_proxied_model(request: web.Request, segment: str) -> bool:
    """Whether a path's first segment names a model the caller may reach through the proxy."""
    if not principal(request).may_use(segment):
        return False
    try:
        return _enabled(request, context(request).store.get(segment))
    except (ModelNotFound, StoreError, ValueError):
        return False


def _segments(request: web.Request) -> list[str]:
    raw = request.raw_path.split("?", 1)[0][len(PREFIX) :]
    segments = [unquote(s) for s in raw.split("/") if s]
    # Refuse traversal in any spelling: `..`, `%2e%2e`, or a slash hidden as `%2f`.
    if any(s in (".", "..") or "/" in s or "\\" in s for s in segments):
        raise bad_request("Invalid proxy path: '.' and '..' segments are not allowed.", param="path")
    return segments


async def proxy(request: web.Request) -> web.StreamResponse:
    segments = _segments(request)
    name = request.headers.get(MODEL_HEADER)
    body: Any = {}
    if request.content_type.startswith("multipart/form-data"):
        field = (await read_form(request)).get("model")  # read (and kept) for forwarding too
        name = name or (field if isinstance(field, str) else None)
    else:
        raw = await read_body(request)
        if raw.strip() and (not name or request.content_type == "application/json"):
            found = await read_json_object(request)
            if found is None and not name:
                raise bad_request("Name the model in the X-GPUStack-Model header: the body is not a JSON object.")
            body = found or {}
        name = name or body.get("model")
    if not name and segments and _names_proxied_model(request, segments[0]):
        name, segments = segments[0], segments[1:]
    if not isinstance(name, str) or not name:
        raise bad_request(
            f"Name the model: the {MODEL_HEADER} header, a 'model' field, or /model/proxy/MODEL/...", param="model"
        )
    manifest = resolve_model(request, name)
    if not _enabled(request, manifest):
        raise APIError(
            403,
            f"The generic proxy is off for model '{name}': turn it on with "
            f"`gpustack model set {name} --generic-proxy`.",
            code="proxy_disabled",
        )
    path = "/" + "/".join(segments)
    if manifest.engine == REMOTE_ENGINE:  # a remote model: its upstream answers, byte for byte
        async with context(request).scheduler.use(manifest.name) as engine:
            return await forward(request, engine, manifest.options.get("proxy_prefix", "") + path)
    ctx = context(request)
    if in_child(manifest, ctx.settings):  # its child server answers on the same proxy path
        async with ctx.scheduler.use(manifest.name) as engine:
            return await forward(request, engine, request.path)
    routes = ROUTES.get(manifest.engine, {})
    found = routes.get((request.method, path))
    if found is None:
        known = ", ".join(f"{m} {p}" for m, p in routes)
        raise APIError(
            404,
            f"Model '{name}' ({manifest.engine}) has no route {request.method} {path}; it has: {known}.",
            code="not_found",
        )
    handler, category = found
    if category is not None and category not in manifest.categories:
        raise bad_request(f"Model '{name}' is not a {category} model, so it has no {path}.", param="model")
    async with engine_for(request, manifest, object) as engine:
        return await handler(request, engine, body if isinstance(body, dict) else {}, name)


def add_routes(app: web.Application) -> None:
    app.router.add_route("*", PREFIX + "/{tail:.*}", proxy)
    summary = "Generic proxy: a model's own API (the model from the X-GPUStack-Model header or the body's `model`)"
    forwarded = Operation(
        "POST", PREFIX + "/{path}", summary, "proxy", also=("application/octet-stream", STREAM), free_body=True
    )
    describe(app, forwarded)
