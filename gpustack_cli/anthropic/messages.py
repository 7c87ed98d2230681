"""Anthropic's `POST /v1/messages` and `/v1/messages/count_tokens`: a second translator onto the
same text core as OpenAI's chat (`gpustack_cli.core`), with Anthropic's blocks, stop reasons,
event stream and error shape. Claude Code's `anthropic-version` header and `?beta=true` are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from engines.base import Sampling, TextGenerator
from gpustack_cli.core import json_values
from gpustack_cli.core.limits import check_chat
from gpustack_cli.core.media import b64, data_part
from gpustack_cli.core.prompts import count_chat_tokens
from gpustack_cli.core.streams import collect
from gpustack_cli.core.types import (
    MEDIA_MARKER,
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
)
from gpustack_cli.models.store import Category
from gpustack_cli.server.context import (
    REQUEST_ID,
    chat_backend,
    context,
    engine_for,
    keep_alive_of,
    read_json,
    resolve_model,
)
from gpustack_cli.server.sse import EventStream
from gpustack_cli.server.wire import json_response

STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextBlock(Wire):
    type: Literal["text"]
    text: str


class ToolUseBlock(Wire):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(Wire):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] = ""
    is_error: bool = False


class ThinkingBlock(Wire):
    """An earlier answer's thinking, sent back: accepted, and left out of the prompt (chat
    templates drop the reasoning of earlier turns, as `clear_thinking` asks)."""

    type: Literal["thinking", "redacted_thinking"]


class ImageSource(Wire):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(Wire):
    type: Literal["image"]
    source: ImageSource


class OtherBlock(Wire):
    type: Literal["document", "search_result"]


Block = TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | ImageBlock | OtherBlock


class Message(Wire):
    # Claude Code sends `system` messages among the others: they are rendered where they stand
    # when the model's template allows, else joined to the system prompt (prompts.render_chat).
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class ToolDef(Wire):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolChoice(Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class ThinkingConfig(Wire):
    type: Literal["enabled", "disabled", "adaptive"]
    # Accepted: `max_tokens` bounds the thinking and the answer together.
    budget_tokens: Annotated[int, Field(ge=0)] | None = None


class OutputFormat(Wire):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Wire):
    model_config = ConfigDict(extra="forbid")
    # How hard to think: passed to templates that take it, as OpenAI's `reasoning_effort`.
    effort: Literal["low", "medium", "high", "max"] | None = None
    # Structured output: the answer held to this JSON schema by grammar.
    format: OutputFormat | None = None


class ContextEdit(Wire):
    # Clearing earlier thinking is what the chat templates do anyway; earlier tool results are
    # kept (their context is the model's own here, with no server-side cache to trim).
    type: Literal["clear_thinking_20251015", "clear_tool_uses_20250919"]


class ContextManagement(Wire):
    edits: list[ContextEdit] = Field(default_factory=list)


# Fields that change nothing in a local answer, accepted and ignored; any other field this body
# does not declare is a 400 naming it (it would change the answer, and cannot be honoured).
IGNORED_FIELDS = frozenset({"service_tier", "container", "inference_geo", "cache_control"})


class CountTokensBody(Wire):
    """What shapes the prompt: the messages, the system prompt, the tools, and the switches the
    chat template is told of."""

    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    # Extended thinking: the model's reasoning comes back as `thinking` blocks, and a template
    # that can switch thinking on or off (`enable_thinking`) is told which.
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    # The structured-outputs beta's spelling of `output_config.format`.
    output_format: OutputFormat | None = None
    context_management: ContextManagement | None = None
    metadata: dict[str, Any] | None = None

    @property
    def json_schema(self) -> dict[str, Any] | None:
        found = (self.output_config.format if self.output_config else None) or self.output_format
        return found.schema_ if found else None

    @property
    def thinking_shown(self) -> bool:
        return self.thinking is not None and self.thinking.type != "disabled"


class MessagesBody(CountTokensBody):
    max_tokens: Annotated[int, Field(ge=1)]
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    # Our extension (Anthropic has none): reproducible sampling, as OpenAI's `seed`.
    seed: int | None = None
    stream: bool = False
    keep_alive: str | int | float | None = None

    def sampling(self) -> Sampling:
        return Sampling.of(
            self.max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed
        )


def _text(content: str | list[TextBlock]) -> str:
    # Text blocks go to the template as one text, a line apart, as OpenAI's text parts do.
    return content if isinstance(content, str) else "\n".join(b.text for b in content)


def _messages(body: CountTokensBody) -> list[ChatMessage]:
    messages = [ChatMessage("system", _text(body.system))] if body.system else []
    for index, message in enumerate(body.messages):
        if isinstance(message.content, str):
            messages.append(ChatMessage(message.role, message.content))
            continue
        texts: list[str] = []
        calls: list[ToolCall] = []
        media: list[MediaPart] = []
        for number, block in enumerate(message.content):
            if isinstance(block, OtherBlock):
                raise GenerationError(
                    f"messages.{index}.content: this server reads text and images, not '{block.type}' blocks"
                )
            if isinstance(block, ThinkingBlock):
                continue
            if isinstance(block, ImageBlock):
                media.append(_image(block.source, f"messages.{index}.content.{number}.source"))
                texts.append(MEDIA_MARKER)
            elif isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ToolUseBlock):
                calls.append(ToolCall(block.id, block.name, json.dumps(block.input)))
            else:
                result = _text(block.content)
                messages.append(
                    ChatMessage(
                        "tool", f"Error: {result}" if block.is_error else result, tool_call_id=block.tool_use_id
                    )
                )
        if texts or calls:
            messages.append(ChatMessage(message.role, "\n".join(texts), calls, media=media))
    return messages


def _image(source: ImageSource, param: str) -> MediaPart:
    if source.type == "url":
        if not source.url:
            raise GenerationError(f"{param}.url: an image source of type 'url' needs a url", param=param)
        return data_part("image", source.url, param)
    if not source.data:
        raise GenerationError(f"{param}.data: an image source of type 'base64' needs data", param=param)
    return MediaPart("image", param, data=b64(source.data, f"{param}.data"))


def refuse_unknown(body: CountTokensBody) -> None:
    """A 400 naming the first field this route neither serves nor may ignore."""
    unknown = sorted(set(body.model_extra or {}) - IGNORED_FIELDS)
    if unknown:
        raise GenerationError(f"{unknown[0]}: this parameter is not supported here (it would change the answer)")


def chat_request(body: CountTokensBody) -> ChatRequest:
    refuse_unknown(body)
    tools = [Tool(t.name, t.description, t.input_schema) for t in body.tools or []]
    choice = body.tool_choice or ToolChoice(type="auto")
    mode = {"auto": "auto", "any": "required", "none": "none", "tool": choice.name or ""}[choice.type]
    if choice.type == "tool" and mode not in {t.name for t in tools}:
        raise GenerationError(f"tool_choice: no tool named '{choice.name}' in tools")
    if choice.type == "any" and not tools:
        raise GenerationError("tool_choice: 'any' needs tools")
    sampling = body.sampling() if isinstance(body, MessagesBody) else Sampling.of()
    variables: dict[str, Any] = {}
    if body.thinking is not None:
        variables["enable_thinking"] = body.thinking_shown
    if body.output_config and body.output_config.effort:
        variables["reasoning_effort"] = body.output_config.effort
    return ChatRequest(
        messages=_messages(body),
        sampling=sampling,
        max_tokens=body.max_tokens if isinstance(body, MessagesBody) else None,
        stop=list(body.stop_sequences or []) if isinstance(body, MessagesBody) else [],
        tools=tools,
        tool_choice=mode,
        json_schema=body.json_schema,
        template_kwargs=variables,
        parallel_tool_calls=not choice.disable_parallel_tool_use,
    )


def checked_chat(request: web.Request, body: CountTokensBody) -> ChatRequest:
    chat = chat_request(body)
    check_chat(
        chat,
        context(request).settings.limits,
        schema_param="output_config.format",
        tool_field="input_schema",
        stop_param="stop_sequences",
    )
    return chat


def _tool_use(call: ToolCall) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": "toolu_" + call.id.removeprefix("call_"),
        "name": call.name,
        "input": json_values.loads(call.arguments),
    }


def _stop(finished: Finished) -> tuple[str, str | None]:
    if finished.stop_sequence is not None:
        return "stop_sequence", finished.stop_sequence
    return STOP_REASONS.get(finished.reason, "end_turn"), None


async def messages(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, MessagesBody)
    chat = checked_chat(request, body)
    manifest = resolve_model(request, body.model, Category.llm, "messages")
    async with chat_backend(request, manifest, keep_alive_of(request, body.keep_alive)) as backend:
        run = await backend.start(chat, request[REQUEST_ID])
        return await _respond(request, body, manifest.name, run.events, run.prompt_tokens)


async def _respond(
    request: web.Request, body: MessagesBody, model: str, events: AsyncIterator[Event], prompt_tokens: int
) -> web.StreamResponse:
    message_id = f"msg_{secrets.token_hex(12)}"
    thinking = body.thinking_shown
    if body.stream:
        return await _stream(request, stream_events(events, message_id, model, prompt_tokens, thinking))
    return json_response(message_of(await collect(events), message_id, model, thinking))


def message_of(answer: Answer, message_id: str, model: str, thinking: bool = False) -> dict[str, Any]:
    """Anthropic's `Message` for a whole answer: its thinking (when asked for), a text block, then
    a tool_use block per call."""
    finished = answer.finished
    content: list[dict[str, Any]] = []
    if thinking and answer.reasoning:
        content.append({"type": "thinking", "thinking": answer.reasoning, "signature": ""})
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    content += [_tool_use(call) for call in answer.calls]
    stop_reason, stop_sequence = _stop(finished)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": finished.prompt_tokens, "output_tokens": finished.completion_tokens},
    }


async def stream_events(
    events: AsyncIterator[Event], message_id: str, model: str, prompt_tokens: int, thinking: bool = False
) -> AsyncIterator[dict[str, Any]]:
    """Anthropic's stream for the text core's `events`: `message_start`, `ping`, a
    `content_block_start`/`_delta`/`_stop` run per thinking (when asked for), text or tool_use
    block, then `message_delta` (stop reason, usage) and `message_stop`. Each item is one event's
    data; its `type` names it."""
    start = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
    }
    yield {"type": "message_start", "message": start}
    yield {"type": "ping"}
    index, open_kind = -1, None  # the block being written: "thinking" or "text"
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, ReasoningDelta) and not thinking:
                continue
            kind = "thinking" if isinstance(event, ReasoningDelta) else "text" if isinstance(event, TextDelta) else None
            if open_kind is not None and kind != open_kind:
                yield {"type": "content_block_stop", "index": index}
                open_kind = None
            if isinstance(event, ReasoningDelta | TextDelta):
                if open_kind is None:  # a block opens with its first piece, never empty
                    index, open_kind = index + 1, kind
                    block = (
                        {"type": "thinking", "thinking": "", "signature": ""}
                        if kind == "thinking"
                        else {"type": "text", "text": ""}
                    )
                    yield {"type": "content_block_start", "index": index, "content_block": block}
                if isinstance(event, ReasoningDelta):
                    delta = {"type": "thinking_delta", "thinking": event.text}
                else:
                    delta = {"type": "text_delta", "text": event.text}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
            elif isinstance(event, ToolCallEvent):
                index += 1
                block = {**_tool_use(event.call), "input": {}}
                yield {"type": "content_block_start", "index": index, "content_block": block}
                delta = {"type": "input_json_delta", "partial_json": event.call.arguments}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
                yield {"type": "content_block_stop", "index": index}
            else:
                stop_reason, stop_sequence = _stop(event)
                yield {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": {"output_tokens": event.completion_tokens},
                }
                yield {"type": "message_stop"}


# Anthropic's own keep-alive event, as its API sends it while a stream is silent.
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


async def _stream(request: web.Request, items: AsyncIterator[dict[str, Any]]) -> web.StreamResponse:
    stream = EventStream(request, ping=PING)
    await stream.open()
    try:
        async with contextlib.aclosing(items):
            async for item in items:
                await stream.send(item, event=item["type"])
    except Exception as exc:
        await stream.fail(exc, event="error")
    return await stream.close()


async def count_tokens(request: web.Request) -> web.Response:
    body = await read_json(request, CountTokensBody)
    chat = checked_chat(request, body)
    manifest = resolve_model(request, body.model, Category.llm, "messages")
    async with engine_for(request, manifest, TextGenerator) as engine:
        count = await asyncio.to_thread(count_chat_tokens, engine, chat)
    return json_response({"input_tokens": count})
