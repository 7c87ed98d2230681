"""Run blocking engine work off the event loop, streaming its results back as they come."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


async def iterate_in_thread(make: Callable[[threading.Event], Iterator[T]]) -> AsyncIterator[T]:
    """Items of `make(cancel)`, produced in a worker thread.

    When the consumer stops early (the client went away, or an error), `cancel` is set and this
    waits for the worker to notice before returning, so the engine is idle again by the time the
    scheduler gives its slot to the next request.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[object, BaseException | None]] = asyncio.Queue()
    cancel = threading.Event()

    def put(item: object, error: BaseException | None = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under us at shutdown
            loop.call_soon_threadsafe(queue.put_nowait, (item, error))

    def worker() -> None:
        try:
            for item in make(cancel):
                put(item)
                if cancel.is_set():
                    break
        except BaseException as exc:
            put(None, exc)
        else:
            put(_DONE)

    future = loop.run_in_executor(None, worker)
    try:
        while True:
            item, error = await queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        cancel.set()
        with contextlib.suppress(BaseException):
            await asyncio.shield(future)
