"""The upstream client on aiohttp's `ClientSession`, for requests whose answers are parsed anyway
(a chat over an upstream's chat completions, health checks), where the relay's speed buys
nothing and a well-kept client is the better choice. It keeps the same contract as `raw.RawClient`:
its errors, timeouts, the environment's proxies, the system's trust store, no cookies, and a
request sent again on a fresh connection only when that cannot do a thing twice (aiohttp repeats
idempotent methods itself; a request with an idempotency key is repeated here)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import aiohttp
from yarl import URL

from gpustack_cli.upstream.clients import base
from gpustack_cli.upstream.clients.base import (
    CONNECT_TIMEOUT,
    IDEMPOTENT,
    Origin,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreached,
    check_headers,
    replayable,
    split_lines,
)


class SessionResponse:
    def __init__(self, response: aiohttp.ClientResponse, where: str) -> None:
        self._response = response
        self._where = where
        self.status = response.status
        self.reason = response.reason or ""
        self.headers = _headers(response)
        self.content_length = response.content_length

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except BaseException as exc:
            raise _mapped(exc, self._where) from exc

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def lines(self) -> AsyncIterator[bytes]:
        """The body split at line ends (for server-sent events), without the line ends."""
        return split_lines(self.iter_chunks())


class SessionClient:
    def __init__(self, read_timeout: float, decompress: bool = True) -> None:
        self.read_timeout = read_timeout
        self.decompress = decompress
        self._session: aiohttp.ClientSession | None = None

    def _opened(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0,
                keepalive_timeout=base.IDLE_SECONDS,
                # The system's trust store, read now (SSL_CERT_FILE / SSL_CERT_DIR point elsewhere).
                ssl=ssl.create_default_context(),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # one user's cookies never ride on another's request
                trust_env=True,  # HTTP_PROXY, HTTPS_PROXY, NO_PROXY
                auto_decompress=self.decompress,
            )
        return self._session

    @asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        timeout: float | None = None,
    ) -> AsyncIterator[SessionResponse]:
        origin = Origin.parse(url)
        headers = list(headers)
        check_headers(headers)
        address = URL(f"{origin.scheme}://{origin.authority}{origin.base_path}{target}", encoded=True)
        wait = self.read_timeout if timeout is None else timeout
        limits = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=wait)
        # aiohttp sends an idempotent method again itself; a keyed request is sent again here.
        tries = 2 if replayable(method, headers) and method not in IDEMPOTENT else 1
        for left in range(tries - 1, -1, -1):
            try:
                response = await self._opened().request(
                    method,
                    address,
                    headers=headers,
                    data=body if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE") else None,
                    timeout=limits,
                    allow_redirects=False,
                )
                break
            except aiohttp.ServerDisconnectedError as exc:
                if not left:
                    raise _mapped(exc, origin.authority) from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _mapped(exc, origin.authority) from exc
        try:
            yield SessionResponse(response, origin.authority)
        except BaseException:
            response.close()  # the caller gave up (its client left): the upstream sees us go
            raise
        finally:
            response.release()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _headers(response: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.raw_headers]


def _mapped(exc: BaseException, where: str) -> BaseException:
    """aiohttp's errors as this package's, worded as the raw client words them."""
    if isinstance(exc, UpstreamError) or not isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError):
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamUnreached(f"no connection to {where} in time")
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(f"no answer from {where} in time")
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return UpstreamError(f"the proxy refused the tunnel to {where}: {exc.status} {exc.message}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnreached(f"cannot connect to {where}: {exc}")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return UpstreamError(f"{where} closed the connection before the end of its answer: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamError(f"the answer of {where} is not valid HTTP: {exc.message}")
    return UpstreamError(f"{where}: {exc}")
