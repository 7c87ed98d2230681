"""Run blocking engine work off the event loop, streaming its results back as they come."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
# Seconds the worker waits, at most, for the first item to be taken.
FIRST_ITEM_WAIT = 0.02


async def iterate_in_thread(make: Callable[[threading.Event], Iterator[T]]) -> AsyncIterator[T]:
    """Items of `make(cancel)`, produced in a worker thread (see `emit_in_thread`)."""

    def run(cancel: threading.Event, emit: Callable[[T], None]) -> None:
        for item in make(cancel):
            emit(item)
            if cancel.is_set():
                break

    async with contextlib.aclosing(emit_in_thread(run)) as items:
        async for item in items:
            yield item


async def emit_in_thread(run: Callable[[threading.Event, Callable[[T], None]], None]) -> AsyncIterator[T]:
    """Items a blocking `run(cancel, emit)` hands to `emit` in a worker thread, as they come: for
    work that reports through callbacks (a diffusion pipeline's previews) as well as iterators.

    The worker wakes the event loop only when no wake-up is already on its way: on a machine
    whose cores are all busy decoding, each cross-thread wake-up preempts a llama.cpp thread and
    stalls the whole decode step, so items that arrive together travel together.

    When the consumer stops early (the client went away, or an error), `cancel` is set and this
    waits for the worker to notice before returning, so the engine is idle again by the time the
    scheduler gives its slot to the next request.
    """
    loop = asyncio.get_running_loop()
    items: deque[T] = deque()
    ready = asyncio.Event()
    cancel = threading.Event()
    lock = threading.Lock()
    taken = threading.Event()
    state: dict[str, object] = {"pending": False, "finished": False, "error": None, "emitted": False}

    def wake() -> None:
        with lock:
            state["pending"] = False
        ready.set()

    def notify() -> None:
        with lock:
            if state["pending"]:
                return
            state["pending"] = True
        with contextlib.suppress(RuntimeError):  # the loop closed under us at shutdown
            loop.call_soon_threadsafe(wake)

    def emit(item: T) -> None:
        items.append(item)
        notify()
        if not state["emitted"]:
            state["emitted"] = True
            # Let the loop deliver the first item before the next step takes every core: time
            # to first token is what a streaming client feels most.
            taken.wait(FIRST_ITEM_WAIT)

    def worker() -> None:
        try:
            run(cancel, emit)
        except BaseException as exc:
            state["error"] = exc
        finally:
            state["finished"] = True
            notify()

    future = loop.run_in_executor(None, worker)
    try:
        while True:
            await ready.wait()
            ready.clear()
            while items:
                taken.set()
                yield items.popleft()
            if state["finished"] and not items:
                error = state["error"]
                if isinstance(error, BaseException):
                    raise error
                return
    finally:
        cancel.set()
        with contextlib.suppress(BaseException):
            await asyncio.shield(future)
