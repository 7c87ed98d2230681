"""Dynamic batching: concurrent embedding requests on one model become one engine call.

The first request waits a moment (`wait`) for others to arrive; while a batch runs, newcomers
queue and go together in the next one, so under load the batches grow by themselves and a quiet
server pays only the short wait. Work that cannot be merged (a cross-encoder's pairs) runs in the
same queue, one job at a time, so the engine only ever sees one call at once.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engines.base import Embedder


@dataclass
class _Job:
    future: asyncio.Future[Any]
    texts: list[str] = field(default_factory=list)
    # Set for work that runs alone instead of being merged.
    call: Callable[[], Any] | None = None


class Batcher:
    def __init__(self, engine: Embedder, max_texts: int = 256, wait: float = 0.002):
        self.engine = engine
        self.max_texts = max_texts
        self.wait = wait
        self._queue: list[_Job] = []
        self._worker: asyncio.Task[None] | None = None

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await self._submit(_Job(asyncio.get_running_loop().create_future(), texts=texts))

    async def run(self, call: Callable[[], Any]) -> Any:
        """Run `call` (blocking) in turn with the batches, alone."""
        return await self._submit(_Job(asyncio.get_running_loop().create_future(), call=call))

    async def _submit(self, job: _Job) -> Any:
        self._queue.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await job.future

    def _next(self) -> list[_Job]:
        if self._queue[0].call is not None:
            return [self._queue.pop(0)]
        batch, count = [], 0
        while self._queue and self._queue[0].call is None:
            size = len(self._queue[0].texts)
            if batch and count + size > self.max_texts:
                break
            batch.append(self._queue.pop(0))
            count += size
        return batch

    async def _drain(self) -> None:
        await asyncio.sleep(self.wait)
        while self._queue:
            batch = [job for job in self._next() if not job.future.done()]  # drop cancelled requests
            if not batch:
                continue
            try:
                if batch[0].call is not None:
                    result = await asyncio.to_thread(batch[0].call)
                    _resolve(batch[0].future, result)
                    continue
                texts = [text for job in batch for text in job.texts]
                vectors = await asyncio.to_thread(self.engine.embed, texts)
            except Exception as exc:
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            start = 0
            for job in batch:
                end = start + len(job.texts)
                _resolve(job.future, vectors[start:end])
                start = end


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # a request cancelled while its batch ran
        future.set_result(value)


_BATCHERS: weakref.WeakKeyDictionary[Any, Batcher] = weakref.WeakKeyDictionary()


def _batcher(engine: Any, wait: float) -> Batcher | None:
    """The one batcher of a loaded engine that batches (it goes when the engine is unloaded);
    None for other engines, or when batching is off (`wait` < 0)."""
    if not getattr(engine, "merges_calls", False) or wait < 0:
        return None
    found = _BATCHERS.get(engine)
    if found is None:
        found = _BATCHERS[engine] = Batcher(engine, wait=wait)
    return found


async def embed(engine: Embedder, texts: list[str], wait: float) -> list[list[float]]:
    """Vectors for `texts`: merged with other requests' into one engine call when the engine batches.

    Every route that runs a batching engine goes through here or `call`: the scheduler admits
    many requests at once on such an engine because its batcher hands the engine one call at a time."""
    batcher = _batcher(engine, wait)
    return await (batcher.embed(texts) if batcher else asyncio.to_thread(engine.embed, texts))


async def call(engine: Any, work: Callable[[], Any], wait: float) -> Any:
    """Blocking engine `work` (a rerank, say): in turn with the batches when the engine batches,
    else in a thread."""
    batcher = _batcher(engine, wait)
    return await (batcher.run(work) if batcher else asyncio.to_thread(work))
