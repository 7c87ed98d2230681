"""The hand-written HTTP/1.1 client of the byte relay (the Generic Proxy and plain OpenAI
forwarding): keep-alive connections per upstream, answers streamed back with back-pressure,
connect and read timeouts, TLS.

Why not aiohttp's client here: on loopback one small request through `aiohttp.ClientSession` costs
several times the CPU of one through this client, and that cost is most of what the proxy adds to
a request (`scripts/bench_proxy.py` measures both in every run); where an answer is parsed anyway,
`session.SessionClient` is used instead. Parsing is httptools (llhttp, the parser of Node.js and of uvicorn);
what is written here is the connection pool, the request head and flow control. Bodies the proxy
passes on are not parsed past their head: one of known length is counted, a chunked one keeps its
framing (`chunked.py` finds its end); and `relay` writes them into the client's connection from
this connection's own callback, as each piece arrives, so that no task wakes up per piece.

Proxies are taken from the environment as aiohttp's and httpx's clients take them
(`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`, lower case too, read through `urllib.request`): an
`http` upstream is asked through its proxy in absolute form, an `https` one through a `CONNECT`
tunnel; a proxy URL's user and password go as `Proxy-Authorization: Basic`. Not done here: HTTP/2,
request bodies streamed (they are read whole first), redirects (an upstream's 3xx goes back to the
client as it is), SOCKS proxies, and cookies (none are kept, by design: one user's cookies must never
ride along on another's request).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

import httptools

from gpustack_cli.upstream.clients import base
from gpustack_cli.upstream.clients.base import (
    CONNECT_TIMEOUT,
    Origin,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreached,
    check_headers,
    replayable,
    split_lines,
)
from gpustack_cli.upstream.clients.chunked import BadChunking, ChunkedEnd

HIGH_WATER = 1 << 20  # stop reading from the upstream while this much waits for a slow client
COALESCE = 256 * 1024  # buffered pieces up to this size in all are passed on joined
MAX_IDLE = 32  # idle keep-alive connections kept per upstream
_BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


class Response:
    """An upstream's answer: status and headers once `request` yields it, the body as it arrives."""

    def __init__(self, connection: _Connection, head_only: bool, timeout: float, keep_framing: bool) -> None:
        self._connection = connection
        self._loop = asyncio.get_running_loop()
        self._head_only = head_only
        self._keep_framing = keep_framing
        self._timeout = timeout
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        self._reason: list[bytes] = []
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self._raw_left = 0  # body bytes still to come of a known length, taken without the parser
        self._framing: ChunkedEnd | None = None  # set when a chunked body is passed on as it came
        self._keep_alive_after = False  # for a body taken without the parser
        self._head_tail = b""  # the last bytes fed while looking for the end of the head
        self._sink: asyncio.WriteTransport | None = None  # where `relay` passes the body on
        self._sunk = 0  # bytes passed on to the sink
        self._last_data = 0.0  # loop time of the last piece passed on, for the read timeout
        self.started = False  # any byte of the answer arrived
        self.unsent = False  # the request never left: its connection was closing as it was sent
        self.head_done = False
        self.done = False
        self.keep_alive = False

    @property
    def framed(self) -> bool:
        """The body comes with its chunked framing, as the upstream sent it."""
        return self._framing is not None

    # -- parser callbacks (httptools calls them by name) --

    def on_status(self, status: bytes) -> None:
        self._reason.append(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._connection.parser
        status = parser.get_status_code()
        if 100 <= status < 200:  # informational (103 Early Hints): the real answer follows
            self._reason.clear()
            self._raw_headers.clear()
            return
        self.status = status
        self.reason = b"".join(self._reason).decode("latin-1")
        self.headers = [(n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in self._raw_headers]
        codings = []
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == "content-length" and value.isascii() and value.isdigit():
                self.content_length = int(value)
            elif lowered == "transfer-encoding":
                codings += [c.strip().lower() for c in value.split(",")]
        self.head_done = True
        self._keep_alive_after = parser.should_keep_alive()
        if self._head_only:  # llhttp would wait for a HEAD answer's Content-Length bytes
            self._finish(keep_alive=False)
        elif status not in (204, 304):  # these have no body, whatever their heads say
            if self.content_length and not codings:
                # A body of known length: after this packet it is passed on as it comes, unparsed.
                self._raw_left = self.content_length
            elif codings == ["chunked"] and self._keep_framing:
                # The parser was fed up to the end of the head (`_feed_head`): the body is passed
                # on framed, as it comes.
                self._framing = ChunkedEnd()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._raw_left:
            self._raw_left -= len(body)
        self._append(body)

    def _append(self, body: bytes) -> None:
        sink = self._sink
        if sink is not None:
            # Straight on to the client, from this callback: no task wakes up per piece.
            self._last_data = self._loop.time()
            if sink.is_closing():  # the client left: `relay` says so
                self._connection.pause()
                self._wake()
                return
            sink.write(body)
            self._sunk += len(body)
            if sink.get_write_buffer_size() > HIGH_WATER:
                self._connection.pause()
                self._wake()
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER:
            self._connection.pause()
        self._wake()

    def _take_raw(self, data: bytes) -> bool:
        """A later packet of a body of known length, kept as it came: the bulk of a large answer
        is neither parsed nor copied here. False when the upstream sent more than it declared."""
        fits = len(data) <= self._raw_left
        if not fits:
            data = data[: self._raw_left]
        self._raw_left -= len(data)
        self._append(data)
        if not self._raw_left:
            self._finish(keep_alive=self._keep_alive_after and fits)
        return fits

    def _take_framed(self, data: bytes) -> bool:
        """A piece of a chunked body passed on framed; False when the upstream sent more than the
        body or broke its framing."""
        assert self._framing is not None
        try:
            end = self._framing.feed(data)
        except BadChunking as exc:
            self._fail(UpstreamError(f"the upstream's chunked answer is not valid: {exc}"))
            return False
        if end == -1:
            self._append(data)
            return True
        self._append(data if end == len(data) else data[:end])
        self._finish(keep_alive=self._keep_alive_after and end == len(data))
        return end == len(data)

    def on_message_complete(self) -> None:
        if self.head_done and not self.done:
            self._finish(keep_alive=self._connection.parser.should_keep_alive())

    # -- connection events --

    def _finish(self, keep_alive: bool) -> None:
        self.done, self.keep_alive = True, keep_alive
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if not self.done:
            self._error, self.done = error, True
        self._wake()

    def _closed(self) -> None:
        """The connection closed: that ends a body without length, and breaks any other answer."""
        if self.done:
            return
        delimited = any(n.lower() in ("content-length", "transfer-encoding") for n, _ in self.headers)
        if self.head_done and not delimited:
            self._finish(keep_alive=False)
        else:
            self._fail(UpstreamError("the upstream closed the connection before its answer was complete"))

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self, relaying: bool = False) -> None:
        """Until woken. Raises `UpstreamTimeout` once nothing came for the read timeout, counted
        from now; or, when relaying (which is not woken per piece), from the last piece passed on."""
        since = self._last_data if relaying else self._loop.time()
        while True:
            self._waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(max(since + self._timeout - self._loop.time(), 0)):
                    await self._waiter
                return
            except TimeoutError:
                if not relaying or self._last_data == since:
                    raise UpstreamTimeout(f"the upstream sent nothing for {self._timeout:g} s") from None
                since = self._last_data
            finally:
                self._waiter = None

    async def _head(self) -> None:
        while not self.head_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    # -- the body, for the caller --

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive; raises `UpstreamError` where the upstream broke off."""
        while True:
            if self._chunks:
                if len(self._chunks) == 1 or self._buffered <= COALESCE:
                    # Small pieces in one: one write on for several reads from the upstream.
                    chunk = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
                    self._chunks.clear()
                else:  # large ones as they came, not copied
                    chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < HIGH_WATER // 2:
                    self._connection.resume()
                yield chunk
                continue
            if self.done:
                if self._error is not None:
                    raise self._error
                return
            await self._wait()

    async def relay(self, sink: asyncio.WriteTransport, drain: Callable[[], Awaitable[None]]) -> int:
        """Pass the body on to `sink` as it arrives, written from the connection's own callback,
        until it ends; `drain` waits until the sink took what it was given. Returns the bytes
        passed on; raises `UpstreamError` where the upstream broke off, `ConnectionResetError`
        where the sink closed."""
        for chunk in self._chunks:
            sink.write(chunk)
            self._sunk += len(chunk)
        self._chunks.clear()
        self._buffered = 0
        self._sink, self._last_data = sink, self._loop.time()
        try:
            while not self.done:  # woken when the body ends or the sink is full
                if sink.is_closing():
                    raise ConnectionResetError("the client closed the connection")
                if self._connection.paused:
                    await drain()
                    self._connection.resume()
                    self._last_data = self._loop.time()  # the upstream waited for us meanwhile
                else:
                    await self._wait(relaying=True)
        finally:
            self._sink = None
        if self._error is not None:
            raise self._error
        return self._sunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def lines(self) -> AsyncIterator[bytes]:
        """The body split at line ends (for server-sent events), without the line ends."""
        return split_lines(self.iter_chunks())


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.parser: httptools.HttpResponseParser | None = None  # a new one per answer, in `send`
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.paused = False

    def send(self, head: bytes, body: bytes, head_only: bool, timeout: float, keep_framing: bool) -> Response:
        assert self.transport is not None
        self.response = Response(self, head_only, timeout, keep_framing)
        # A connection already closing takes no bytes: the request did not leave.
        self.response.unsent = self.closed or self.transport.is_closing()
        self.parser = httptools.HttpResponseParser(self.response)
        if len(body) <= COALESCE:
            self.transport.write(head + body)  # one packet
        else:  # an upload: not copied only to join it to its head
            self.transport.write(head)
            self.transport.write(body)
        return self.response

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response.done:  # bytes nobody asked for: this connection is no good
            self.close()
            return
        response.started = True
        if response._raw_left:
            if not response._take_raw(data):
                self.close()
        elif response.framed:
            if not response._take_framed(data):
                self.close()
        elif response._keep_framing and not response.head_done:
            self._feed_head(response, data)
        else:
            self._feed(response, data)

    def _feed(self, response: Response, data: bytes) -> bool:
        assert self.parser is not None
        try:
            self.parser.feed_data(data)
            return True
        except httptools.HttpParserError as exc:
            response._fail(UpstreamError(f"the upstream's answer is not valid HTTP: {exc}"))
            self.close()
            return False

    def _feed_head(self, response: Response, data: bytes) -> None:
        """Give the parser the bytes up to the end of the head and no further, so that a chunked
        body can be passed on framed from its first byte. llhttp takes only CRLF line ends in a
        head, so the first CRLFCRLF ends it."""
        start = 0
        while not response.head_done:
            end = _head_end(response._head_tail, data, start)
            if end == -1:
                response._head_tail = (response._head_tail + data[max(start, len(data) - 3) :])[-3:]
                self._feed(response, data[start:] if start else data)
                return
            response._head_tail = b""
            if not self._feed(response, data[start:end]):
                return
            start = end  # an informational answer (103) ended there: the next head follows
        if start < len(data):
            self.data_received(data[start:])  # the body's first bytes, taken as the head decided

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response._closed()


def _head_end(tail: bytes, data: bytes, start: int) -> int:
    """Offset just past the first CRLFCRLF in `data[start:]`, which may begin in `tail` (the last
    bytes before `data`); -1 if there is none."""
    if tail:
        across = (tail + data[start : start + 3]).find(b"\r\n\r\n")
        if across != -1:
            return start + across + 4 - len(tail)
    at = data.find(b"\r\n\r\n", start)
    return -1 if at == -1 else at + 4


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authority: str
    # The `Proxy-Authorization` value, when the proxy URL holds a user.
    authorization: str | None

    @staticmethod
    def parse(url: str) -> Proxy:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise UpstreamError(f"only http:// proxies are supported, not {url!r}")
        authorization = None
        if parts.username is not None:
            user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(user.encode()).decode()
        port = parts.port or 80
        return Proxy(parts.hostname, port, f"{parts.hostname}:{port}", authorization)


def proxy_for(origin: Origin, proxies: dict[str, str]) -> Proxy | None:
    """The proxy the environment names for `origin`, unless NO_PROXY exempts its host."""
    url = proxies.get(origin.scheme) or proxies.get("all")
    if not url or proxy_bypass(origin.host):
        return None
    return Proxy.parse(url)


class _Tunnel(asyncio.Protocol):
    """A proxy connection until its answer to CONNECT has come (then TLS runs over it)."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head and not self.answered.done():
            self.answered.set_result(bytes(self.head))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(UpstreamError("the proxy closed the connection"))


class RawClient:
    """Keep-alive connections to upstream servers, one request at a time on each."""

    def __init__(self, read_timeout: float) -> None:
        self.read_timeout = read_timeout
        self._idle: dict[Origin, list[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None
        self._proxies = getproxies()  # the environment's, read once

    async def _connect(self, origin: Origin, proxy: Proxy | None) -> _Connection:
        tls = None
        if origin.scheme == "https":
            # The system's trust store (SSL_CERT_FILE / SSL_CERT_DIR point elsewhere), as any client.
            self._tls = tls = self._tls or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        where = origin.authority if proxy is None else f"{origin.authority} through the proxy {proxy.authority}"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if proxy is None:
                    transport, connection = await loop.create_connection(
                        _Connection, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
                    )
                elif tls is None:  # plain HTTP: the proxy takes each request in absolute form
                    transport, connection = await loop.create_connection(_Connection, proxy.host, proxy.port)
                else:
                    transport, connection = await self._tunnel(origin, proxy, tls)
        except TimeoutError:
            raise UpstreamUnreached(f"no connection to {where} in {CONNECT_TIMEOUT:g} s") from None
        except OSError as exc:  # refused, unreachable, name unknown, TLS failures (ssl.SSLError)
            raise UpstreamUnreached(f"cannot connect to {where}: {exc}") from exc
        connection.transport = transport  # uvloop may call connection_made only after this returns
        return connection

    async def _tunnel(
        self, origin: Origin, proxy: Proxy, tls: ssl.SSLContext
    ) -> tuple[asyncio.BaseTransport, _Connection]:
        """A TLS connection to `origin` through a CONNECT tunnel of `proxy`."""
        loop = asyncio.get_running_loop()
        raw, tunnel = await loop.create_connection(_Tunnel, proxy.host, proxy.port)
        target = f"{origin.host}:{origin.port}"
        lines = [f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"]
        if proxy.authorization:
            lines.append(f"Proxy-Authorization: {proxy.authorization}\r\n")
        raw.write("".join(lines).encode() + b"\r\n")
        try:
            head = await tunnel.answered
        except BaseException:
            raw.close()
            raise
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if status.split(" ")[1:2] != ["200"]:
            raw.close()
            raise UpstreamError(f"the proxy {proxy.authority} refused the tunnel to {target}: {status}")
        connection = _Connection()
        transport = await loop.start_tls(raw, connection, tls, server_hostname=origin.host)
        if transport is None:
            raw.close()
            raise UpstreamError(f"no TLS through the proxy {proxy.authority}")
        connection.connection_made(transport)
        return transport, connection

    def _reuse(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            if now - connection.idle_since > base.IDLE_SECONDS:
                connection.close()
                continue
            connection.reused = True
            return connection
        return None

    def _release(self, origin: Origin, connection: _Connection) -> None:
        response = connection.response
        reusable = response is not None and response.done and response.keep_alive and not response._chunks
        idle = self._idle.setdefault(origin, [])
        if reusable and not connection.closed and len(idle) < MAX_IDLE:
            connection.resume()  # the last piece may have filled the client's buffer: read again
            connection.response = None
            connection.idle_since = time.monotonic()
            idle.append(connection)
        else:
            connection.close()

    @asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        timeout: float | None = None,
        keep_framing: bool = False,
    ) -> AsyncIterator[Response]:
        """Send `method target` to the upstream at `url` (its base path goes before `target`, which
        must be percent-encoded); yields the answer once its head arrived. With `keep_framing`, a
        chunked body comes with its framing as the upstream sent it (`Response.framed` says so):
        for a proxy that passes it on to an HTTP/1.1 client."""
        origin = Origin.parse(url)
        proxy = proxy_for(origin, self._proxies) if self._proxies else None
        path = f"{origin.base_path}{target}"
        lines = [f"{method} {path} HTTP/1.1\r\nHost: {origin.authority}\r\n"]
        if proxy is not None and origin.scheme == "http":  # absolute form, for the proxy to follow
            lines[0] = f"{method} http://{origin.authority}{path} HTTP/1.1\r\nHost: {origin.authority}\r\n"
            if proxy.authorization:
                lines.append(f"Proxy-Authorization: {proxy.authorization}\r\n")
        headers = list(headers)
        check_headers(headers)
        lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        if body or method not in _BODYLESS:
            lines.append(f"Content-Length: {len(body)}\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape") + b"\r\n"
        wait = self.read_timeout if timeout is None else timeout
        again = replayable(method, headers)
        while True:
            connection = self._reuse(origin) or await self._connect(origin, proxy)
            response = connection.send(head, body, method == "HEAD", wait, keep_framing)
            try:
                await response._head()
                break
            except UpstreamTimeout:
                connection.close()
                raise
            except UpstreamError:
                connection.close()
                # A kept-alive connection the upstream closed while it was idle (its keep-alive
                # timeout ran out as we sent): it answered nothing. Sent again on a new one when
                # that cannot do a thing twice: the request never left, or asks for nothing twice
                # (an idempotent method, or an idempotency key), as Go's net/http and urllib3 do.
                if not (connection.reused and not response.started and (response.unsent or again)):
                    raise
            except BaseException:
                connection.close()
                raise
        try:
            yield response
        except BaseException:
            connection.close()  # the caller gave up (its client left): the upstream sees us go
            raise
        finally:
            self._release(origin, connection)

    async def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
