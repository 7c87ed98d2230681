"""Active health checks of remote models' upstreams.

Every `health_interval` seconds each upstream of every loaded remote model gets a GET of its
health path (`/v1/models` unless `add-remote --health-path` says otherwise). An answer below 500
puts the upstream back into the rotation; no answer, a timeout or a 5xx takes it out, so requests
stop paying a failed connection to learn that a server is down, and a server that comes back is
used again without waiting for a request to try it. The state shows in `/metrics` as
`gpustack_upstream_up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gpustack_cli.server.context import CONTEXT
from gpustack_cli.upstream.clients.base import HttpClient, UpstreamError
from gpustack_cli.upstream.forward import CLIENT, credentials
from gpustack_cli.upstream.pool import RemoteEngine, Upstream

log = logging.getLogger("gpustack.health")


async def probe(client: HttpClient, engine: RemoteEngine, upstream: Upstream, timeout: float) -> bool:
    """Check one upstream now and record the outcome; whether it is up."""
    try:
        async with (
            asyncio.timeout(timeout),
            client.request("GET", upstream.url, engine.health_path, credentials(engine)) as answer,
        ):
            healthy = answer.status < 500
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


async def check_all(app: web.Application) -> None:
    """One round: every upstream of every loaded remote model, all at once."""
    interval = app[CONTEXT].settings.health_interval
    engines = [e for _, e in app[CONTEXT].scheduler.engines() if isinstance(e, RemoteEngine)]
    checks = [probe(app[CLIENT], e, u, min(interval, 5.0)) for e in engines for u in e.upstreams]
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
