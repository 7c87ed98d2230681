"""Where a terminal command's work is done. `connect` gives the running server when one answers at
`GPUSTACK_HOST` (`over_server.ServerConnection`, over the server's own API) and this process
otherwise (`in_process.InProcess`, over the same core, limits and scheduler the server uses). `gpustack
run` (chat, the REPL and the one-shot kinds), `ps` and `stop` all go through the one `Connection`
interface, so a request is checked and answered the same way in both places.

The interface is async, as the core and the scheduler are; `Terminal` gives it to the synchronous
commands."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from gpustack_cli.config import Settings
from gpustack_cli.core.types import ChatRequest, Event

T = TypeVar("T")


class ClientError(RuntimeError):
    """A request the server or this process refused; the message says why, as the API says it."""


@dataclass
class ImageAsk:
    """An image to make from `prompt`, or an edit of `source` (inpainting where `mask` is
    transparent); `size` is WIDTHxHEIGHT or auto."""

    prompt: str
    size: str = "auto"
    steps: int | None = None
    seed: int | None = None
    source: Path | None = None
    mask: Path | None = None


class Connection(Protocol):
    # Where the work is done, as the REPL says it: the server's URL or "this process".
    where: str

    def chat(self, model: str, chat: ChatRequest) -> AsyncIterator[Event]: ...

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]: ...

    async def rerank(self, model: str, query: str, documents: list[str]) -> list[tuple[int, float]]:
        """(document index, score) pairs, best first."""
        ...

    async def speak(self, model: str, text: str, fmt: str, voice: str | None) -> bytes: ...

    async def transcribe(self, model: str, path: Path, fmt: str) -> str:
        """The transcript as text, json, srt or vtt."""
        ...

    async def image(self, model: str, ask: ImageAsk, on_step: Callable[[int, int], None]) -> bytes:
        """A PNG."""
        ...

    async def ps(self) -> list[dict[str, Any]]:
        """The loaded models, as the server's `GET /api/ps` lists them."""
        ...

    async def stop(self, model: str) -> None: ...

    async def close(self) -> None: ...


def server_answers(settings: Settings) -> bool:
    try:
        return httpx.get(settings.url + "/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def connect(settings: Settings, *, server_only: bool = False) -> Terminal:
    """The running server when one answers, else this process (a ClientError with `server_only`:
    for commands about a server's state)."""
    from gpustack_cli.cli.over_server import ServerConnection

    if server_answers(settings):
        return Terminal(ServerConnection(settings))
    if server_only:
        raise ClientError(f"no gpustack server answers at {settings.url}; start one with `gpustack serve`")
    from gpustack_cli.cli.in_process import InProcess

    return Terminal(InProcess(settings))


class Terminal:
    """A `Connection` for synchronous callers. Its coroutines run on one event loop in a thread of
    its own, kept for the command's life (a model loaded for a REPL's first message is still
    loaded for the next); the main thread only waits for their results. That thread, and every
    thread started from it (the engines' among them), blocks SIGINT, so Ctrl-C always lands in the
    main thread as Python's plain KeyboardInterrupt: the work it interrupts is cancelled, and has
    run its cleanup (its request slot freed) before the interrupt goes on."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.where = connection.where
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="gpustack-terminal", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, work: Awaitable[T]) -> T:
        """What `work` (one of the connection's coroutines) returns. Ctrl-C cancels it and raises
        KeyboardInterrupt here once it has stopped."""
        done = threading.Event()
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            task = self._loop.create_task(_awaited(work))
            task.add_done_callback(lambda _: done.set())
            tasks.append(task)

        self._loop.call_soon_threadsafe(start)
        try:
            done.wait()
        except KeyboardInterrupt:
            self._loop.call_soon_threadsafe(lambda: tasks[0].cancel())  # `start` ran first: calls keep their order
            done.wait()
            raise
        return tasks[0].result()

    def stream(self, events: AsyncIterator[T]) -> Iterator[T]:
        """`events` one by one; leaving early (Ctrl-C, a break) closes them, which ends the answer
        and frees its slot."""
        try:
            while True:
                more, item = self.call(_next(events))
                if not more:
                    return
                yield item
        finally:
            self.call(events.aclose())  # type: ignore[attr-defined]

    def close(self) -> None:
        try:
            self.call(self.connection.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._loop.is_running():
                self._loop.close()


async def _awaited(work: Awaitable[T]) -> T:
    return await work


async def _next(events: AsyncIterator[T]) -> tuple[bool, T | None]:
    try:
        return True, await anext(events)
    except StopAsyncIteration:
        return False, None
