"""The terminal's connection: its synchronous face over the async interface, and the choice of
the server or this process."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from gpustack_cli.cli.connection import ClientError, Terminal, connect
from gpustack_cli.config import Settings


class FakeConnection:
    """Counts what the terminal asks of it; no model."""

    where = "a test"

    def __init__(self) -> None:
        self.closed_streams = 0
        self.closed = False

    async def numbers(self, count: int) -> AsyncIterator[int]:
        try:
            for n in range(count):
                yield n
        finally:
            self.closed_streams += 1

    async def double(self, n: int) -> int:
        return 2 * n

    async def close(self) -> None:
        self.closed = True


def test_a_stream_is_read_in_order_and_closed_when_left_early() -> None:
    fake = FakeConnection()
    with Terminal(fake) as terminal:  # type: ignore[arg-type]
        assert list(terminal.stream(fake.numbers(3))) == [0, 1, 2]
        for n in terminal.stream(fake.numbers(100)):
            if n == 4:
                break
        assert fake.closed_streams == 2  # the one left at 4 too: its answer ends, its slot is freed
        assert terminal.call(fake.double(21)) == 42
    assert fake.closed


def test_commands_about_a_server_say_when_none_answers(tmp_path) -> None:
    settings = Settings(home=tmp_path, server_url="http://127.0.0.1:9")
    with pytest.raises(ClientError, match=re.escape("no gpustack server answers at http://127.0.0.1:9")):
        connect(settings, server_only=True)
    with connect(settings) as terminal:
        assert terminal.where == "this process"
        assert terminal.call(terminal.connection.ps()) == []
        with pytest.raises(ClientError, match="'tiny' is not loaded"):
            terminal.call(terminal.connection.stop("tiny"))
