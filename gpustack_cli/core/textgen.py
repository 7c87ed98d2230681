"""The text-generation core that the OpenAI and Anthropic translators share.

Wire formats are turned into a `ChatRequest` (or `CompletionRequest`) by the translators; this
module renders the prompt, checks it against the context, asks the engine for tokens, and turns
them into a stream of events: text deltas (UTF-8 safe, stop strings never shown), tool calls and
one `Finished`. It knows nothing of HTTP. The blocking drivers (`stream_text`, `stream_chat`) run
in a worker thread; the async ones (`text_events`, `chat_events`) take tokens on the event loop
from engines that deliver them there.

Tool calls: a model whose template takes `tools` and shows a format `tool_calls.py` reads gets
the tools through its template and calls them in its own format. Every other model gets the
generic format (`tool_calls.GENERIC`): the tools and the shape of a call are described in the
system prompt, and earlier calls and results are written into the conversation in that shape.
Either way a grammar holds each call to its tool's parameters: from the first token when a call
is required, and from the call's opening marker under `tool_choice: auto`, so that an answer in
words stays free.

A reasoning model's thinking section (see `reasoning.py`) comes apart from its answer as
`ReasoningDelta` events, and is counted in `Finished.reasoning_tokens`.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from engines.base import AsyncTextGenerator, InvalidSchema, Sampling, TextGenerator
from gpustack_cli.config import Settings
from gpustack_cli.core import json_values, templates
from gpustack_cli.core.json_schemas import SchemaError, SchemaLimits, check_schemas, loosened
from gpustack_cli.core.parsing.harmony import HarmonyReader
from gpustack_cli.core.parsing.held_text import ready_and_held
from gpustack_cli.core.parsing.reasoning import ReasoningFormat, ReasoningSplitter, reasoning_format
from gpustack_cli.core.parsing.tool_calls import (
    GENERIC,
    HARMONY,
    Call,
    ToolCallReader,
    ToolFormat,
    ToolSpec,
    is_harmony,
    new_call_id,
    tool_format,
)
from gpustack_cli.runtime.threads import iterate_in_thread

FinishReason = Literal["stop", "length", "tool_calls"]


class GenerationError(ValueError):
    """The request cannot be served as asked (a 400 on the wire); the message says why."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass
class ToolCall:
    id: str
    name: str
    # The arguments as a JSON text, as OpenAI sends them.
    arguments: str


@dataclass
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None


@dataclass
class ChatRequest:
    messages: list[ChatMessage]
    sampling: Sampling
    # None: as many as the context leaves room for.
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    # "auto", "none", "required", or the name of the one tool to call.
    tool_choice: str = "auto"
    # A JSON schema the reply must match ({"type": "object"} for JSON mode), or None.
    json_schema: dict[str, Any] | None = None
    # Extra variables for the chat template (`enable_thinking`, `reasoning_effort`, ...), over
    # the model's own defaults.
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Keep a reasoning model's thinking apart from its answer (False: leave it in the text).
    split_reasoning: bool = True
    # Whether the model may call several tools in one answer.
    parallel_tool_calls: bool = True


@dataclass
class TokenLogprob:
    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]


@dataclass
class TextDelta:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class ReasoningDelta:
    """A piece of the model's reasoning, written before its answer."""

    text: str


@dataclass
class ToolCallEvent:
    index: int
    call: ToolCall


@dataclass
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # The stop string that ended the text, when one did.
    stop_sequence: str | None = None
    # Of the completion tokens, those of the reasoning.
    reasoning_tokens: int = 0


Event = TextDelta | ReasoningDelta | ToolCallEvent | Finished


@dataclass
class Prepared:
    """A request made ready for the engine: its prompt tokens and the sampling for its reply."""

    prompt_tokens: list[int]
    sampling: Sampling
    stop: list[str]
    # How to read tool calls in the output, when tools are offered.
    tool_format: ToolFormat | None = None
    # The model's reasoning tags, when its reasoning is to be kept apart from its answer.
    reasoning: ReasoningFormat | None = None
    # GPT-OSS's channelled messages, read for reasoning, answer and calls (harmony.py).
    harmony: bool = False


# -- limits ----------------------------------------------------------------------------------


def check_chat(
    request: ChatRequest,
    settings: Settings,
    schema_param: str = "response_format",
    tool_field: str = "parameters",
    stop_param: str = "stop",
) -> None:
    """The limits of one chat request, checked before a model is loaded or a slot taken: its
    messages, the characters to render and tokenize, and its schemas (a GenerationError). The
    server's settings apply to it here too: its completion budget is capped by the server's,
    and reasoning is split off unless the server keeps it in the text (`reasoning_format`)."""
    request.max_tokens = capped(request.max_tokens, settings)
    request.split_reasoning = settings.reasoning_format != "none"
    if len(request.messages) > settings.max_messages:
        raise GenerationError(
            f"Too many messages: {len(request.messages)}; the limit is {settings.max_messages}.", param="messages"
        )
    chars = sum(len(m.content) + sum(len(c.arguments) for c in m.tool_calls) for m in request.messages)
    check_text_size(chars, settings, "messages")
    check_stops(request.stop, settings, stop_param)
    for index, message in enumerate(request.messages):
        for call in message.tool_calls:
            try:
                json_values.loads(call.arguments or "{}", f"messages[{index}]: a tool call's arguments")
            except json_values.TooDeep as exc:
                raise GenerationError(f"{exc}.", param="messages") from exc
            except ValueError:  # arguments that are not JSON reach the template as text
                pass
    schemas: list[tuple[str, Any]] = [(f"tools[{i}].{tool_field}", t.parameters) for i, t in enumerate(request.tools)]
    if request.json_schema is not None:
        schemas.append((schema_param, request.json_schema))
    try:
        limits = SchemaLimits(settings.max_schema_nodes, settings.max_schema_repeat, settings.max_pattern_loops)
        check_schemas(schemas, limits)
    except SchemaError as exc:
        raise GenerationError(f"Invalid schema at {exc}.", param=exc.param, code="invalid_schema") from exc
    limit = settings.max_schema_repeat
    request.tools = [replace(t, parameters=loosened(t.parameters, limit)) for t in request.tools]
    if request.json_schema is not None:
        request.json_schema = loosened(request.json_schema, limit)


def check_stops(stops: list[str], settings: Settings, param: str = "stop") -> None:
    """Stop strings are looked for in the text after every token: their number and length
    bound that work."""
    if len(stops) > settings.max_stops:
        raise GenerationError(f"Too many stop strings: {len(stops)}; the limit is {settings.max_stops}.", param=param)
    for stop in stops:
        if len(stop) > settings.max_stop_chars:
            raise GenerationError(
                f"A stop string holds {len(stop)} characters; the limit is {settings.max_stop_chars}.", param=param
            )


def capped(max_tokens: int | None, settings: Settings) -> int | None:
    """A request's completion budget under the server's `max_completion_tokens`."""
    cap = settings.max_completion_tokens
    return max_tokens if cap is None else min(cap, cap if max_tokens is None else max_tokens)


def check_text_size(chars: int, settings: Settings, param: str) -> None:
    if chars > settings.max_text_chars:
        raise GenerationError(
            f"'{param}' holds {chars} characters; the limit is {settings.max_text_chars}.", param=param
        )


# -- prompts ---------------------------------------------------------------------------------


def _tool_instructions(tools: list[Tool], choice: str) -> str:
    """The generic format's system prompt: the tools as JSON, one per line, and how to call them."""
    described = "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}) for t in tools
    )
    call = f'{GENERIC.call_open}{{"name": <tool name>, "arguments": <arguments object>}}{GENERIC.call_close}'
    when = (
        "Call a tool only when it helps; otherwise answer in plain text."
        if choice == "auto"
        else "Answer with tool calls only."
    )
    return (
        f"You can call these tools:\n<tools>\n{described}\n</tools>\n\n"
        f"To call a tool, write a JSON object with its name and arguments inside <tool_call></tool_call> "
        f"tags:\n{call}\n{when}"
    )


def _generic_calls(message: ChatMessage) -> str:
    """An assistant turn's text and calls, in the generic format."""
    calls = [
        GENERIC.call_open + json.dumps({"name": c.name, "arguments": _loads(c.arguments)}) + GENERIC.call_close
        for c in message.tool_calls
    ]
    return "\n".join([message.content, *calls] if message.content else calls)


def _wire_messages(request: ChatRequest, template: str) -> list[dict[str, Any]]:
    """Our messages as the chat template takes them; tool turns written in the generic format."""
    use_tools = bool(request.tools) and request.tool_choice != "none"
    messages: list[dict[str, Any]] = []
    tool_role = templates.supports_role(template, "tool")
    for message in request.messages:
        content = message.content
        if message.role == "assistant" and message.tool_calls:
            content = _generic_calls(message)
        if message.role == "tool" and not tool_role:
            messages.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
            continue
        messages.append({"role": message.role, "content": content})
    if use_tools:
        instructions = _tool_instructions(request.tools, request.tool_choice)
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{instructions}"}
        else:
            messages.insert(0, {"role": "system", "content": instructions})
    return messages


def _loads(arguments: str) -> Any:
    try:
        return json_values.loads(arguments) if arguments else {}
    except ValueError:
        return arguments


def render_chat(engine: TextGenerator, request: ChatRequest) -> str:
    """The chat as the model's template writes it. A system message after the first (as coding
    agents send them) stays where it stands when the template renders it there; a template that
    refuses it or leaves it out gets every system message merged, in order, into the first."""
    late = [m for m in request.messages[1:] if m.role == "system" and m.content.strip()]
    if not late:
        return _render(engine, request)
    try:
        text = _render(engine, request)
        if all(m.content.strip() in text for m in late):
            return text
    except GenerationError:
        pass
    return _render(engine, replace(request, messages=merged_system(request.messages)))


def merged_system(messages: list[ChatMessage]) -> list[ChatMessage]:
    """`messages` with every system message's text joined, in order, into one system message first."""
    system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
    rest = [m for m in messages if m.role != "system"]
    return [ChatMessage("system", system), *rest] if system else rest


def _render(engine: TextGenerator, request: ChatRequest) -> str:
    template = _template(engine)
    variables = {**getattr(engine, "template_kwargs", {}), **request.template_kwargs}
    native = tool_format(template) is not None and _has_tools(request)
    active = native and request.tool_choice != "none"
    tools = [_wire_tool(t) for t in request.tools] if active else None
    try:
        return templates.render(
            template,
            _native_messages(request) if native else _wire_messages(request, template),
            bos_token=engine.bos_text,
            eos_token=engine.eos_text,
            tools=tools,
            variables=variables,
        )
    except templates.TemplateFailure as exc:
        name = getattr(engine, "name", "")
        raise GenerationError(f"Model '{name}': {exc}", param="messages", code="chat_template_error") from exc


def _template(engine: TextGenerator) -> str:
    return templates.template_for(engine.chat_template, engine.architecture)


def _has_tools(request: ChatRequest) -> bool:
    """Whether the chat offers tools or has called them: a template with tools renders it."""
    return bool(request.tools) or any(m.tool_calls or m.role == "tool" for m in request.messages)


def _call_format(request: ChatRequest, template: str) -> ToolFormat | None:
    """How the answer writes its calls, when the request offers tools (`tool_choice` other than
    `none`): the model's own format when its template has one, else the generic one."""
    if not request.tools or request.tool_choice == "none":
        return None
    return tool_format(template) or GENERIC


def _wire_tool(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


def _native_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """Our messages as templates with tools take them (transformers' shape): an assistant's calls
    with their arguments as objects, a tool's result with the name of the tool it answers."""
    names = {c.id: c.name for m in request.messages for c in m.tool_calls}
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        wire: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            wire["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _loads(c.arguments)}}
                for c in message.tool_calls
            ]
        if message.role == "tool":
            wire["tool_call_id"] = message.tool_call_id
            wire["name"] = names.get(message.tool_call_id or "", "")
        messages.append(wire)
    return messages


def fit_context(engine: TextGenerator, prompt_tokens: int, max_tokens: int | None, what: str = "messages") -> int:
    """The completion budget for a prompt: what was asked, cut to what the context leaves (as
    llama-server does: an answer that reaches it ends with `length`); a GenerationError naming the
    numbers only when the prompt itself does not fit."""
    if prompt_tokens == 0:
        raise GenerationError(f"The {what} is empty: there is nothing to continue.", param=what)
    room = engine.n_ctx - prompt_tokens
    if room <= 0:
        raise GenerationError(
            f"This model's maximum context length is {engine.n_ctx} tokens. However, your {what} resulted in "
            f"{prompt_tokens} tokens. Please reduce the length of the {what}.",
            param=what,
            code="context_length_exceeded",
        )
    return room if max_tokens is None else min(max_tokens, room)


def prepare_chat(engine: TextGenerator, request: ChatRequest) -> Prepared:
    text = render_chat(engine, request)
    prompt = chat_tokens(engine, text)
    budget = fit_context(engine, len(prompt), request.max_tokens)
    template = _template(engine)
    calls = _call_format(request, template)
    schema, structure = request.json_schema, None
    if calls is not None:
        specs = [ToolSpec(t.name, t.parameters) for t in request.tools]
        # A named choice is one call of that tool, as OpenAI and vLLM make it.
        parallel = request.parallel_tool_calls and request.tool_choice in ("auto", "required")
        structure = calls.structure(specs, request.tool_choice, parallel)
        schema = None  # the structure holds the output; a JSON answer is not asked for too
    if schema is not None:
        try:
            engine.check_schema(schema)
        except InvalidSchema as exc:
            raise GenerationError(f"Invalid schema: {exc}", param="response_format", code="invalid_schema") from exc
    if structure is not None:
        try:
            for choice in structure.choices:
                engine.check_schema(choice.schema)
        except InvalidSchema as exc:
            raise GenerationError(f"Invalid schema: {exc}", param="tools", code="invalid_schema") from exc
    # A reply held to a shape from its first token has no reasoning section to find.
    free = schema is None and (structure is None or structure.trigger is not None)
    harmony = is_harmony(template) and request.split_reasoning
    thinking = reasoning_format(template, text) if request.split_reasoning and free and not harmony else None
    # The markers the output is read by are shown even where they are special tokens.
    preserve = (calls.markers if calls else ()) + ((thinking.start, thinking.end) if thinking else ())
    if harmony:
        preserve += HARMONY.markers
    sampling = replace(request.sampling, max_tokens=budget, json_schema=schema, structure=structure, preserve=preserve)
    return Prepared(prompt, sampling, request.stop, calls, thinking, harmony)


def count_chat_tokens(engine: TextGenerator, request: ChatRequest) -> int:
    return len(chat_tokens(engine, render_chat(engine, request)))


def chat_tokens(engine: TextGenerator, text: str) -> list[int]:
    """A rendered chat's tokens. A template that writes the BOS itself (Gemma's, Llama's) gets no
    second one from a tokenizer that adds it too, as llama.cpp's chat code avoids it."""
    bos = engine.bos_text
    if bos and text.startswith(bos) and engine.tokenize("", special=True):
        text = text[len(bos) :]
    return engine.tokenize(text)


# -- generation ------------------------------------------------------------------------------


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


# -- on the event loop -----------------------------------------------------------------------


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


@dataclass
class Answer:
    """A whole answer, collected from its events."""

    deltas: list[TextDelta]
    calls: list[ToolCall]
    finished: Finished
    reasoning: str = ""

    @property
    def text(self) -> str:
        return "".join(delta.text for delta in self.deltas)


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
