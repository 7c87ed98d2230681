"""Server-sent events (`text/event-stream`), the framing of OpenAI's and Anthropic's streams, and
newline-delimited JSON (`application/x-ndjson`), Ollama's.

A stream that stays silent (a long prompt being read before the first token, a slot being waited
for) sends a keep-alive every `sse_keepalive` seconds: Node's fetch, which every JavaScript SDK
and coding agent uses, gives up on a response after 300 s without a byte. The keep-alive is an
SSE comment line by default, which every SSE parser skips; a protocol with an event of its own
for it (Anthropic's `ping`) passes that instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import web

from gpustack_cli.server.context import CONTEXT, REQUEST_ID
from gpustack_cli.server.errors import APIError, client_left, engine_error, error_body
from gpustack_cli.server.wire import dumps

log = logging.getLogger("gpustack.server")


COMMENT_PING = b": keep-alive\n\n"


class EventStream:
    content_type = "text/event-stream; charset=utf-8"

    def __init__(self, request: web.Request, ping: bytes = COMMENT_PING):
        self.request = request
        self.ping = ping
        self._lock = asyncio.Lock()
        self._last = time.monotonic()
        self._pinger: asyncio.Task[None] | None = None
        self.response = web.StreamResponse(
            headers={
                "Content-Type": self.content_type,
                "Cache-Control": "no-cache",
                "Connection": "keep-alive",
                "X-Accel-Buffering": "no",
            }
        )

    async def open(self) -> None:
        await self.response.prepare(self.request)
        self._last = time.monotonic()
        interval = self.request.app[CONTEXT].settings.sse_keepalive
        if interval > 0:
            self._pinger = asyncio.create_task(self._keep_alive(interval))

    async def send(self, data: dict[str, Any] | str, event: str | None = None) -> None:
        payload = data.encode() if isinstance(data, str) else dumps(data)
        prefix = f"event: {event}\ndata: ".encode() if event else b"data: "
        await self._write(prefix + payload + b"\n\n")

    async def _write(self, frame: bytes) -> None:
        async with self._lock:  # a keep-alive never lands inside an event
            await self.response.write(frame)
            self._last = time.monotonic()

    async def _keep_alive(self, interval: float) -> None:
        """A ping whenever nothing was sent for `interval` seconds, until the stream ends."""
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client left, or the stream ended
            while True:
                await asyncio.sleep(max(0.0, self._last + interval - time.monotonic()))
                transport = self.request.transport
                if transport is None or transport.is_closing():
                    return
                if time.monotonic() - self._last >= interval:
                    await self._write(self.ping)

    def _stop_pinging(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None

    async def fail(self, exc: Exception, event: str | None = None) -> None:
        """End the stream with the error event for `exc`, in the route's error shape (the head is
        gone, so the error goes in the stream, as OpenAI and Anthropic send it)."""
        error = self.error_of(exc)
        await self.send(error_body(self.request, error, self.request.get(REQUEST_ID)), event=event)

    def error_of(self, exc: Exception) -> APIError:
        """What to tell the client of `exc`, raised while streaming. For a client that left there
        is nothing to tell: `exc` goes on to the error middleware, which counts it so."""
        if client_left(self.request, exc):
            raise exc
        error = engine_error(exc)
        if error is None:  # a bug: logged, counted, and a 500 in the stream
            log.exception("error while streaming")
            self.request.app[CONTEXT].metrics.internal_errors.inc()
            error = APIError(500, "The server had an error while generating the response.")
        return error

    async def close(self) -> web.StreamResponse:
        self._stop_pinging()
        async with self._lock:
            await self.response.write_eof()
        return self.response


class NdjsonStream(EventStream):
    """One JSON object a line. No keep-alive: an NDJSON reader takes every line for an object, so
    there is nothing a silent stream could send that every client would skip."""

    content_type = "application/x-ndjson"

    async def open(self) -> None:
        await self.response.prepare(self.request)

    async def send(self, data: dict[str, Any] | str, event: str | None = None) -> None:
        await self._write((data.encode() if isinstance(data, str) else dumps(data)) + b"\n")
