"""Pure converters between Ollama's wire JSON and the text core: a chat or a generate body to a
`ChatRequest`, the core's events to Ollama's chunks and final object, with its durations in
nanoseconds. No HTTP here."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engines.base import Sampling
from gpustack_cli.core import json_values
from gpustack_cli.core.media import b64
from gpustack_cli.core.types import (
    Answer,
    ChatMessage,
    ChatRequest,
    Event,
    Finished,
    GenerationError,
    MediaPart,
    ReasoningDelta,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallEvent,
    images_first,
)
from gpustack_cli.ollama import wire


def now() -> str:
    """Ollama's `created_at`: RFC 3339, UTC."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def sampling(options: wire.Options | None) -> Sampling:
    o = options or wire.Options()
    return Sampling.of(
        temperature=o.temperature,
        top_k=o.top_k,
        top_p=o.top_p,
        min_p=o.min_p,
        seed=o.seed,
        repeat_penalty=o.repeat_penalty or None,
        presence_penalty=o.presence_penalty,
        frequency_penalty=o.frequency_penalty,
    )


def max_tokens(options: wire.Options | None) -> int | None:
    """`num_predict`: a count, or (negative, or 0 as Ollama takes it) as many as the context allows."""
    value = options.num_predict if options else None
    return value if value is not None and value > 0 else None


def stops(options: wire.Options | None) -> list[str]:
    stop = options.stop if options else None
    return [stop] if isinstance(stop, str) else list(stop or [])


def schema_of(format: wire.Format) -> dict[str, Any] | None:
    if format == "json":
        return {"type": "object"}
    return format or None


def thinking_variables(think: wire.Think) -> dict[str, Any]:
    """The template variables of `think`: on or off (`enable_thinking`), or how hard."""
    if think is None:
        return {}
    if isinstance(think, bool):
        return {"enable_thinking": think}
    return {"enable_thinking": True, "reasoning_effort": think}


def _with_images(role: str, content: str, images: list[str] | None, param: str) -> ChatMessage:
    """A message with its images (base64, as Ollama sends them) before its text, as Ollama puts them."""
    media = [
        MediaPart("image", f"{param}[{i}]", data=b64(image, f"{param}[{i}]")) for i, image in enumerate(images or [])
    ]
    return images_first(role, content, media)  # type: ignore[arg-type]


def _arguments(arguments: dict[str, Any] | str) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def chat_messages(messages: list[wire.OllamaMessage]) -> list[ChatMessage]:
    """The conversation in the core's terms. Ollama names the tool a result answers (`tool_name`),
    not the call: a result goes to the earliest call of that tool still unanswered (the last
    unanswered call where no name matches), as the calls were made in order."""
    out: list[ChatMessage] = []
    unanswered: list[ToolCall] = []
    count = 0
    for index, m in enumerate(messages):
        if m.role == "assistant" and m.tool_calls:
            calls = []
            for call in m.tool_calls:
                count += 1
                calls.append(
                    ToolCall(call.id or f"call_{count}", call.function.name, _arguments(call.function.arguments))
                )
            unanswered = calls[:]  # a new turn of calls: earlier ones went unanswered for good
            out.append(ChatMessage("assistant", m.content, calls))
        elif m.role == "tool":
            answered = next((c for c in unanswered if c.id == m.tool_call_id), None)
            answered = answered or next((c for c in unanswered if c.name == m.tool_name), None)
            answered = answered or (unanswered[-1] if unanswered else None)
            if answered is not None:
                unanswered.remove(answered)
            out.append(ChatMessage("tool", m.content, tool_call_id=answered.id if answered else m.tool_call_id))
        else:
            out.append(_with_images(m.role, m.content, m.images, f"messages[{index}].images"))
    return out


def chat_request(body: wire.ChatBody) -> ChatRequest:
    tools = [Tool(t.function.name, t.function.description, t.function.parameters) for t in body.tools or []]
    return ChatRequest(
        chat_messages(body.messages),
        sampling(body.options),
        max_tokens=max_tokens(body.options),
        stop=stops(body.options),
        tools=tools,
        json_schema=schema_of(body.format),
        template_kwargs=thinking_variables(body.think),
    )


def generate_request(body: wire.GenerateBody) -> ChatRequest:
    """A templated generate: the prompt (and its images) as a user's turn after the system
    prompt, if any."""
    messages = [ChatMessage("system", body.system)] if body.system else []
    return ChatRequest(
        [*messages, _with_images("user", body.prompt or "", body.images, "images")],
        sampling(body.options),
        max_tokens=max_tokens(body.options),
        stop=stops(body.options),
        json_schema=schema_of(body.format),
        template_kwargs=thinking_variables(body.think),
    )


def refuse_unsupported(body: wire.GenerateBody) -> None:
    if body.context:
        raise GenerationError(
            "'context' (deprecated by Ollama) is not supported: send the conversation to /api/chat.", param="context"
        )
    if body.template:
        raise GenerationError(
            "'template' (a Go template) is not supported: send 'raw': true with the prompt written in the "
            "model's format, or leave the model's own template to format it.",
            param="template",
        )
    if (body.raw or body.suffix) and body.images:
        raise GenerationError(
            "'images' need the model's template to place them: leave 'raw' and 'suffix' off to send images.",
            param="images",
        )


def wire_call(call: ToolCall, index: int) -> dict[str, Any]:
    try:
        arguments = json_values.loads(call.arguments or "{}")
    except ValueError:
        arguments = {}
    return {"id": call.id, "function": {"index": index, "name": call.name, "arguments": arguments}}


def done_reason(finished: Finished) -> str:
    return "length" if finished.reason == "length" else "stop"


@dataclass
class Clock:
    """A request's times, for Ollama's durations (nanoseconds): begun, model ready, first token."""

    started: int = field(default_factory=time.perf_counter_ns)
    loaded: int | None = None
    first: int | None = None

    def ready(self) -> None:
        self.loaded = time.perf_counter_ns()

    async def timed(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """`events`, with the time of the first noted."""
        async with contextlib.aclosing(events):
            async for event in events:
                if self.first is None:
                    self.first = time.perf_counter_ns()
                yield event

    def durations(self, finished: Finished) -> dict[str, int]:
        end = time.perf_counter_ns()
        loaded = self.loaded or self.started
        first = self.first or end
        return {
            "total_duration": end - self.started,
            "load_duration": loaded - self.started,
            "prompt_eval_count": finished.prompt_tokens,
            "prompt_eval_duration": first - loaded,
            "eval_count": finished.completion_tokens,
            "eval_duration": end - first,
        }


def chat_message(text: str = "", thinking: str = "", calls: list[ToolCall] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = [wire_call(c, i) for i, c in enumerate(calls)]
    return message


def chat_chunk(model: str, event: Event) -> dict[str, Any] | None:
    """The chunk of a streamed chat for one event (None for the end: see `chat_final`)."""
    if isinstance(event, Finished):
        return None
    if isinstance(event, TextDelta):
        message = chat_message(event.text)
    elif isinstance(event, ReasoningDelta):
        message = chat_message(thinking=event.text)
    else:
        message = {"role": "assistant", "content": "", "tool_calls": [wire_call(event.call, event.index)]}
    return {"model": model, "created_at": now(), "message": message, "done": False}


def chat_final(model: str, finished: Finished, clock: Clock, message: dict[str, Any] | None = None) -> dict[str, Any]:
    """A chat's last object: the whole message when not streamed, an empty one after a stream."""
    return {
        "model": model,
        "created_at": now(),
        "message": message or chat_message(),
        "done": True,
        "done_reason": done_reason(finished),
        **clock.durations(finished),
    }


def chat_answer(model: str, answer: Answer, clock: Clock) -> dict[str, Any]:
    return chat_final(model, answer.finished, clock, chat_message(answer.text, answer.reasoning, answer.calls))


def generate_chunk(model: str, event: Event) -> dict[str, Any] | None:
    if isinstance(event, Finished | ToolCallEvent):
        return None
    chunk: dict[str, Any] = {"model": model, "created_at": now(), "response": "", "done": False}
    if isinstance(event, TextDelta):
        chunk["response"] = event.text
    else:
        chunk["thinking"] = event.text
    return chunk


def generate_final(model: str, finished: Finished, clock: Clock, text: str = "", thinking: str = "") -> dict[str, Any]:
    final: dict[str, Any] = {"model": model, "created_at": now(), "response": text, "done": True}
    if thinking:
        final["thinking"] = thinking
    return {**final, "done_reason": done_reason(finished), **clock.durations(finished)}


def lifecycle(model: str, reason: str, chat: bool) -> dict[str, Any]:
    """The answer to an empty request, which loads the model (or unloads it, with keep_alive 0)."""
    what = {"message": chat_message()} if chat else {"response": ""}
    return {"model": model, "created_at": now(), **what, "done": True, "done_reason": reason}
