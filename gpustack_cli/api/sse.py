"""Server-sent events, as OpenAI and Anthropic stream them."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gpustack_cli.api.errors import APIError, engine_error
from gpustack_cli.api.responses import dumps

log = logging.getLogger("gpustack.server")


def stream_error(exc: Exception) -> APIError:
    """An error raised after a stream began, as the error event that ends the stream."""
    known = engine_error(exc)
    if known is not None:
        return known
    log.exception("error while streaming")
    return APIError(500, "The server had an error while generating the response.")


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

    async def close(self) -> web.StreamResponse:
        await self.response.write_eof()
        return self.response
