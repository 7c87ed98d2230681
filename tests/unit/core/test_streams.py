"""The text core against a scripted fake generator (no model): stop strings across tokens, UTF-8
split across tokens, finish reasons, and the same events from the blocking and the async drivers."""

from __future__ import annotations

import asyncio
import threading

import pytest

from engines.base import AsyncTextGenerator, Sampling
from gpustack_cli.core.parsing.tool_calls import GENERIC, ToolFormat
from gpustack_cli.core.prompts import Prepared, chat_tokens, prepare_chat, render_chat
from gpustack_cli.core.streams import chat_events, stream_chat, stream_text, text_events
from gpustack_cli.core.types import ChatMessage, ChatRequest, Finished, TextDelta, Tool, ToolCall, ToolCallEvent
from tests.support.fake_engine import AsyncFakeGenerator, FakeGenerator


def prepared(max_tokens: int = 50, stop: list[str] | None = None, calls: ToolFormat | None = None) -> Prepared:
    return Prepared([1, 2, 3], Sampling(max_tokens=max_tokens), stop or [], calls)


def run(engine: FakeGenerator, job: Prepared) -> list:
    return list(stream_chat(engine, job, threading.Event()))


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_a_stop_string_split_across_tokens_is_never_shown() -> None:
    engine = FakeGenerator([b"Hello", b" wor", b"ld", b"<|e", b"nd|>", b"after"])
    events = run(engine, prepared(stop=["<|end|>"]))
    assert text_of(events) == "Hello world"
    assert events[-1] == Finished("stop", 3, 5, "<|end|>")


def test_text_that_only_looked_like_a_stop_is_shown() -> None:
    events = run(FakeGenerator([b"a <", b"|x", b" b"]), prepared(stop=["<|end|>"]))
    assert text_of(events) == "a <|x b" and events[-1].reason == "stop" and events[-1].stop_sequence is None


def test_utf8_characters_split_across_tokens() -> None:
    snowman = "☃".encode()
    events = run(FakeGenerator([b"x", snowman[:1], snowman[1:2], snowman[2:], b"y"]), prepared())
    assert text_of(events) == "x☃y" and "\ufffd" not in text_of(events)


def test_the_models_own_stop_strings_end_the_text_as_its_end_of_turn() -> None:
    engine = FakeGenerator([b"One line.", b"\n", b"Two"])
    engine.stop_strings = ("\n",)
    events = run(engine, prepared(stop=["Two"]))
    assert text_of(events) == "One line." and events[-1] == Finished("stop", 3, 2, None)
    events = run(FakeGenerator([b"One", b" Two", b"\n"]), prepared(stop=["Two"]))
    assert text_of(events) == "One " and events[-1] == Finished("stop", 3, 2, "Two")


def test_length_is_the_finish_reason_at_max_tokens() -> None:
    events = run(FakeGenerator([b"a"] * 10), prepared(max_tokens=4))
    assert text_of(events) == "aaaa" and events[-1] == Finished("length", 3, 4)


def test_generic_calls_after_free_text() -> None:
    reply = b'Let me look.\n<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    events = run(FakeGenerator([reply[i : i + 7] for i in range(0, len(reply), 7)]), prepared(calls=GENERIC))
    [call] = [e for e in events if isinstance(e, ToolCallEvent)]
    assert text_of(events).strip() == "Let me look."
    assert call.call.name == "f" and call.call.arguments == '{"x": 1}' and events[-1].reason == "tool_calls"


def test_a_call_repeated_in_one_answer_ends_it() -> None:
    """Small models loop on a call: the first repeat ends the answer (the engine is asked for no
    more), and the calls made before it stand."""
    one = b'<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>\n'
    same = b'<tool_call>{"arguments": {"x":1}, "name": "f"}</tool_call>\n'
    other = b'<tool_call>{"name": "f", "arguments": {"x": 2}}</tool_call>\n'
    pieces = [one, other, same, b"more", b" text"]
    engine = FakeGenerator(pieces)
    for events in (
        run(engine, prepared(calls=GENERIC)),
        asyncio.run(_all(chat_events(AsyncFakeGenerator(pieces), prepared(calls=GENERIC)))),
    ):
        calls = [e.call.arguments for e in events if isinstance(e, ToolCallEvent)]
        assert calls == ['{"x": 1}', '{"x": 2}']
        assert "more" not in text_of(events)
        assert events[-1].reason == "tool_calls" and events[-1].completion_tokens == 3


async def _all(events) -> list:
    return [event async for event in events]


WEATHER = Tool("get_weather", "The weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})


@pytest.mark.parametrize(("choice", "trigger"), [("auto", "<tool_call>"), ("required", None), ("get_weather", None)])
def test_a_template_without_tools_gets_the_generic_format(choice: str, trigger: str | None) -> None:
    engine = FakeGenerator([])
    engine.n_ctx = 4096  # a token a character
    request = ChatRequest([ChatMessage("user", "Weather in Oslo?")], Sampling.of(), tools=[WEATHER], tool_choice=choice)
    job = prepare_chat(engine, request)
    assert job.tool_format is GENERIC and job.sampling.json_schema is None
    # Free text until the call opens under `auto`; held from the first token otherwise.
    assert job.sampling.structure is not None and job.sampling.structure.trigger == trigger
    prompt = render_chat(engine, request)
    assert '{"name": "get_weather", "description": "The weather in a city"' in prompt and "<tool_call>" in prompt


def test_earlier_generic_calls_and_results_are_written_in_the_format() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Oslo"}')
    messages = [
        ChatMessage("user", "Weather in Oslo?"),
        ChatMessage("assistant", "Looking.", [call]),
        ChatMessage("tool", "sunny", tool_call_id="call_1"),
    ]
    prompt = render_chat(FakeGenerator([]), ChatRequest(messages, Sampling.of(), tools=[WEATHER]))
    assert 'Looking.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>' in prompt
    assert "sunny" in prompt


@pytest.mark.parametrize(
    "pieces",
    [[b"Hello", b" wor", b"ld", b"<|e", b"nd|>", b"after"], [b"a"] * 60, ["é".encode()[:1], "é".encode()[1:], b"!"]],
)
def test_the_async_driver_gives_the_blocking_ones_events(pieces: list[bytes]) -> None:
    engine = AsyncFakeGenerator(pieces)
    assert isinstance(engine, AsyncTextGenerator)
    job = prepared(stop=["<|end|>"])

    async def collect() -> list:
        return [event async for event in chat_events(engine, job)]

    assert asyncio.run(collect()) == list(stream_text(engine, job, threading.Event()))


def test_the_async_driver_names_each_request_to_the_engine() -> None:
    engine = AsyncFakeGenerator([b"a", b"b"])

    async def collect(request_id: str | None) -> None:
        async for _ in text_events(engine, prepared(), request_id):
            pass

    asyncio.run(collect("req-7"))
    asyncio.run(collect(None))
    asyncio.run(collect(None))
    assert engine.request_ids[0] == "req-7"
    assert len(set(engine.request_ids)) == 3  # a fresh id where none is given


def test_reasoning_is_split_off_in_both_drivers() -> None:
    from gpustack_cli.core.parsing.reasoning import ReasoningFormat
    from gpustack_cli.core.types import ReasoningDelta

    pieces = [b"<think>", b"So", b" 4.", b"</thi", b"nk>\n\n", b"Four", b"."]
    engine = AsyncFakeGenerator(pieces)
    job = Prepared([1, 2, 3], Sampling(max_tokens=50), [], reasoning=ReasoningFormat("<think>", "</think>", False))

    async def collect_async() -> list:
        return [event async for event in chat_events(engine, job)]

    for events in (run(engine, job), asyncio.run(collect_async())):
        assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "So 4."
        assert text_of(events) == "Four."
        assert events[-1].completion_tokens == 7 and events[-1].reasoning_tokens == len("So 4.")


class BosAddingGenerator(FakeGenerator):
    """Unit tests only: a tokenizer that puts its BOS (token 1) before every text, as Gemma's does."""

    bos_text = "<bos>"

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return ([1] if special else []) + [ord(c) for c in text]


def test_a_template_that_writes_the_bos_gets_one() -> None:
    engine = BosAddingGenerator([b"a"])
    assert chat_tokens(engine, "<bos>hi") == chat_tokens(engine, "hi") == [1, ord("h"), ord("i")]
    assert chat_tokens(FakeGenerator([b"a"]), "<bos>hi") == [0, 1, 2, 3, 4, 5, 6]  # nothing added: kept


def test_a_budget_past_the_context_is_cut_to_fit() -> None:
    """As llama-server: max_tokens beyond what the prompt leaves is cut to it; only a prompt that
    does not fit is refused."""
    from gpustack_cli.core.limits import fit_context
    from gpustack_cli.core.types import GenerationError

    engine = FakeGenerator([b"a"])  # a context of 512
    assert fit_context(engine, 500, 32000) == 12
    assert fit_context(engine, 500, 5) == 5
    assert fit_context(engine, 500, None) == 12
    with pytest.raises(GenerationError, match="maximum context length is 512"):
        fit_context(engine, 512, 1)
