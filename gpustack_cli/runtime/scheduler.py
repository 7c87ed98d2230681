"""The one place that decides which models are loaded, which requests run and which wait.

- A model is loaded on its first request (or at start with `--preload`), off the event loop.
- Beyond `max_loaded_models`, the least recently used idle model is unloaded to make room; when
  every loaded model is busy, the load waits for one to become idle. A load that finds too little
  memory (OutOfMemory) unloads the least recently used idle models one at a time and tries again.
  A model served elsewhere (`elsewhere(name)`: a remote model's upstream pool) holds nothing here:
  it takes no place and is never unloaded for another.
- Each model runs at most `min(parallel, engine.max_concurrency)` requests at once (engines that
  set `admits_all` take `max_concurrency`); up to
  `max_queue` more wait; the next one gets `QueueFull` (a 503 on the wire).
- After its last request a model stays for `keep_alive` seconds (-1: forever, 0: unload at once).
- A request whose client goes away is cancelled by aiohttp and its slot is freed by `use()`.
- An engine that says it is `broken` (a model's child process that ended) is unloaded once its
  requests are done; the next request loads the model again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from engines.base import Engine, OutOfMemory

log = logging.getLogger("gpustack.scheduler")

Loader = Callable[[str], Engine]


class SchedulerError(Exception):
    pass


class QueueFull(SchedulerError):
    def __init__(self, name: str, limit: int):
        super().__init__(f"model '{name}' is busy: {limit} requests are already waiting; try again later")


@dataclass(eq=False)
class Runner:
    name: str
    # Served elsewhere: takes no place among the loaded models.
    elsewhere: bool = False
    engine: Engine | None = None
    loading: asyncio.Task[Engine] | None = None
    slots: asyncio.Semaphore | None = None
    concurrency: int = 0
    active: int = 0
    waiting: int = 0
    loaded_at: float = 0.0
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float | None = None
    timer: asyncio.TimerHandle | None = None
    timer_at: float = 0.0
    unload_when_idle: bool = False

    @property
    def idle(self) -> bool:
        return self.active == 0 and self.waiting == 0

    def cancel_timer(self, keep_expiry: bool = False) -> None:
        if self.timer:
            self.timer.cancel()
        self.timer = None
        if not keep_expiry:
            self.expires_at = None


@dataclass(frozen=True)
class LoadedModel:
    name: str
    active: int
    waiting: int
    concurrency: int
    loaded_for: float
    # Seconds until the model is unloaded; None while busy or when kept forever.
    expires_in: float | None
    # Tokens of context per request slot, for engines that have one (llama.cpp), and where that
    # came from: the model's settings, the server's, or the free memory (none was given).
    context: int | None = None
    context_from: str | None = None
    # How llama.cpp keeps its KV cache: flash attention and the K and V types.
    kv_cache: dict[str, str] | None = None
    # Where a llama.cpp model is: per device (CPU, a GPU, an RPC server's HOST:PORT), its layers and
    # the bytes of its weights, KV cache and compute buffers; and the RPC servers it uses.
    placement: list[dict[str, Any]] | None = None
    rpc: list[str] | None = None
    # Speculative drafting: how (kind, most and fewest tokens a draft holds) and what it did.
    draft: dict[str, Any] | None = None


def _kv_cache(engine: Engine) -> dict[str, str] | None:
    found = getattr(engine, "kv_cache", None)
    return None if found is None else dict(found if isinstance(found, dict) else vars(found))


def placed_bytes(place: dict[str, Any]) -> int:
    """The bytes one device holds of a loaded model (an entry of `LoadedModel.placement`)."""
    return sum(place.get(k, 0) for k in ("weights_bytes", "kv_cache_bytes", "compute_bytes"))


def _placement(engine: Engine) -> list[dict[str, Any]] | None:
    found = getattr(engine, "placement", None)
    return None if found is None else [p if isinstance(p, dict) else dict(vars(p)) for p in found]


def _draft(engine: Engine) -> dict[str, Any] | None:
    drafting = getattr(engine, "drafting", None)
    if drafting is None:
        return None
    stats = engine.decode_stats()
    return {
        "kind": "ngram",
        "max_tokens": drafting.max_tokens,
        "min_tokens": drafting.min_tokens,
        "drafted_tokens": stats.drafted_tokens,
        "accepted_tokens": stats.accepted_tokens,
    }


def _broken(engine: Engine | None) -> bool:
    return bool(getattr(engine, "broken", False))


class Scheduler:
    def __init__(
        self,
        loader: Loader,
        *,
        max_loaded_models: int = 3,
        parallel: int = 4,
        max_queue: int = 64,
        keep_alive: float = 300.0,
        elsewhere: Callable[[str], bool] = lambda name: False,
    ):
        self._loader = loader
        self._elsewhere = elsewhere
        self.max_loaded_models = max_loaded_models
        self.parallel = parallel
        self.max_queue = max_queue
        self.keep_alive = keep_alive
        self._runners: dict[str, Runner] = {}
        self._changed = asyncio.Condition()
        self._expiring: set[asyncio.Task[None]] = set()
        self._waiting_for_room = 0  # loads waiting on `_changed` for a model to become idle

    # -- what the API calls ------------------------------------------------------------------

    @asynccontextmanager
    async def use(self, name: str, keep_alive: float | None = None) -> AsyncIterator[Engine]:
        """Hold one request slot of model `name` (loading it if need be) for the block's duration."""
        runner = self._runners.get(name)
        if runner is not None and runner.idle and _broken(runner.engine):
            log.warning("model %s stopped; loading it again", name)
            await self._unload(runner)
            runner = self._runners.get(name)
        if runner is None:
            runner = self._runners[name] = Runner(name, elsewhere=self._elsewhere(name))
        if runner.slots is not None and runner.active >= runner.concurrency and runner.waiting >= self.max_queue:
            raise QueueFull(name, self.max_queue)
        runner.waiting += 1
        runner.expires_at = None  # busy; its timer, if one is set, finds that and lets it be
        runner.unload_when_idle = False
        try:
            engine = await self._ensure_loaded(runner)
            slots = runner.slots
            assert slots is not None
            await slots.acquire()
        except BaseException:
            runner.waiting -= 1
            await self._after_use(runner, keep_alive)
            raise
        runner.waiting -= 1
        runner.active += 1
        try:
            yield engine
        finally:
            runner.active -= 1
            slots.release()
            runner.last_used = time.monotonic()
            if _broken(engine):
                runner.unload_when_idle = True
            await self._after_use(runner, keep_alive)

    async def preload(self, name: str) -> None:
        async with self.use(name):
            pass

    async def unload(self, name: str) -> bool:
        """Unload a model now, or as soon as its running requests finish. False if not loaded."""
        runner = self._runners.get(name)
        if runner is None or (runner.engine is None and runner.loading is None):
            return False
        if runner.idle:
            await self._unload(runner)
        else:
            runner.unload_when_idle = True
        return True

    def loaded(self) -> list[LoadedModel]:
        now = time.monotonic()
        return [
            LoadedModel(
                name=r.name,
                active=r.active,
                waiting=r.waiting,
                concurrency=r.concurrency,
                loaded_for=now - r.loaded_at,
                expires_in=None if r.expires_at is None else max(0.0, r.expires_at - now),
                context=getattr(r.engine, "n_ctx", None),
                context_from=getattr(r.engine, "context_from", None),
                kv_cache=_kv_cache(r.engine),
                placement=_placement(r.engine),
                rpc=list(getattr(r.engine, "rpc", ())) or None,
                draft=_draft(r.engine),
            )
            for r in self._runners.values()
            if r.engine is not None
        ]

    def engines(self) -> list[tuple[str, Engine]]:
        """The loaded engines by model name."""
        return [(r.name, r.engine) for r in self._runners.values() if r.engine is not None]

    def is_loaded(self, name: str) -> bool:
        runner = self._runners.get(name)
        return runner is not None and runner.engine is not None

    async def close(self) -> None:
        for runner in list(self._runners.values()):
            if runner.loading:
                runner.loading.cancel()
            await self._unload(runner)

    # -- internals -------------------------------------------------------------------------

    async def _ensure_loaded(self, runner: Runner) -> Engine:
        while runner.engine is None:
            if runner.loading is None:
                await self._make_room(runner)
                if runner.engine is not None or runner.loading is not None:
                    continue
                runner.loading = asyncio.create_task(self._load(runner))
            # Shielded: one cancelled waiter must not cancel the load the others wait on.
            await asyncio.shield(runner.loading)
        return runner.engine

    async def _load(self, runner: Runner) -> Engine:
        started = time.monotonic()
        log.info("loading model %s", runner.name)
        try:
            while True:
                try:
                    engine = await asyncio.to_thread(self._loader, runner.name)
                    break
                except OutOfMemory:
                    # Memory, not the model count, is short: the least recently used idle model
                    # makes room, and the load is tried again (never two large models at once).
                    if not await self._unload_idle(runner):
                        raise
        finally:
            # On failure each waiter gets the error, and the last one drops the runner.
            runner.loading = None
        runner.engine = engine
        limit = int(getattr(engine, "max_concurrency", 1))
        # An engine whose requests are merged into batches runs them as one call: admit its own
        # limit; others run at most `parallel` requests at once.
        runner.concurrency = max(1, limit if getattr(engine, "admits_all", False) else min(self.parallel, limit))
        runner.slots = asyncio.Semaphore(runner.concurrency)
        runner.loaded_at = time.monotonic()
        log.info("loaded model %s in %.2fs", runner.name, runner.loaded_at - started)
        return engine

    async def _unload_idle(self, runner: Runner) -> bool:
        """Unload the least recently used idle model other than `runner`'s; False if none is."""
        idle = [r for r in self._resident() if r is not runner and r.idle and r.engine is not None]
        if not idle:
            return False
        victim = min(idle, key=lambda r: r.last_used)
        log.info("unloading %s: %s does not fit in memory beside it", victim.name, runner.name)
        await self._unload(victim)
        return True

    def _resident(self) -> list[Runner]:
        loaded = (r for r in self._runners.values() if r.engine is not None or r.loading is not None)
        return [r for r in loaded if not r.elsewhere]

    async def _make_room(self, runner: Runner) -> None:
        if runner.elsewhere:
            return
        async with self._changed:
            while True:
                resident = [r for r in self._resident() if r is not runner]
                if len(resident) < self.max_loaded_models:
                    return
                idle = [r for r in resident if r.idle and r.engine is not None]
                if idle:
                    victim = min(idle, key=lambda r: r.last_used)
                    log.info("unloading %s to make room for %s", victim.name, runner.name)
                    await self._unload(victim, notify=False)
                    continue
                self._waiting_for_room += 1
                try:
                    await self._changed.wait()
                finally:
                    self._waiting_for_room -= 1

    async def _after_use(self, runner: Runner, keep_alive: float | None) -> None:
        if not runner.idle or runner.engine is None:
            if runner.engine is None and runner.loading is None and runner.idle:
                self._runners.pop(runner.name, None)
            return
        keep = self.keep_alive if keep_alive is None else keep_alive
        if runner.unload_when_idle or keep == 0:
            await self._unload(runner)
            return
        if self._waiting_for_room:
            async with self._changed:
                self._changed.notify_all()
        if keep > 0:
            # One timer per idle stretch, not one per request: a timer that fires early (the model
            # was used since) sets itself again for the new expiry.
            runner.expires_at = time.monotonic() + keep
            if runner.timer is None or runner.expires_at < runner.timer_at:  # a shorter keep_alive
                self._set_timer(runner, keep)

    def _set_timer(self, runner: Runner, delay: float) -> None:
        runner.cancel_timer(keep_expiry=True)
        runner.timer = asyncio.get_running_loop().call_later(delay, self._on_timer, runner)
        runner.timer_at = time.monotonic() + delay

    def _on_timer(self, runner: Runner) -> None:
        runner.timer = None
        if runner.expires_at is None or not runner.idle or self._runners.get(runner.name) is not runner:
            return
        left = runner.expires_at - time.monotonic()
        if left > 0:
            self._set_timer(runner, left)
        else:
            task = asyncio.create_task(self._expire(runner))
            self._expiring.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._expiring.discard)

    async def _expire(self, runner: Runner) -> None:
        if runner.idle and self._runners.get(runner.name) is runner:
            log.info("model %s idle for its keep_alive; unloading", runner.name)
            await self._unload(runner)

    async def _unload(self, runner: Runner, notify: bool = True) -> None:
        runner.cancel_timer()
        engine, runner.engine, runner.slots = runner.engine, None, None
        if self._runners.get(runner.name) is runner:
            del self._runners[runner.name]
        if engine is not None:
            await asyncio.to_thread(engine.close)
        if notify:
            async with self._changed:
                self._changed.notify_all()
