"""The aiohttp application every protocol is mounted on: middlewares (request ids, metrics,
errors in the route's shape, keys), the server's own routes (`/healthz`, `/metrics`) and lifecycle."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web

from gpustack_cli import __version__
from gpustack_cli.server import access_log, origins
from gpustack_cli.server.context import CONTEXT, PRINCIPAL, REQUEST_ID, ServerContext
from gpustack_cli.server.errors import DEFAULT_ERROR_SHAPE, APIError, ErrorShape, client_left, engine_error, error_body
from gpustack_cli.server.keys import Scope, split_key
from gpustack_cli.server.operations import SCOPES, Doc, Operation, operation
from gpustack_cli.server.wire import json_response

log = logging.getLogger("gpustack.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths anyone may fetch, keys or not (a liveness probe, the API's description, the playground's
# static files: none says anything of models): exact paths, and prefixes.
PUBLIC_PATHS = web.AppKey("public_paths", set)
PUBLIC_PREFIXES = web.AppKey("public_prefixes", set)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# Request ids: a random prefix per process and a counter, unique without a random draw per request.
_ID_PREFIX = secrets.token_hex(8)
_ids = itertools.count(1)
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


class Health(Doc):
    status: Literal["ok"]
    version: str


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def _error_response(request: web.Request, error: APIError) -> web.Response:
    body = error_body(request, error, request.get(REQUEST_ID))
    return json_response(body, status=error.status, headers=error.headers)


def _as_api_error(request: web.Request, exc: Exception) -> APIError | None:
    """What an exception from a handler means on the wire; None for an HTTP redirect."""
    known = engine_error(exc)
    if known is not None:
        return known
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        if exc.status == 404:
            message = f"Invalid URL ({request.method} {request.path})"
        elif exc.status == 413:
            settings = request.app[CONTEXT].settings
            limit = max(settings.max_json_bytes, settings.max_upload_bytes)
            message = f"Request body too large: the limit is {limit} bytes."
        else:
            message = exc.reason
        return APIError(exc.status, message, code=_HTTP_CODES.get(exc.status))
    rid = request.get(REQUEST_ID)
    log.exception("internal error in %s %s (request id %s)", request.method, request.path, rid)
    request.app[CONTEXT].metrics.internal_errors.inc()
    return APIError(500, f"The server had an error processing your request (request id {rid}).")


async def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer carries its request's id, streams and proxied answers too (aiohttp calls this
    as any response is prepared, just before its head is sent)."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers["x-request-id"] = rid
    # No browser guesses a type other than the one sent; the server names no versions.
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Server"] = "gpustack"


@web.middleware
async def outer_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request's id, its errors in the API's own format, and its metrics: one middleware,
    as each layer costs every request a little."""
    given = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = given if _SAFE_ID.match(given) else f"req_{_ID_PREFIX}{next(_ids):016x}"
    metrics = request.app[CONTEXT].metrics
    started, status = time.perf_counter(), 500
    metrics.in_flight.inc()
    try:
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            status = 499  # The client went away (nginx's number for it).
            access_log.client_left(request, time.perf_counter() - started, request.get(REQUEST_ID))
            raise
        except Exception as exc:
            if client_left(request, exc):
                # Nothing to answer and no server error: aiohttp finds the connection gone, sends
                # nothing and logs the access (as 499, nginx's number for it).
                status = 499
                return web.Response(status=499)
            error = _as_api_error(request, exc)
            if error is None:  # a redirect: aiohttp sends it
                assert isinstance(exc, web.HTTPException)
                status = exc.status
                raise
            if request.writer.output_size and request.transport is not None:
                # The answer had begun (a stream of audio, say): no error can follow it. Break
                # the connection, so that the client sees the answer cut short (an error answer
                # written into it would read as garbage), and aiohttp sends nothing more.
                request.transport.close()
            response = _error_response(request, error)
        status = response.status
        return response
    finally:
        metrics.in_flight.dec()
        metrics.request_done(request.method, _route_name(request), status, time.perf_counter() - started)


def _subjects(request: web.Request, token: str) -> list[str]:
    """What failed key checks are counted against: the client's address, and the key id the
    token names (whoever guesses its secret, from wherever)."""
    subjects = [f"addr:{request.remote}"]
    parts = split_key(token) if token.isascii() else None
    if parts is not None:
        subjects.append(f"key:{parts[0][:32]}")
    return subjects


def _required_scope(request: web.Request) -> Scope | None:
    """The scope a route needs, as its operation says (None: a key of any scope)."""
    scope = request.app.get(SCOPES, {}).get(request.path, "inference")
    return None if scope == "any" else Scope(scope)


def public(app: web.Application, *paths: str, prefixes: tuple[str, ...] = ()) -> None:
    """Let anyone fetch `paths` and whatever starts with one of `prefixes`, keys or not."""
    app[PUBLIC_PATHS].update(paths)
    app[PUBLIC_PREFIXES].update(prefixes)


def _is_public(request: web.Request) -> bool:
    app = request.app
    return request.path in app[PUBLIC_PATHS] or request.path.startswith(tuple(app[PUBLIC_PREFIXES]))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    auth, settings = ctx.auth, ctx.settings
    # Without keys only a loopback server is open (or one its operator declared insecure).
    open_server = not auth.enabled and (settings.loopback_only or settings.insecure_no_auth)
    if open_server or _is_public(request):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key")
    if not token:
        raise APIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the x-api-key header.",
        )
    # A key seen before is checked on the loop; a new one costs a scrypt hash, in a thread, a few
    # at a time, and not for a client or key id that failed too often of late.
    found = auth.cached(token)
    if found is None:
        subjects = _subjects(request, token)
        async with ctx.key_checks:
            wait = ctx.throttle.retry_after(subjects)
            if wait > 0:
                raise APIError(
                    429,
                    "Too many failed API key checks; try again later.",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(math.ceil(wait))},
                )
            found = await asyncio.to_thread(auth.verify, token)
            if found is None:
                ctx.throttle.failed(subjects)
    if found is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    scope = _required_scope(request)
    if scope is not None and not found.may(scope):
        raise APIError(403, f"This API key lacks the '{scope.value}' scope needed for {request.path}.")
    if request.path == "/metrics" and found.models:
        raise APIError(403, "This API key is limited to some models; the metrics cover every model.")
    request[PRINCIPAL] = found
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "version": __version__})


async def metrics_route(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    body = await asyncio.to_thread(ctx.metrics.render, ctx.scheduler)
    return web.Response(body=body, headers={"Content-Type": ctx.metrics.content_type})


def application(ctx: ServerContext, default_errors: ErrorShape) -> web.Application:
    """The application with the plumbing in place and no protocol yet: the caller adds the
    protocols' routes (and says how errors of other routes look)."""
    app = web.Application(
        middlewares=[outer_middleware, origins.origin_middleware, auth_middleware],
        client_max_size=max(ctx.settings.max_json_bytes, ctx.settings.max_upload_bytes),
    )
    app[CONTEXT] = ctx
    app[DEFAULT_ERROR_SHAPE] = default_errors
    app[PUBLIC_PATHS], app[PUBLIC_PREFIXES] = set(), set()
    public(app, "/healthz")
    operation(app, healthz, Operation("GET", "/healthz", "Liveness", "server", response=Health, public=True))
    # The metrics name every model and upstream: they are the operator's, as the management routes.
    summary = "Prometheus metrics (management scope)"
    metered = Operation("GET", "/metrics", summary, "server", also=("text/plain",), scope="management")
    operation(app, metrics_route, metered)

    async def preload(app: web.Application) -> None:
        for name in ctx.settings.preload:
            await ctx.scheduler.preload(name)

    async def shutdown(app: web.Application) -> None:
        await ctx.scheduler.close()

    app.on_response_prepare.append(stamp_request_id)
    app.on_response_prepare.append(origins.add_cors_headers)
    app.on_startup.append(preload)
    app.on_cleanup.append(shutdown)
    return app
