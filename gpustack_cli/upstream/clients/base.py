"""What the rest of the server asks of an HTTP client to an upstream: `request` a method and path
of an upstream URL, get its answer's status and headers, then its body (whole, in chunks, or in
lines). Two clients give it: `raw.RawClient` (hand-written over asyncio, for the Generic Proxy's
byte relay, which writes upstream bytes straight into the client's connection) and
`session.SessionClient` (aiohttp's `ClientSession`, for everything that parses the answer anyway:
a chat over an upstream, health checks). Both raise only the errors defined here."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 10.0
# Idle connections older than this are not used again: a load balancer between us and the
# upstream may have dropped them without a word, and a request sent on one would wait for the
# whole read timeout (aiohttp's client keeps them 15 s too).
IDLE_SECONDS = 15.0
# Methods that do nothing more when sent twice (RFC 9110 9.2.2), and the headers by which a
# request says the same of itself: either may be sent again on a new connection.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
IDEMPOTENCY_KEYS = frozenset({"idempotency-key", "x-idempotency-key"})


class UpstreamError(Exception):
    """The upstream could not be reached, or broke the connection or the protocol."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """No data within the timeout, on a connection the request went out on."""


class UpstreamUnreached(UpstreamError):
    """No connection to the upstream (refused, unreachable, no name, no TLS, or none within the
    connect timeout): nothing of the request was sent, so another upstream may take it."""


@dataclass(frozen=True)
class Origin:
    """Where an upstream URL points: what to connect to, the Host header, and its base path."""

    scheme: str
    host: str
    port: int
    authority: str
    base_path: str

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def parse(url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(f"not an http(s) URL: {url}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        authority = parts.netloc.rpartition("@")[2]  # never send user:password@ as the Host
        return Origin(parts.scheme, parts.hostname, port, authority, parts.path.rstrip("/"))


def replayable(method: str, headers: Iterable[tuple[str, str]]) -> bool:
    """Whether a request may be sent again when its connection broke before any answer."""
    return method in IDEMPOTENT or any(name.lower() in IDEMPOTENCY_KEYS for name, _ in headers)


def check_headers(headers: Iterable[tuple[str, str]]) -> None:
    """Refuse a header that would split the request head (an injection)."""
    for name, value in headers:
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise UpstreamError(f"header {name!r} has a line break")


async def split_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A body's chunks split at line ends (for server-sent events), without the line ends. Each
    byte is looked at once, however long a line runs across chunks."""
    parts: list[bytes] = []
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            parts.append(chunk[start:end])
            yield b"".join(parts).rstrip(b"\r")
            parts.clear()
            start = end + 1
        parts.append(chunk[start:])
    if any(parts):
        yield b"".join(parts)


class HttpResponse(Protocol):
    status: int
    reason: str
    headers: list[tuple[str, str]]
    content_length: int | None

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive; raises `UpstreamError` where the upstream broke off."""
        ...

    async def read(self) -> bytes: ...

    def lines(self) -> AsyncIterator[bytes]:
        """The body split at line ends (for server-sent events), without the line ends."""
        ...


class HttpClient(Protocol):
    read_timeout: float

    def request(
        self,
        method: str,
        url: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[HttpResponse]:
        """Send `method target` to the upstream at `url` (its base path goes before `target`,
        which must be percent-encoded); yields the answer once its head arrived. `timeout` (the
        client's `read_timeout` when None) bounds each wait for data."""
        ...

    async def close(self) -> None: ...
