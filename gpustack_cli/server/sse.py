"""Server-sent events (`text/event-stream`), the framing every streaming protocol here uses."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gpustack_cli.server.context import CONTEXT, REQUEST_ID
from gpustack_cli.server.errors import APIError, client_left, engine_error, error_body
from gpustack_cli.server.wire import dumps

log = logging.getLogger("gpustack.server")


class EventStream:
    def __init__(self, request: web.Request):
        self.request = request
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "Connection": "keep-alive",
                "X-Accel-Buffering": "no",
            }
        )

    async def open(self) -> None:
        await self.response.prepare(self.request)

    async def send(self, data: dict[str, Any] | str, event: str | None = None) -> None:
        payload = data.encode() if isinstance(data, str) else dumps(data)
        prefix = f"event: {event}\ndata: ".encode() if event else b"data: "
        await self.response.write(prefix + payload + b"\n\n")

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
        await self.response.write_eof()
        return self.response
