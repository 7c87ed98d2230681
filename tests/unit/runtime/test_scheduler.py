import asyncio

import pytest

from gpustack_cli.runtime.scheduler import QueueFull, Scheduler
from tests.support.fake_engine import FakeLoader


def scheduler(loader: FakeLoader, **kwargs) -> Scheduler:
    options = {"max_loaded_models": 2, "parallel": 4, "max_queue": 2, "keep_alive": 60.0, **kwargs}
    return Scheduler(loader, **options)


async def test_loads_on_first_use_and_reuses() -> None:
    loader = FakeLoader()
    s = scheduler(loader)
    assert not s.is_loaded("a")
    async with s.use("a") as engine:
        assert engine.name == "a"
        assert s.loaded()[0].active == 1
    async with s.use("a") as again:
        assert again is engine
    assert len(loader.loaded) == 1
    [info] = s.loaded()
    assert info.active == 0 and info.concurrency == 2 and 59 < info.expires_in <= 60
    await s.close()
    assert engine.closed.is_set()


async def test_concurrent_first_requests_load_once() -> None:
    loader = FakeLoader(load_seconds=0.2)
    s = scheduler(loader)

    async def one() -> None:
        async with s.use("a"):
            await asyncio.sleep(0.01)

    await asyncio.gather(*(one() for _ in range(4)))
    assert len(loader.loaded) == 1
    await s.close()


async def test_per_model_concurrency_and_bounded_queue() -> None:
    s = scheduler(FakeLoader(max_concurrency=2), parallel=8, max_queue=2)
    release = asyncio.Event()
    running = 0
    peak = 0

    async def hold() -> None:
        nonlocal running, peak
        async with s.use("a"):
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

    tasks = [asyncio.create_task(hold()) for _ in range(4)]  # 2 run, 2 wait
    await asyncio.sleep(0.1)
    assert running == 2
    info = s.loaded()[0]
    assert (info.active, info.waiting) == (2, 2)
    with pytest.raises(QueueFull, match="busy"):
        async with s.use("a"):
            pass
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 2
    await s.close()


async def test_parallel_setting_caps_engine_concurrency() -> None:
    s = scheduler(FakeLoader(max_concurrency=16), parallel=3)
    async with s.use("a"):
        assert s.loaded()[0].concurrency == 3
    await s.close()


async def test_least_recently_used_idle_model_is_evicted() -> None:
    loader = FakeLoader()
    s = scheduler(loader, max_loaded_models=2)
    for name in ("a", "b"):
        async with s.use(name):
            pass
    async with s.use("a"):  # a is now the most recently used
        pass
    async with s.use("c"):
        pass
    assert sorted(m.name for m in s.loaded()) == ["a", "c"]
    assert next(e for e in loader.loaded if e.name == "b").closed.is_set()
    await s.close()


async def test_models_served_elsewhere_take_no_place_and_are_not_evicted() -> None:
    loader = FakeLoader()
    s = scheduler(loader, max_loaded_models=1, elsewhere=lambda name: name.startswith("remote-"))
    for name in ("a", "remote-1", "remote-2"):
        async with s.use(name):
            pass
    assert sorted(m.name for m in s.loaded()) == ["a", "remote-1", "remote-2"]  # a kept its place
    async with s.use("b"):  # the one place goes from a to b; the remote pools stay
        pass
    assert sorted(m.name for m in s.loaded()) == ["b", "remote-1", "remote-2"]
    await s.close()


async def test_load_waits_while_every_loaded_model_is_busy() -> None:
    s = scheduler(FakeLoader(), max_loaded_models=1)
    release = asyncio.Event()

    async def busy() -> None:
        async with s.use("a"):
            await release.wait()

    task = asyncio.create_task(busy())
    await asyncio.sleep(0.05)
    other = asyncio.create_task(s.preload("b"))
    await asyncio.sleep(0.1)
    assert not other.done() and [m.name for m in s.loaded()] == ["a"]
    release.set()
    await asyncio.wait_for(asyncio.gather(task, other), 5)
    assert [m.name for m in s.loaded()] == ["b"]
    await s.close()


async def test_keep_alive_zero_and_expiry() -> None:
    loader = FakeLoader()
    s = scheduler(loader, keep_alive=0.2)
    async with s.use("a", keep_alive=0):
        pass
    assert not s.is_loaded("a") and loader.loaded[0].closed.is_set()
    async with s.use("b"):
        pass
    assert s.is_loaded("b")
    await asyncio.sleep(0.4)
    assert not s.is_loaded("b")
    async with s.use("c", keep_alive=-1):
        pass
    assert s.loaded()[0].expires_in is None
    await s.close()


async def test_expiry_follows_the_last_use() -> None:
    s = scheduler(FakeLoader(), keep_alive=0.3)
    async with s.use("a"):
        pass
    await asyncio.sleep(0.2)
    async with s.use("a"):  # the first timer fires at 0.3 s and must wait on until 0.5 s
        pass
    await asyncio.sleep(0.2)
    assert s.is_loaded("a")
    await asyncio.sleep(0.3)
    assert not s.is_loaded("a")
    async with s.use("b", keep_alive=60):
        pass
    async with s.use("b", keep_alive=0.1):  # a shorter keep_alive than the timer set
        pass
    await asyncio.sleep(0.3)
    assert not s.is_loaded("b")
    await s.close()


async def test_cancelled_request_frees_its_slot() -> None:
    s = scheduler(FakeLoader(max_concurrency=1))
    started = asyncio.Event()

    async def stuck() -> None:
        async with s.use("a"):
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(stuck())
    await started.wait()
    task.cancel()  # what aiohttp does when the client disconnects
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(2), s.use("a"):
        assert s.loaded()[0].active == 1
    await s.close()


async def test_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    loader = FakeLoader(load_seconds=0.3)
    s = scheduler(loader)
    first = asyncio.create_task(s.preload("a"))
    second = asyncio.create_task(s.preload("a"))
    await asyncio.sleep(0.05)
    first.cancel()
    await second
    assert s.is_loaded("a") and len(loader.loaded) == 1
    await s.close()


async def test_failed_load_reaches_every_waiter_and_can_be_retried() -> None:
    s = scheduler(FakeLoader())
    results = await asyncio.gather(s.preload("broken"), s.preload("broken"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert s.loaded() == []
    with pytest.raises(RuntimeError, match="cannot load"):
        await s.preload("broken")
    await s.close()


async def test_unload_now_or_when_idle() -> None:
    s = scheduler(FakeLoader())
    assert not await s.unload("a")
    await s.preload("a")
    assert await s.unload("a")
    assert not s.is_loaded("a")
    release = asyncio.Event()

    async def busy() -> None:
        async with s.use("a"):
            await release.wait()

    task = asyncio.create_task(busy())
    await asyncio.sleep(0.05)
    assert await s.unload("a")
    assert s.is_loaded("a")  # still answering its request
    release.set()
    await task
    assert not s.is_loaded("a")
    await s.close()


async def test_a_broken_engine_is_unloaded_and_the_next_request_loads_it_again() -> None:
    """An engine that says it is `broken` (a model's child process that ended) goes once its
    request ends, or when the next request finds it so while idle."""
    loader = FakeLoader()
    s = scheduler(loader)
    async with s.use("a") as first:
        first.broken = True
    assert first.closed.is_set() and not s.is_loaded("a")
    async with s.use("a") as second:
        assert second is not first
    second.broken = True  # ended while idle
    async with s.use("a") as third:
        assert third is not second and second.closed.is_set()
    assert len(loader.loaded) == 3
    await s.close()


async def test_a_model_that_does_not_fit_in_memory_unloads_idle_ones_first() -> None:
    """A load that runs out of memory unloads the least recently used idle model and tries again,
    as often as it takes; with none idle left, its error is the request's."""
    from engines.base import OutOfMemory

    base = FakeLoader()
    room = 2  # models this fake machine holds at once

    def loader(name: str):
        if sum(not e.closed.is_set() for e in base.loaded) >= room:
            raise OutOfMemory(f"no room for {name}")
        return base(name)

    s = scheduler(loader, max_loaded_models=5)
    async with s.use("a"):
        pass
    async with s.use("b"):
        pass
    async with s.use("c") as c:  # "a" was used least recently: it goes
        assert not s.is_loaded("a") and s.is_loaded("b")
        async with s.use("d"):  # then "b"
            assert not s.is_loaded("b") and s.is_loaded("c") and s.is_loaded("d")
            with pytest.raises(OutOfMemory):  # "c" and "d" are busy: nothing left to unload
                async with s.use("e"):
                    pass
    assert not c.closed.is_set() and len(base.loaded) == 4
    await s.close()
