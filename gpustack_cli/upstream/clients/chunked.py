"""Where a chunked HTTP/1.1 body ends, found without copying or re-framing it.

The proxy passes an upstream's chunked answer on to its client as it came, framing included
(parsing it into data and framing it again cost two copies of every byte in Python). It still
has to know where the body ends, to put the connection back into the pool, and to refuse framing
that is not valid; this reads the framing: the chunk-size lines, the length of each chunk's data
and the trailers, and steps over the data itself.
"""

from __future__ import annotations

import re

# A chunk-size line: hex digits, then optional extensions (RFC 9112, section 7.1.1).
_SIZE = re.compile(rb"([0-9a-fA-F]{1,15})[ \t]*(?:;.*)?")
MAX_LINE = 8192  # longer size or trailer lines are refused, as llhttp and nginx refuse them


class BadChunking(ValueError):
    """The body's chunked framing is not valid."""


class ChunkedEnd:
    """Feed a chunked body's bytes as they arrive; `feed` says where the body ends."""

    def __init__(self) -> None:
        self._data_left = 0  # bytes of the current chunk's data still to step over
        self._line_due = False  # the CRLF that ends a chunk's data is still to come
        self._line: list[bytes] = []  # a line begun in an earlier piece
        self._line_length = 0
        self._trailers = False  # past the last chunk: trailer lines until an empty one

    def feed(self, data: bytes) -> int:
        """Offset in `data` just past the end of the body, or -1 while the body goes on.
        Raises `BadChunking` on framing that is not valid."""
        pos, size = 0, len(data)
        while pos < size:
            if self._data_left:
                step = min(self._data_left, size - pos)
                self._data_left -= step
                pos += step
                continue
            end = data.find(b"\n", pos)
            if end == -1:
                self._line.append(data[pos:])
                self._line_length += size - pos
                if self._line_length > MAX_LINE:
                    raise BadChunking("a chunk-size or trailer line is too long")
                return -1
            if self._line:
                self._line.append(data[pos:end])
                line = b"".join(self._line)
                self._line.clear()
                self._line_length = 0
            else:
                line = data[pos:end]
            pos = end + 1
            if not line.endswith(b"\r"):
                raise BadChunking("a line does not end with CRLF")
            if len(line) > MAX_LINE:
                raise BadChunking("a chunk-size or trailer line is too long")
            line = line[:-1]
            if self._line_due:  # the empty line after a chunk's data
                if line:
                    raise BadChunking("a chunk's data is longer than its size")
                self._line_due = False
            elif self._trailers:
                if not line:
                    return pos
            else:
                match = _SIZE.fullmatch(line)
                if match is None:
                    raise BadChunking(f"not a chunk size: {line[:40]!r}")
                length = int(match.group(1), 16)
                if length:
                    self._data_left, self._line_due = length, True
                else:
                    self._trailers = True
        return -1
