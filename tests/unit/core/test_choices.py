"""A request's n choices run together and interleaved (FakeGenerator streams, no model)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from engines.base import Sampling
from gpustack_cli.core.choices import collected, merged, seeded
from gpustack_cli.core.prompts import Prepared
from gpustack_cli.core.types import Event, Finished, TextDelta


def choice(name: str, pieces: int, pause: float, started: list[str]):
    async def events() -> AsyncIterator[Event]:
        started.append(name)
        for i in range(pieces):
            await asyncio.sleep(pause)
            yield TextDelta(f"{name}{i}")
        yield Finished("stop", 3, pieces)

    return events


async def test_choices_are_interleaved_as_they_come() -> None:
    started: list[str] = []
    choices = [choice("a", 5, 0.02, started), choice("b", 2, 0.01, started), choice("c", 3, 0.015, started)]
    seen = [(index, event) async for index, event in merged(choices, sequential=False, slots=4)]
    order = [index for index, _ in seen]
    first_end = next(i for i, (index, event) in enumerate(seen) if index == 0 and isinstance(event, Finished))
    assert 1 in order[:first_end] and 2 in order[:first_end]  # others' text before choice 0 ended
    assert [e.text for i, e in seen if i == 0 and isinstance(e, TextDelta)] == [f"a{k}" for k in range(5)]
    assert sorted(set(order)) == [0, 1, 2]


async def test_seeded_choices_run_one_after_another() -> None:
    started: list[str] = []
    choices = [choice("a", 2, 0.01, started), choice("b", 2, 0.001, started)]
    order = [index async for index, _ in merged(choices, sequential=True, slots=4)]
    assert order == [0, 0, 0, 1, 1, 1]


async def test_more_choices_than_slots_leave_one_free() -> None:
    started: list[str] = []
    choices = [choice(str(i), 2, 0.01, started) for i in range(6)]
    stream = merged(choices, sequential=False, slots=3)
    await anext(stream)
    assert len(started) == 2  # all but one of three slots
    await stream.aclose()


async def test_an_error_in_one_choice_ends_all() -> None:
    started: list[str] = []

    async def broken() -> AsyncIterator[Event]:
        yield TextDelta("x")
        raise ValueError("no more")

    with pytest.raises(ValueError, match="no more"):
        await collected([choice("a", 50, 0.01, started), broken], sequential=False, slots=4)


async def test_collected_answers_in_index_order() -> None:
    started: list[str] = []
    answers = await collected([choice("a", 3, 0.02, started), choice("b", 1, 0.0, started)], False, 4)
    assert [answer.text for answer in answers] == ["a0a1a2", "b0"]


def test_each_choice_has_its_own_seed() -> None:
    prepared = Prepared([1], Sampling(max_tokens=1, seed=7), [])
    assert [seeded(prepared, i).sampling.seed for i in range(3)] == [7, 8, 9]
    unseeded = Prepared([1], Sampling(max_tokens=1), [])
    assert seeded(unseeded, 2) is unseeded
