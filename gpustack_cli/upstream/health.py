"""Active health checks of remote models' upstreams.

Every `health_interval` seconds each upstream of every loaded remote model gets a GET of its
health path (`/v1/models` unless `add-remote --health-path` says otherwise). An answer below 500
puts the upstream back into the rotation; no answer, a timeout or a 5xx takes it out, so requests
stop paying a failed connection to learn that a server is down, and a server that comes back is
used again without waiting for a request to try it. The state shows in `/metrics` as
`gpustack_upstream_up`. An upstream that lists its loaded models (`/api/ps`: another gpustack, or
Ollama) also says how many requests other clients have on the model there, which the pool counts
beside its own when it picks an upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from gpustack_cli.server.context import CONTEXT
from gpustack_cli.upstream.clients.base import HttpClient, UpstreamError
from gpustack_cli.upstream.forward import CLIENT, credentials
from gpustack_cli.upstream.pool import RemoteEngine, Upstream

log = logging.getLogger("gpustack.health")


async def probe(
    client: HttpClient, engine: RemoteEngine, upstream: Upstream, timeout: float, model: str | None = None
) -> bool:
    """Check one upstream now and record the outcome; whether it is up. With `model` (its name
    here), an upstream that lists its loaded models (`/api/ps`: gpustack, Ollama) says how many
    requests other clients have on it."""
    try:
        async with (
            asyncio.timeout(timeout),
            client.request("GET", upstream.url, engine.health_path, credentials(engine)) as answer,
        ):
            healthy = answer.status < 500
        if healthy and model is not None:
            await _read_load(client, engine, upstream, timeout, engine.upstream_model or model)
    except (UpstreamError, TimeoutError):
        healthy = False
    if healthy and not upstream.up:
        log.info("upstream %s is back", upstream.url)
        engine.recovered(upstream)
    elif not healthy:
        if upstream.up:
            log.warning("upstream %s failed its health check", upstream.url)
        engine.failed(upstream)
    return healthy


async def _read_load(client: HttpClient, engine: RemoteEngine, upstream: Upstream, timeout: float, model: str) -> None:
    """`upstream.others`: the requests running or waiting for `model` on the upstream, less this
    server's own; left as it was when the upstream has no such list."""
    async with (
        asyncio.timeout(timeout),
        client.request("GET", upstream.url, "/api/ps", credentials(engine)) as answer,
    ):
        if answer.status != 200:
            return
        body = await answer.read()
    try:
        models = orjson.loads(body).get("models") or []
        entry = next((m for m in models if model in (m.get("name"), m.get("model"))), None)
        busy = 0 if entry is None else int(entry.get("active") or 0) + int(entry.get("waiting") or 0)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return
    upstream.others = max(0, busy - upstream.in_flight)


async def check_all(app: web.Application) -> None:
    """One round: every upstream of every loaded remote model, all at once."""
    interval = app[CONTEXT].settings.health_interval
    engines = [(n, e) for n, e in app[CONTEXT].scheduler.engines() if isinstance(e, RemoteEngine)]
    checks = [probe(app[CLIENT], e, u, min(interval, 5.0), name) for name, e in engines for u in e.upstreams]
    await asyncio.gather(*checks)


async def _forever(app: web.Application, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await check_all(app)


async def health_checks(app: web.Application) -> AsyncIterator[None]:
    """The checks as a background task for the app's lifetime (an aiohttp cleanup context)."""
    interval = app[CONTEXT].settings.health_interval
    if interval <= 0:
        yield
        return
    task = asyncio.create_task(_forever(app, interval))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
