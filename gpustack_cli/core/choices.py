"""A request's n choices: each its own stream of the core's events, run together and merged into
one stream of `(index, event)` as they come (OpenAI interleaves the choices of a stream so), or
collected into one `Answer` each.

Choices of a request with a seed run one after another, so that each is what the same request for
one choice would give (a batch of several rounds its arithmetic differently from a batch of one).
A request of more choices than the model has slots runs at most all but one of them at a time:
each next one starts as one ends, behind whatever other requests came meanwhile, and a slot stays
for those, so a large request shares the model instead of holding it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace

from gpustack_cli.core.prompts import Prepared
from gpustack_cli.core.streams import collect
from gpustack_cli.core.types import Answer, Event

Choice = Callable[[], AsyncIterator[Event]]
_END = object()


def seeded(prepared: Prepared, index: int) -> Prepared:
    """Choice `index` of n: its own seed, so the n choices differ but stay reproducible."""
    if index == 0 or prepared.sampling.seed is None:
        return prepared
    return replace(prepared, sampling=replace(prepared.sampling, seed=prepared.sampling.seed + index))


async def merged(choices: list[Choice], sequential: bool, slots: int) -> AsyncIterator[tuple[int, Event]]:
    """The events of every choice, each with its index, in the order they come (one choice, or
    choices one after another, are read where they are made: no task between them and the reader)."""
    if sequential or len(choices) == 1:
        for index, make in enumerate(choices):
            async with contextlib.aclosing(make()) as events:
                async for event in events:
                    yield index, event
        return
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
    gate = asyncio.Semaphore(slots if len(choices) <= slots else max(1, slots - 1))

    async def pump(index: int, make: Choice) -> None:
        try:
            async with gate, contextlib.aclosing(make()) as events:
                async for event in events:
                    await queue.put((index, event))
        except Exception as exc:  # handed to the reader, who raises it
            await queue.put((index, exc))
        await queue.put((index, _END))

    tasks = [asyncio.create_task(pump(index, make)) for index, make in enumerate(choices)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item  # type: ignore[misc]
    finally:  # the reader stopped (an error, or its client left): the other choices stop too
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def collected(choices: list[Choice], sequential: bool, slots: int) -> list[Answer]:
    """Each choice's whole answer, in index order."""
    events: list[list[Event]] = [[] for _ in choices]
    async with contextlib.aclosing(merged(choices, sequential, slots)) as stream:
        async for index, event in stream:
            events[index].append(event)
    return [await collect(_replay(found)) for found in events]


async def _replay(events: Iterable[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event
