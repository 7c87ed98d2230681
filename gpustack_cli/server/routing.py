"""Routes that name a model in their body: where a request goes is settled as its model is
resolved. A model served elsewhere (a remote model), or by a child server of its own, has its
request passed to the application's forwarder, as it came; any other goes to the route's own
handler. The body is read and parsed once either way (the handler's `read_json` or `read_form`
reuse it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps

from aiohttp import web

from gpustack_cli.config import Settings
from gpustack_cli.models.loading import in_child
from gpustack_cli.models.store import Category, Manifest, ModelNotFound, ModelStore, StoreError
from gpustack_cli.server.context import context, read_form, read_json_object, resolve_model

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Answers a request for a model served elsewhere, as it came: (request, its model's manifest).
Forwarder = Callable[[web.Request, Manifest], Awaitable[web.StreamResponse]]
FORWARDER = web.AppKey("forwarder", Forwarder)
# The engine name of models served elsewhere.
REMOTE_ENGINE = "remote"


async def model_named(request: web.Request) -> str | None:
    """The `model` a JSON or multipart body names, if any."""
    if request.content_type.startswith("multipart/form-data"):
        value = (await read_form(request)).get("model")
    else:
        value = ((await read_json_object(request)) or {}).get("model")
    return value if isinstance(value, str) else None


def remote_manifest(store: ModelStore, name: str) -> Manifest | None:
    """The manifest of `name` when it is a model served elsewhere."""
    try:
        manifest = store.get(name)
    except (ModelNotFound, StoreError, ValueError):
        return None
    return manifest if manifest.engine == REMOTE_ENGINE else None


def forwarded_manifest(store: ModelStore, settings: Settings, name: str) -> Manifest | None:
    """The manifest of `name` when its requests are forwarded: a model served elsewhere, or one
    that runs in a child server of its own (`gpustack_cli.upstream.child`)."""
    try:
        manifest = store.get(name)
    except (ModelNotFound, StoreError, ValueError):
        return None
    return manifest if manifest.engine == REMOTE_ENGINE or in_child(manifest, settings) else None


def model_route(category: Category, route: str) -> Callable[[Handler], Handler]:
    """A handler for a route serving models of `category` (`route` names it in errors), whose
    remote models' requests go to the application's forwarder as they came."""

    def wrap(handler: Handler) -> Handler:
        @wraps(handler)
        async def routed(request: web.Request) -> web.StreamResponse:
            forwarder = request.app.get(FORWARDER)
            name = await model_named(request) if forwarder is not None else None
            ctx = context(request)
            if name and forwarded_manifest(ctx.store, ctx.settings, name) is not None:
                return await forwarder(request, resolve_model(request, name, category, route))
            return await handler(request)

        return routed

    return wrap
