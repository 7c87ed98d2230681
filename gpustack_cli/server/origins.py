"""Who may reach the server from a web browser: the `Host` a request names, and the `Origin` a
browser stamps on what a page sends.

A server without keys on loopback (the first run) would otherwise answer any web page the user
opens: a page on another site can POST to it (a `text/plain` body needs no CORS preflight), and a
name that the attacker's DNS points at 127.0.0.1 (DNS rebinding) makes the browser treat the
server as that site, free to read its answers. So, as Ollama does after its rebinding advisory:
- a server without keys answers only requests whose `Host` is a loopback name or address, an
  address it listens on, this machine's own name, or one of `allowed_hosts`;
- a request with an `Origin` other than the server's own is refused unless the origin is a
  loopback one or matches `origins` (`--cors-origins`); allowed origins get CORS headers, and their preflight
  (`OPTIONS`) is answered here, before any key is asked for (browsers send none with it).
Clients that are not browsers send no `Origin` and are not affected.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from gpustack_cli.config import Settings, is_loopback
from gpustack_cli.server.context import CONTEXT
from gpustack_cli.server.errors import APIError

_WILDCARDS = ("0.0.0.0", "::", "")
# The CORS headers of a request from an allowed origin, added to whatever answers it.
CORS = web.RequestKey("cors", dict)
_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"


def _split(host_header: str) -> tuple[str, int | None]:
    """The host name and port of a `Host` header (`name`, `name:port`, `[v6]:port`)."""
    parsed = urlsplit(f"//{host_header}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    return (parsed.hostname or "").rstrip(".").lower(), port


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.cache
def _own_names() -> frozenset[str]:
    names = {socket.gethostname().lower()}
    with contextlib.suppress(OSError):
        names.add(socket.getfqdn().lower())
    return frozenset(names)


def host_allowed(host_header: str, settings: Settings) -> bool:
    """Whether a server without keys answers a request that names this `Host`."""
    host, _ = _split(host_header)
    if not host:
        return False
    if is_loopback(host) or host.endswith(".localhost"):
        return True
    if any(pattern == "*" or fnmatch.fnmatch(host, pattern.lower()) for pattern in settings.allowed_hosts):
        return True
    if settings.host in _WILDCARDS:  # every address of the machine, by address or by its own name
        return _is_address(host) or host in _own_names()
    return host == settings.host.strip("[]").lower()


def origin_allowed(origin: str, host_header: str, settings: Settings) -> bool:
    """Whether a browser page of `origin` may use the server: its own pages (the playground),
    pages served from loopback, and the origins `origins` names (`*` for any)."""
    parsed = urlsplit(origin)
    if parsed.netloc and parsed.netloc.lower() == host_header.lower():
        return True
    if parsed.scheme in ("http", "https") and is_loopback((parsed.hostname or "").lower()):
        return True
    return any(pattern == "*" or fnmatch.fnmatch(origin, pattern) for pattern in settings.origins)


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "x-request-id, retry-after",
        "Vary": "Origin",
    }


@web.middleware
async def origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    settings = ctx.settings
    if not ctx.auth.enabled and not host_allowed(request.headers.get("Host", ""), settings):
        raise APIError(
            403,
            "This server does not answer requests for that host name (a protection against DNS rebinding); "
            "add it with --allowed-hosts.",
            code="host_not_allowed",
        )
    origin = request.headers.get("Origin")
    if origin is None:
        return await handler(request)
    if not origin_allowed(origin, request.headers.get("Host", ""), settings):
        raise APIError(
            403,
            f"Requests from web pages of {origin} are not allowed; add the origin with --cors-origins.",
            code="origin_not_allowed",
        )
    headers = _cors_headers(origin)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        headers["Access-Control-Allow-Methods"] = _METHODS
        headers["Access-Control-Allow-Headers"] = request.headers.get("Access-Control-Request-Headers", "")
        headers["Access-Control-Max-Age"] = "600"
        return web.Response(status=204, headers=headers)
    request[CORS] = headers
    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every answer as it is prepared (streams and errors too), for an allowed origin."""
    headers = request.get(CORS)
    if headers:
        response.headers.update(headers)
