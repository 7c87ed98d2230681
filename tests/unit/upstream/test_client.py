"""The upstream HTTP clients against real loopback servers (the tests of the interface against both
clients, the relay's own against the raw one): a TCP server that sends exactly the bytes
a test scripts (for what a well-behaved server will not do on demand), and aiohttp over TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from gpustack_cli.upstream.clients import base
from gpustack_cli.upstream.clients.base import HttpClient, UpstreamError, UpstreamTimeout
from gpustack_cli.upstream.clients.raw import HIGH_WATER, RawClient
from gpustack_cli.upstream.clients.session import SessionClient

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class ScriptedServer:
    """Answers every connection with `script`; counts connections and keeps each request head."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.heads: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    async def head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head


@pytest.fixture(params=["raw", "session"])
def make_client(request: pytest.FixtureRequest) -> Callable[[float], HttpClient]:
    """Each client of the interface in turn: the tests that take this run against both."""
    kind = {"raw": RawClient, "session": SessionClient}[request.param]
    return lambda read_timeout: kind(read_timeout=read_timeout)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[tuple[ScriptedServer, str]]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> tuple[ScriptedServer, str]:
        scripted = ScriptedServer(script)
        server = await asyncio.start_server(scripted._serve, "127.0.0.1", 0)
        servers.append(server)
        return scripted, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()


async def test_keep_alive_and_request_head(scripted, make_client) -> None:
    async def answer_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            head = await server.head(reader)
            if b"Content-Length: 4" in head:
                await reader.readexactly(4)
            writer.write(OK)

    server, url = await scripted(answer_twice)
    client = make_client(5)
    async with client.request("GET", url + "/base", "/a%20b?q=1", [("X-Custom", "kept")]) as answer:
        assert (answer.status, answer.reason, await answer.read()) == (200, "OK", b"ok")
    async with client.request("POST", url + "/base", "/c", [], b"body") as answer:
        assert await answer.read() == b"ok"
    assert server.connections == 1  # the second request rode the first one's connection
    first, second = server.heads
    assert first.startswith(b"GET /base/a%20b?q=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"X-Custom: kept\r\n" in first and b"Content-Length" not in first  # a bodyless GET has none
    assert second.startswith(b"POST /base/c HTTP/1.1\r\n") and b"Content-Length: 4\r\n" in second
    await client.close()


async def test_a_long_idle_connection_is_not_used_again(scripted, make_client, monkeypatch: pytest.MonkeyPatch) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.head(reader)
            writer.write(OK)

    monkeypatch.setattr(base, "IDLE_SECONDS", 0.2)
    server, url = await scripted(answer)
    client = make_client(5)
    for pause in (0, 0.5):
        await asyncio.sleep(pause)
        async with client.request("GET", url, "/") as answer:
            assert await answer.read() == b"ok"
    assert server.connections == 2  # a load balancer may have dropped the idle one silently
    await client.close()


async def answer_once(server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await server.head(reader)
    writer.write(OK)
    await server.head(reader)  # then closed unanswered, as when a keep-alive timeout ends it


@pytest.mark.parametrize(
    ("method", "headers"), [("GET", []), ("PUT", []), ("DELETE", []), ("POST", [("Idempotency-Key", "k1")])]
)
async def test_a_request_that_may_be_repeated_is_sent_again_on_a_new_connection(
    scripted, make_client, method, headers
) -> None:
    server, url = await scripted(lambda reader, writer: answer_once(server, reader, writer))
    client = make_client(5)
    for _ in range(3):
        async with client.request(method, url, "/", headers, b"{}") as answer:
            assert await answer.read() == b"ok"
    assert server.connections == 3 and len(server.heads) == 5  # twice sent again on a new connection
    await client.close()


async def test_a_post_that_reached_a_closing_connection_is_not_sent_twice(scripted, make_client) -> None:
    """The upstream read the request before it closed the connection: it may have acted on it, so
    a POST is not sent again (a chat would be made twice); the caller gets the error."""
    server, url = await scripted(lambda reader, writer: answer_once(server, reader, writer))
    client = make_client(5)
    async with client.request("POST", url, "/", [], b"{}") as answer:
        assert await answer.read() == b"ok"
    with pytest.raises(UpstreamError):
        async with client.request("POST", url, "/", [], b"{}"):
            pass
    assert server.connections == 1 and len(server.heads) == 2  # sent once, never again
    await client.close()


async def test_bodies_without_length_informational_answers_and_head(scripted, make_client) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await server.head(reader)
            if head.startswith(b"HEAD"):  # a length, and no body, as HEAD answers have none
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            elif b"/hints" in head:
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK)
            else:  # the body ends where the connection does
                writer.write(b"HTTP/1.0 200 OK\r\nX-Repeated: 1\r\nX-Repeated: 2\r\n\r\nuntil the end")
                await writer.drain()
                return

    server, url = await scripted(answer)
    client = make_client(5)
    async with client.request("GET", url, "/") as answer:
        assert answer.content_length is None and await answer.read() == b"until the end"
        assert [v for k, v in answer.headers if k == "X-Repeated"] == ["1", "2"]
    async with client.request("GET", url, "/hints") as answer:
        assert (answer.status, await answer.read()) == (200, b"ok")
    async with asyncio.timeout(5), client.request("HEAD", url, "/") as answer:
        assert answer.content_length == 1000 and await answer.read() == b""
    await client.close()


async def test_lines_across_chunks(scripted, make_client) -> None:
    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"data: one\r\n", b"\r\ndata: t", b"w", b"o\n\ndata: ", b"x" * 100_000, b"\nlast"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)  # each piece in a read of its own
        writer.write(b"0\r\n\r\n")

    server, url = await scripted(sse)
    client = make_client(5)
    async with client.request("GET", url, "/") as answer:
        lines = [line async for line in answer.lines()]
    assert lines == [b"data: one", b"", b"data: two", b"", b"data: " + b"x" * 100_000, b"last"]
    await client.close()


async def test_failures(scripted, make_client) -> None:
    async def misbehave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await server.head(reader)
        if b"/garbage" in head:
            writer.write(b"SPEAKING NONSENSE\r\n\r\n")
        elif b"/cut" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        elif b"/silent" in head:
            await asyncio.sleep(10)
        await writer.drain()

    server, url = await scripted(misbehave)
    client = make_client(0.5)
    with pytest.raises(UpstreamError, match="not valid HTTP"):
        async with client.request("GET", url, "/garbage"):
            pass
    received = []
    with pytest.raises(UpstreamError, match="closed the connection"):
        async with client.request("GET", url, "/cut") as answer:
            async for chunk in answer.iter_chunks():
                received.append(chunk)
    assert b"".join(received) == b"only this"  # what came is passed on before the error
    with pytest.raises(UpstreamTimeout):
        async with client.request("GET", url, "/silent"):
            pass
    with pytest.raises(UpstreamError, match="line break"):
        async with client.request("GET", url, "/", [("X-Injected", "a\r\nEvil: 1")]):
            pass
    with pytest.raises(UpstreamError, match="cannot connect"):
        async with client.request("GET", "http://127.0.0.1:1", "/"):
            pass
    await client.close()


async def test_a_body_longer_than_declared_is_cut_and_its_connection_dropped(scripted, make_client) -> None:
    async def overflow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)  # the body in a later packet than the head
            writer.write(b"helloEXTRA")

    server, url = await scripted(overflow)
    client = make_client(5)
    for _ in range(2):
        async with client.request("GET", url, "/") as answer:
            assert await answer.read() == b"hello"
    assert server.connections == 2
    await client.close()


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
FRAMED = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"


async def test_a_chunked_body_passed_on_framed(scripted) -> None:
    """With keep_framing, the body comes as the upstream framed it, however its packets fall (the
    head's end split across two, after an informational answer), and the connection is kept."""
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    # (bytes before the head, where the answer is cut in two packets, counted from the head)
    cases = [(before, cut) for before in (b"", hints) for cut in (-2, -1, 0, 7)]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for before, cut in cases:
            await server.head(reader)
            data, at = before + CHUNKED_HEAD + FRAMED, len(before) + len(CHUNKED_HEAD) + cut
            for piece in (data[:at], data[at:]):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.02)  # in packets of their own

    server, url = await scripted(answer)
    client = RawClient(read_timeout=5)
    for _ in cases:
        async with client.request("GET", url, "/", keep_framing=True) as answer:
            assert answer.framed and await answer.read() == FRAMED
    assert server.connections == 1
    await client.close()


async def test_a_chunked_body_with_another_coding_is_decoded(scripted) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.head(reader)
        # A coding besides chunked: the client did not ask for it, so the body is decoded here.
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity, chunked\r\n\r\n" + FRAMED)

    server, url = await scripted(answer)
    client = RawClient(read_timeout=5)
    async with client.request("GET", url, "/", keep_framing=True) as answer:
        assert not answer.framed and await answer.read() == b"hello world"
    await client.close()


async def test_a_framed_body_that_breaks_its_framing(scripted) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await server.head(reader)
            writer.write(CHUNKED_HEAD)
            await writer.drain()
            await asyncio.sleep(0.02)
            if b"/bad" in head:
                writer.write(b"5\r\nhello\r\n")
                await writer.drain()
                await asyncio.sleep(0.02)
                writer.write(b"not a size\r\n")
            else:  # more than the body: the connection cannot be trusted with another answer
                writer.write(FRAMED + b"EXTRA")

    server, url = await scripted(answer)
    client = RawClient(read_timeout=5)
    received = []
    with pytest.raises(UpstreamError, match="chunked answer is not valid"):
        async with client.request("GET", url, "/bad", keep_framing=True) as answer:
            async for chunk in answer.iter_chunks():
                received.append(chunk)
    assert b"".join(received) == b"5\r\nhello\r\n"  # not the bad line
    for _ in range(2):
        async with client.request("GET", url, "/extra", keep_framing=True) as answer:
            assert await answer.read() == FRAMED
    assert server.connections == 3
    await client.close()


def flooding(size: int) -> Script:
    """Answers every request on a connection with `size` bytes, sent as fast as they are taken."""

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            for _ in range(size // 65536):
                writer.write(b"x" * 65536)
                await writer.drain()

    return flood


async def test_a_slow_reader_pauses_the_upstream(scripted) -> None:
    size = 16 * HIGH_WATER
    _, url = await scripted(flooding(size))
    client = RawClient(read_timeout=5)
    received = 0
    async with client.request("GET", url, "/") as answer:
        await asyncio.sleep(0.5)  # the upstream sends as fast as it can meanwhile
        assert answer._buffered <= HIGH_WATER + 256 * 1024  # one read past the mark at most
        async for chunk in answer.iter_chunks():
            received += len(chunk)
    assert received == size
    await client.close()


@pytest.fixture
async def sink() -> AsyncIterator[tuple[asyncio.StreamWriter, asyncio.StreamReader]]:
    """A loopback connection for `relay` to write into (its writer) and its far end, which reads
    only when a test does (as a slow client)."""
    near, far = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=near)
    far_reader, far_writer = await asyncio.open_connection(sock=far)
    yield writer, far_reader
    writer.close()
    far_writer.close()


async def test_a_relay_to_a_slow_client_pauses_the_upstream(scripted, sink) -> None:
    size = 16 * HIGH_WATER
    server, url = await scripted(flooding(size))
    writer, far_end = sink
    client = RawClient(read_timeout=5)
    for _ in range(2):
        async with client.request("GET", url, "/") as answer:
            relay = asyncio.create_task(answer.relay(writer.transport, writer.drain))
            await asyncio.sleep(0.5)  # the upstream sends as fast as it can; nobody reads
            assert answer._connection.paused and not relay.done()
            assert writer.transport.get_write_buffer_size() <= HIGH_WATER + 256 * 1024
            assert await far_end.readexactly(size) == b"x" * size
            assert await relay == size
    assert server.connections == 1  # a body relayed to its end leaves the connection reusable
    await client.close()


class FullSink:
    """A client's transport that always reports a full buffer, so that every piece relayed to it
    pauses the upstream (the last one included), and that keeps what it is given."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return HIGH_WATER + 1


async def drained() -> None:
    """The client took all it was given."""


async def test_a_connection_paused_when_its_body_ended_is_reused(scripted) -> None:
    server, url = await scripted(flooding(4 * 65536))
    client = RawClient(read_timeout=2)
    for _ in range(3):
        sink = FullSink()
        async with client.request("GET", url, "/") as answer:
            assert await answer.relay(sink, drained) == len(sink.data) == 4 * 65536  # type: ignore[arg-type]
            assert answer._connection.paused  # the last piece filled the sink too
    assert server.connections == 1  # and each next answer was read on the same connection
    await client.close()


async def test_a_relay_times_out_only_when_the_upstream_stalls(scripted, sink) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stall = b"/stall" in await server.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
        for i in range(8):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(30 if stall and i == 3 else 0.2)

    server, url = await scripted(trickle)
    writer, far_end = sink
    client = RawClient(read_timeout=0.6)
    async with client.request("GET", url, "/") as answer:  # 1.6 s in all, longer than the timeout
        assert await answer.relay(writer.transport, writer.drain) == 8
    assert await far_end.readexactly(8) == b"x" * 8
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout):
        async with client.request("GET", url, "/stall") as answer:
            await answer.relay(writer.transport, writer.drain)
    assert 0.6 + 0.6 <= loop.time() - started < 3  # four pieces 0.2 s apart, then the timeout
    await client.close()


async def test_a_relay_stops_when_its_client_leaves(scripted, sink) -> None:
    _, url = await scripted(flooding(16 * HIGH_WATER))
    writer, far_end = sink
    client = RawClient(read_timeout=5)
    with pytest.raises(ConnectionResetError):
        async with client.request("GET", url, "/") as answer:
            relay = asyncio.create_task(answer.relay(writer.transport, writer.drain))
            await far_end.readexactly(65536)
            writer.transport.abort()  # as aiohttp's transport is when its client goes away
            await relay
    assert answer._connection.closed  # the upstream sees us go
    await client.close()


async def tls_hello_server(monkeypatch: pytest.MonkeyPatch, tmp_path) -> TestServer:
    """An https server on loopback, with a certificate of a CA the system trust store is made to
    hold, answering any GET with its scheme and path."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # the system trust store's override

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"scheme": request.scheme, "path": request.path_qs})

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    server = TestServer(app, scheme="https")
    await server.start_server(ssl=context)
    return server


async def test_tls_upstream(make_client, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    server = await tls_hello_server(monkeypatch, tmp_path)
    client = make_client(5)
    try:
        async with client.request("GET", f"https://127.0.0.1:{server.port}", "/x?y=1") as answer:
            assert await answer.read() == b'{"scheme": "https", "path": "/x?y=1"}'
        untrusted = make_client(5)
        monkeypatch.delenv("SSL_CERT_FILE")
        with pytest.raises(UpstreamError, match="CERTIFICATE_VERIFY_FAILED"):
            async with untrusted.request("GET", f"https://127.0.0.1:{server.port}", "/"):
                pass
    finally:
        await client.close()
        await server.close()


class ForwardProxy:
    """An HTTP proxy on loopback: absolute-form requests and CONNECT tunnels, piped to their
    target; keeps each request head it was sent, and refuses tunnels when told to."""

    def __init__(self, refuse: bool = False) -> None:
        self.heads: list[bytes] = []
        self.refuse = refuse
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://user:p%40ss@127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
            if method == "CONNECT":
                if self.refuse:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                    return
                host, port = target.rsplit(":", 1)
                upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                authority = target.split("/")[2]
                host, port = authority.rsplit(":", 1)
                upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
                upstream_writer.write(head)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def test_http_through_the_environments_proxy(scripted, make_client, monkeypatch: pytest.MonkeyPatch) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.head(reader)
        writer.write(OK)
        await writer.drain()

    upstream, url = await scripted(answer)
    proxy = ForwardProxy()
    monkeypatch.setenv("HTTP_PROXY", await proxy.start())
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = make_client(5)
    try:
        async with client.request("GET", url, "/v1/models?x=1") as got:
            assert await got.read() == b"ok"
        # The proxy was asked in absolute form, with the proxy URL's user as Basic credentials.
        assert proxy.heads[0].startswith(f"GET {url}/v1/models?x=1 HTTP/1.1\r\n".encode())
        assert b"Proxy-Authorization: Basic dXNlcjpwQHNz\r\n" in proxy.heads[0]  # user:p@ss
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = make_client(5)
        async with direct.request("GET", url, "/direct") as got:
            assert await got.read() == b"ok"
        assert len(proxy.heads) == 1 and upstream.heads[-1].startswith(b"GET /direct HTTP/1.1\r\n")
        await direct.close()
    finally:
        await client.close()
        proxy.close()


async def test_https_through_a_connect_tunnel(make_client, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    server = await tls_hello_server(monkeypatch, tmp_path)
    proxy, refusing = ForwardProxy(), ForwardProxy(refuse=True)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", await proxy.start())
    client = make_client(5)
    try:
        for _ in range(2):  # the second request reuses the tunnelled connection
            async with client.request("GET", f"https://127.0.0.1:{server.port}", "/x?y=1") as answer:
                assert await answer.read() == b'{"scheme": "https", "path": "/x?y=1"}'
        assert len(proxy.heads) == 1 and proxy.heads[0].startswith(f"CONNECT 127.0.0.1:{server.port} ".encode())
        assert b"Proxy-Authorization: Basic " in proxy.heads[0]
        monkeypatch.setenv("HTTPS_PROXY", await refusing.start())
        refused = make_client(5)
        with pytest.raises(UpstreamError, match=r"refused the tunnel.*407"):
            async with refused.request("GET", f"https://127.0.0.1:{server.port}", "/"):
                pass
        await refused.close()
    finally:
        await client.close()
        proxy.close()
        refusing.close()
        await server.close()
