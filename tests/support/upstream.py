"""A small aiohttp server on loopback standing in for upstream behaviour a real server will not show
on demand: slowness, dropped connections, repeated headers, huge streamed bodies; and a relay to
a real upstream that lacks a route (as servers without Anthropic's /v1/messages do)."""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.support.loopback import BackgroundApp


def closed_port_url() -> str:
    """The URL of a loopback port nothing listens on (once the socket that found it closes)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class TestUpstream:
    __test__ = False  # a helper server, not a pytest test class
    # Where /v1/chat/completions and /v1/models are relayed (a real gpustack), if anywhere.
    relay_to: str | None = None
    hits: int = 0
    seen: list[dict] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def last(self, path: str) -> dict:
        """The last request /echo saw for `path` (with its query); health checks may come between."""
        return next(seen for seen in reversed(self.seen) if seen["path"] == path)

    async def echo(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = await request.read()
        self.seen.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": body.decode(errors="replace"),
            }
        )
        response = web.json_response({"path": request.path_qs, "method": request.method, "length": len(body)})
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        response.headers["X-Upstream"] = "test"
        return response

    async def slow(self, request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.disconnected.set()  # the proxy closed its request when its client went away
            raise
        return web.json_response({})

    async def drop(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    async def cut(self, request: web.Request) -> web.StreamResponse:
        """1 MiB of an answer, chunked or of a declared 10 MiB, then the connection breaks."""
        response = web.StreamResponse()
        if request.query.get("length"):
            response.content_length = 10 * 1024 * 1024
        await response.prepare(request)
        await response.write(b"x" * 1024 * 1024)
        await asyncio.sleep(0.1)
        assert request.transport is not None
        request.transport.close()
        return response

    async def big(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("mb", "20")) * 1024 * 1024
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(size // len(chunk)):
                await response.write(chunk)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()  # the proxy closed its request when its client went away
            raise
        await response.write_eof()
        return response

    async def relay(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        assert self.relay_to
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.relay_to + request.path_qs,
                data=await request.read(),
                headers={k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")},
            ) as answer,
        ):
            response = web.StreamResponse(status=answer.status, headers={"Content-Type": answer.content_type})
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def missing(self, request: web.Request) -> web.Response:
        return web.json_response({"detail": "Not Found"}, status=404)

    def start(self) -> TestUpstream:
        app = web.Application()
        app.router.add_route("*", "/echo/{tail:.*}", self.echo)
        app.router.add_get("/slow", self.slow)
        app.router.add_post("/v1/embeddings", self.slow)
        app.router.add_get("/drop", self.drop)
        app.router.add_get("/big", self.big)
        app.router.add_get("/cut", self.cut)
        app.router.add_post("/v1/messages", self.missing)
        app.router.add_post("/v1/responses", self.missing)
        app.router.add_route("*", "/v1/{tail:.*}", self.relay)
        self._server = BackgroundApp(app, handler_cancellation=True)
        self.url = self._server.url
        return self

    def stop(self) -> None:
        self._server.stop()
