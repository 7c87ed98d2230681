"""Where a chunked body ends, as the proxy finds it to pass bodies on framed."""

from __future__ import annotations

import random

import httptools
import pytest

from gpustack_cli.upstream.clients.chunked import MAX_LINE, BadChunking, ChunkedEnd

BODY = b"5\r\nhello\r\n1a;name=value\r\n" + b"x" * 26 + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"


def end_in_pieces(data: bytes, cuts: list[int]) -> int:
    """Feed `data` cut at `cuts`; the end's offset in `data`, or -1."""
    framing, start = ChunkedEnd(), 0
    for cut in [*cuts, len(data)]:
        end = framing.feed(data[start:cut])
        if end != -1:
            return start + end
        start = cut
    return -1


def test_the_end_is_found_however_the_body_is_cut() -> None:
    tail = b"HTTP/1.1 200 OK\r\n"  # the next answer's bytes, which are no part of this body
    for cut in range(len(BODY) + 1):
        assert end_in_pieces(BODY + tail, [cut]) == len(BODY), cut
    for size in (1, 2, 3, 7):  # in many small pieces
        assert end_in_pieces(BODY, list(range(size, len(BODY), size))) == len(BODY)
    assert end_in_pieces(b"0\r\n\r\n", []) == 5  # an empty body


def test_an_unfinished_body_goes_on() -> None:
    for cut in range(len(BODY)):
        assert end_in_pieces(BODY[:cut], []) == -1


@pytest.mark.parametrize(
    "bad",
    [
        b"zz\r\nhello\r\n",  # not hex
        b"0x5\r\nhello\r\n",  # int() would take it; the grammar does not
        b"1_0\r\n",
        b"5\r\nhello!\r\n",  # data longer than its size
        b"5\nhello\r\n",  # a bare LF
        b"5\r\nhello\r\n0\r\nX: 1\n\r\n",
        b"1" * 16 + b"\r\n",  # a size no one sends
    ],
)
def test_bad_framing_is_refused(bad: bytes) -> None:
    with pytest.raises(BadChunking):
        end_in_pieces(bad, [])


def test_an_endless_line_is_refused_before_it_is_whole() -> None:
    framing = ChunkedEnd()
    with pytest.raises(BadChunking):
        for _ in range(MAX_LINE):
            framing.feed(b"5;" + b"e" * 64)


def _llhttp_end(body: bytes) -> int | None:
    """Where llhttp (the parser of the rest of the client) ends the body: None if it refuses it."""
    done = []

    class Callbacks:
        def on_message_complete(self) -> None:
            done.append(True)

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for at in range(len(body)):
        try:
            parser.feed_data(body[at : at + 1])
        except httptools.HttpParserError:
            return None
        if done:
            return at + 1
    return -1


def test_agrees_with_llhttp_wherever_llhttp_takes_the_body() -> None:
    """Random bodies, some with bytes changed, fed in random pieces: wherever llhttp takes one
    (whole or not yet), the end is found at the same byte. (Where llhttp refuses one, this may be more lenient, as RFC
    9112 is with whitespace before extensions: the client's own parser judges those bytes.)"""
    rng = random.Random(7)
    checked = 0
    for _ in range(3000):
        body = b""
        for _ in range(rng.randint(0, 4)):
            size = rng.randint(1, 40)
            extension = rng.choice([b"", b";a=b", b";x"])
            body += b"%x%s\r\n%s\r\n" % (size, extension, rng.randbytes(size))
        body += b"0\r\n" + rng.choice([b"", b"X-T: 1\r\n"]) + b"\r\n" + rng.choice([b"", b"next"])
        if rng.random() < 0.7:
            changed = bytearray(body)
            for _ in range(rng.randint(1, 3)):
                changed[rng.randrange(len(changed))] = rng.choice(b"\r\n0123456789abcdefxyz; =")
            body = bytes(changed)
        expected = _llhttp_end(body)
        if expected is not None:
            checked += 1
            cuts = sorted(rng.sample(range(len(body)), min(len(body), rng.randint(0, 3))))
            assert end_in_pieces(body, cuts) == expected, (body, cuts)
    assert checked > 1000
