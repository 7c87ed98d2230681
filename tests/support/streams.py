"""Streams in tests: a streamed chat completion read as it comes, and events handed to
converters as an async iterator."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable

import httpx

from gpustack_cli.core.types import Event


async def stream_times(
    client: httpx.AsyncClient, body: dict, first: asyncio.Event | None = None
) -> tuple[str, list[float]]:
    """The streamed text and the time each content event came (`first` is set at the first)."""
    text, times = "", []
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if delta:
                    text += delta
                    times.append(time.monotonic())
                    if first is not None:
                        first.set()
    return text, times


async def aiter(items: Iterable[Event | dict]) -> AsyncIterator:
    for item in items:
        yield item


def run(coroutine):
    return asyncio.run(coroutine)
