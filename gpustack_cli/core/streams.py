"""The stream drivers: tokens from an engine in, the core's events out. `TextStream` makes text
deltas (UTF-8 safe, stop strings never shown) and one `Finished`; chat answers then pass through
stages that split off reasoning (`ReasoningDelta`, counted in `Finished.reasoning_tokens`) and read
tool calls. The blocking drivers (`stream_text`, `stream_chat`) run in a worker thread; the async
ones (`text_events`, `chat_events`) take tokens on the event loop from engines that deliver them
there. `collect` gathers a stream into an `Answer`."""

from __future__ import annotations

import codecs
import contextlib
import functools
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any, Protocol

from engines.base import AsyncTextGenerator, TextGenerator
from gpustack_cli.core import json_values
from gpustack_cli.core.parsing.harmony import HarmonyReader
from gpustack_cli.core.parsing.held_text import ready_and_held
from gpustack_cli.core.parsing.reasoning import ReasoningSplitter
from gpustack_cli.core.parsing.tool_calls import HARMONY, Call, ToolCallReader, new_call_id
from gpustack_cli.core.prompts import Prepared
from gpustack_cli.core.types import (
    Answer,
    Event,
    Finished,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallEvent,
)
from gpustack_cli.runtime.threads import iterate_in_thread


def _logprob(engine: TextGenerator, token: Any) -> TokenLogprob:
    def text(piece: bytes) -> str:
        return piece.decode("utf-8", errors="replace")

    top = [(text(engine.piece(tid)), list(engine.piece(tid)), lp) for tid, lp in token.top]
    return TokenLogprob(token=text(token.piece), bytes=list(token.piece), logprob=token.logprob, top=top)


class TextStream:
    """Tokens in, events out, for one answer: text deltas (UTF-8 safe, the request's and the
    model's stop strings cut out and never shown), then `Finished`. `feed` takes each token as
    the engine makes it; `done` says a stop string ended the text (stop asking the engine for
    more); `end` closes the answer. Driven by `stream_text` from a blocking engine, or `events`
    from one that delivers asynchronously."""

    def __init__(self, engine: TextGenerator, prepared: Prepared):
        self.engine = engine
        self.prepared = prepared
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.asked = [s for s in prepared.stop if s]
        # The model's own stop strings end the text as its end of turn does: no stop sequence.
        self.stops = self.asked + [s for s in getattr(engine, "stop_strings", ()) if s]
        self.held, self.held_logprobs, self.produced = "", [], 0
        self.done = False

    def feed(self, token: Any) -> list[Event]:
        self.produced += 1
        self.held += self.decoder.decode(token.piece)
        if token.logprob is not None:
            self.held_logprobs.append(_logprob(self.engine, token))
        found = [(self.held.find(s), s) for s in self.stops if s in self.held]
        if found:
            at, stop = min(found)
            self.done = True
            events: list[Event] = [TextDelta(self.held[:at], self.held_logprobs)] if self.held[:at] else []
            asked = stop if stop in self.asked else None
            return [*events, Finished("stop", len(self.prepared.prompt_tokens), self.produced, asked)]
        # Hold back the end of the text while it could still become a stop string.
        ready, held = ready_and_held(self.held, self.stops)
        if not ready:
            return []
        delta = TextDelta(ready, self.held_logprobs)
        self.held, self.held_logprobs = held, []
        return [delta]

    def end(self) -> list[Event]:
        if self.done:
            return []
        self.held += self.decoder.decode(b"", final=True)
        events: list[Event] = [TextDelta(self.held, self.held_logprobs)] if self.held else []
        reason: FinishReason = "length" if self.produced >= self.prepared.sampling.max_tokens else "stop"
        return [*events, Finished(reason, len(self.prepared.prompt_tokens), self.produced)]


def stream_text(
    engine: TextGenerator, prepared: Prepared, cancel: threading.Event, enough: Callable[[], bool] = lambda: False
) -> Iterator[Event]:
    """Text deltas until the end, with stop strings cut out, then `Finished`; `enough` ends the
    answer early when it says so (checked after each token)."""
    text = TextStream(engine, prepared)
    for token in engine.generate(prepared.prompt_tokens, prepared.sampling, cancel):
        yield from text.feed(token)
        if text.done:
            return
        if enough():
            break
    yield from text.end()


class AnswerReader(Protocol):
    """Reads an answer's text as it streams: `feed` each piece, `end` once; both hand on the
    parts found, as ("reasoning" or "text", text) or calls."""

    def feed(self, text: str) -> list[tuple[str, str] | Call]: ...

    def end(self) -> list[tuple[str, str] | Call]: ...


class Stage:
    """A chat answer's text deltas read by one reader (reasoning tags, a tool-call format, or
    GPT-OSS's channels): reasoning, text and tool calls out, other events passed on; the end
    counts the reasoning's tokens and says `tool_calls` when the model called any."""

    def __init__(self, engine: TextGenerator, reader: AnswerReader, call_id: Callable[[], str] = new_call_id):
        self.engine = engine
        self.reader = reader
        self.call_id = call_id
        self.reasoning = ""
        self.calls = 0
        # The calls made so far, by name and arguments; a call made again ends the answer.
        self.seen: set[tuple[str, str]] = set()
        self.repeated = False

    def feed(self, event: Event) -> list[Event]:
        if isinstance(event, TextDelta):
            return self._events(self.reader.feed(event.text), event.logprobs)
        if not isinstance(event, Finished):
            return [event]
        events = self._events(self.reader.end(), [])
        if self.reasoning:
            tokens = len(self.engine.tokenize(self.reasoning, special=False))
            event = replace(event, reasoning_tokens=min(tokens, event.completion_tokens))
        return [*events, replace(event, reason="tool_calls") if self.calls else event]

    def _events(self, parts: list[tuple[str, str] | Call], logprobs: list[TokenLogprob]) -> list[Event]:
        events: list[Event] = []
        for part in parts:
            if self.repeated:  # what follows a repeated call is not part of the answer
                break
            if isinstance(part, Call):
                key = (part.name, _canonical(part.arguments))
                if key in self.seen:  # small models loop on a call: the answer ends at the first repeat
                    self.repeated = True
                    continue
                self.seen.add(key)
                events.append(ToolCallEvent(self.calls, ToolCall(self.call_id(), part.name, part.arguments)))
                self.calls += 1
            elif part[0] == "reasoning":
                self.reasoning += part[1]
                events.append(ReasoningDelta(part[1]))
            else:  # the delta's log probabilities go with its answer text
                events.append(TextDelta(part[1], logprobs))
                logprobs = []
        return events


def _canonical(arguments: str) -> str:
    """Arguments as compared for repeats: the same JSON whatever its spacing and key order."""
    try:
        return json.dumps(json_values.loads(arguments), sort_keys=True)
    except ValueError:
        return arguments


def _chat_stages(engine: TextGenerator, prepared: Prepared) -> list[Stage]:
    """What a chat answer's text events go through: reasoning split off, then native tool calls
    read; or GPT-OSS's channels read for both."""
    if prepared.harmony:
        return [Stage(engine, HarmonyReader(), HARMONY.call_id)]
    stages: list[Stage] = []
    if prepared.reasoning is not None:
        stages.append(Stage(engine, ReasoningSplitter(prepared.reasoning)))
    if prepared.tool_format is not None:
        stages.append(Stage(engine, ToolCallReader(prepared.tool_format), prepared.tool_format.call_id))
    return stages


def _through(stages: list[Stage], event: Event) -> list[Event]:
    events = [event]
    for stage in stages:
        events = [out for e in events for out in stage.feed(e)]
    return events


def stream_chat(engine: TextGenerator, prepared: Prepared, cancel: threading.Event) -> Iterator[Event]:
    """The events of one chat choice: reasoning, text and tool calls read from the model's text."""
    stages = _chat_stages(engine, prepared)
    for event in stream_text(engine, prepared, cancel, lambda: any(s.repeated for s in stages)):
        yield from _through(stages, event)


async def text_events(
    engine: TextGenerator,
    prepared: Prepared,
    request_id: str | None = None,
    enough: Callable[[], bool] = lambda: False,
) -> AsyncIterator[Event]:
    """`stream_text`'s events for an async caller: straight from an engine that delivers tokens
    to the event loop (a batching engine: no thread waits on each stream), else from
    `stream_text` run in a worker thread. `request_id` names the request to the engine (for
    `abort`); a fresh one when None."""
    if not isinstance(engine, AsyncTextGenerator):
        make = functools.partial(stream_text, engine, prepared, enough=enough)
        async with contextlib.aclosing(iterate_in_thread(make)) as events:
            async for event in events:
                yield event
        return
    text = TextStream(engine, prepared)
    request_id = request_id or uuid.uuid4().hex
    async with contextlib.aclosing(engine.agenerate(prepared.prompt_tokens, prepared.sampling, request_id)) as tokens:
        async for token in tokens:
            for event in text.feed(token):
                yield event
            if text.done:
                return
            if enough():
                break
    for event in text.end():
        yield event


async def chat_events(engine: TextGenerator, prepared: Prepared, request_id: str | None = None) -> AsyncIterator[Event]:
    """`stream_chat`'s events for an async caller (see `text_events`)."""
    stages = _chat_stages(engine, prepared)

    def repeated() -> bool:
        return any(s.repeated for s in stages)

    async with contextlib.aclosing(text_events(engine, prepared, request_id, repeated)) as events:
        async for event in events:
            for out in _through(stages, event):
                yield out


async def collect(events: AsyncIterator[Event]) -> Answer:
    """The answer `events` stream, once they end (closing them if the caller is cancelled)."""
    deltas: list[TextDelta] = []
    calls: list[ToolCall] = []
    reasoning, finished = "", None
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                deltas.append(event)
            elif isinstance(event, ReasoningDelta):
                reasoning += event.text
            elif isinstance(event, ToolCallEvent):
                calls.append(event.call)
            else:
                finished = event
    if finished is None:
        raise RuntimeError("the answer ended without its end event")
    return Answer(deltas, calls, finished, reasoning)
