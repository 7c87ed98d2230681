"""OpenAI's `POST /v1/chat/completions` and `POST /v1/completions`: wire JSON to the text core and back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engines.base import Sampling, TextGenerator
from gpustack_cli import __version__
from gpustack_cli.core.choices import Choice, collected, merged, seeded
from gpustack_cli.core.limits import capped, check_chat, check_stops, check_text_size, fit_context
from gpustack_cli.core.media import b64, data_part, data_url
from gpustack_cli.core.prompts import Prepared, fill_in_the_middle, prepare_chat
from gpustack_cli.core.streams import chat_events, text_events
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
from gpustack_cli.openai.answers import ChatCompletion, Completion
from gpustack_cli.server.context import REQUEST_ID, context, engine_for, keep_alive_of, read_json, resolve_model
from gpustack_cli.server.operations import STREAM, Operation, operation
from gpustack_cli.server.routing import model_route
from gpustack_cli.server.sse import EventStream
from gpustack_cli.server.wire import json_response

# A token id as a `logit_bias` key: what int() reads, in ASCII digits (str.isdigit takes "²").
_INTEGER = re.compile(r"-?[0-9]{1,10}")

# -- wire types --------------------------------------------------------------------------------


class Wire(BaseModel):
    # Clients send fields we do not use (store, metadata, service_tier, ...): accept and ignore.
    model_config = ConfigDict(extra="allow")


class TextPart(Wire):
    type: Literal["text"]
    text: str


class ImageUrl(Wire):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Wire):
    type: Literal["image_url"]
    # Some clients send the URL itself rather than the object.
    image_url: ImageUrl | str


class InputAudio(Wire):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(Wire):
    type: Literal["input_audio"]
    input_audio: InputAudio


class OtherPart(Wire):
    type: Literal["file", "refusal"]


class FunctionCall(Wire):
    name: str
    arguments: str = ""


class WireToolCall(Wire):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Wire):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart | AudioPart | OtherPart] | None = None
    name: str | None = None
    tool_calls: list[WireToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(Wire):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class WireTool(Wire):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedToolChoice(Wire):
    type: Literal["function"] = "function"
    function: dict[str, str]


class JsonSchemaFormat(Wire):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(Wire):
    include_usage: bool = False


Stop = str | list[str] | None


class SamplingFields(Wire):
    """The sampling fields chat and completions share (with llama.cpp's extras)."""

    model: str
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    seed: int | None = None
    stop: Stop = None
    n: Annotated[int, Field(ge=1, le=16)] = 1
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    keep_alive: str | int | float | None = None

    def sampling(self, logprobs: int | None) -> Sampling:
        """The sampling these fields ask for (`max_tokens` is set per prompt, from the context left)."""
        bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            if not _INTEGER.fullmatch(key):
                raise GenerationError(f"Invalid key in 'logit_bias': {key!r} is not a token id.", param="logit_bias")
            bias[int(key)] = value
        return Sampling.of(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty or None,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
            logit_bias=bias,
            logprobs=logprobs,
        )


class ChatCompletionBody(SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[WireTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Variables for the model's chat template (vLLM's and llama-server's extension), such as
    # `enable_thinking`; `reasoning_effort` reaches the template under its own name.
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionBody:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs' set to true")
        return self


Prompt = str | list[str] | Annotated[list[int], Field(min_length=1)] | list[Annotated[list[int], Field(min_length=1)]]


class CompletionBody(SamplingFields):
    prompt: Prompt
    suffix: str | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = 16
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    best_of: Annotated[int, Field(ge=1, le=16)] | None = None


# -- wire to core ------------------------------------------------------------------------------


def _stops(stop: Stop) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def _content_of(message: Message, index: int) -> tuple[str, list[MediaPart]]:
    """A message's text and media: the parts go to the template as one text, a line apart (as
    llama.cpp and vLLM join them), with the media marker where each image or clip stood."""
    if message.content is None or isinstance(message.content, str):
        return message.content or "", []
    texts: list[str] = []
    media: list[MediaPart] = []
    for number, part in enumerate(message.content):
        param = f"messages[{index}].content[{number}]"
        if isinstance(part, TextPart):
            texts.append(part.text)
            continue
        if isinstance(part, ImagePart):
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            media.append(data_part("image", url, f"{param}.image_url"))
        elif isinstance(part, AudioPart):
            data = b64(part.input_audio.data, f"{param}.input_audio.data")
            media.append(MediaPart("audio", f"{param}.input_audio", data=data, format=part.input_audio.format))
        else:
            raise GenerationError(
                f"Invalid content part in messages[{index}]: '{part.type}' parts are not read by this server.",
                param=param,
                code="unsupported_content",
            )
        texts.append(MEDIA_MARKER)
    return "\n".join(texts), media


def chat_request(body: ChatCompletionBody) -> ChatRequest:
    messages = []
    for index, m in enumerate(body.messages):
        calls = [ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or []]
        role = "system" if m.role == "developer" else m.role
        text, media = _content_of(m, index)
        messages.append(ChatMessage(role, text, calls, m.tool_call_id, media))
    tools = [Tool(t.function.name, t.function.description, t.function.parameters) for t in body.tools or []]
    choice = body.tool_choice or "auto"
    if isinstance(choice, NamedToolChoice):
        choice = choice.function.get("name", "")
        if choice not in {t.name for t in tools}:
            raise GenerationError(f"Invalid 'tool_choice': no tool named '{choice}' in 'tools'.", param="tool_choice")
    elif choice == "required" and not tools:
        raise GenerationError("Invalid 'tool_choice': 'required' needs 'tools'.", param="tool_choice")
    schema = None
    if body.response_format and body.response_format.type == "json_object":
        schema = {"type": "object"}
    elif body.response_format and body.response_format.type == "json_schema":
        if body.response_format.json_schema is None:
            raise GenerationError("Missing required parameter: 'response_format.json_schema'.", param="response_format")
        schema = body.response_format.json_schema.schema_
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    variables = dict(body.chat_template_kwargs or {})
    if body.reasoning_effort is not None:
        variables.setdefault("reasoning_effort", body.reasoning_effort)
    return ChatRequest(
        messages=messages,
        sampling=body.sampling(logprobs),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        stop=_stops(body.stop),
        tools=tools,
        tool_choice=choice,
        json_schema=schema,
        template_kwargs=variables,
        parallel_tool_calls=body.parallel_tool_calls is not False,
    )


# -- core to wire ------------------------------------------------------------------------------


def _wire_content(message: ChatMessage) -> str | list[TextPart | ImagePart | AudioPart | OtherPart]:
    """A message's content for another server: its text, or parts where it holds media."""
    if not message.media:
        return message.content
    parts: list[TextPart | ImagePart | AudioPart | OtherPart] = []
    texts = message.content.split(MEDIA_MARKER)
    for text, part in zip(texts, [*message.media, None], strict=True):
        if text.strip("\n"):
            parts.append(TextPart(type="text", text=text.strip("\n")))
        if part is None:
            continue
        if part.kind == "audio":
            data = base64.b64encode(part.data or b"").decode()
            parts.append(AudioPart(type="input_audio", input_audio=InputAudio(data=data, format=part.format or "wav")))
        else:
            parts.append(ImagePart(type="image_url", image_url=ImageUrl(url=part.url or data_url(part.data or b""))))
    return parts


def chat_body(chat: ChatRequest, model: str) -> dict[str, Any]:
    """A streamed chat completions request for `chat`, as another OpenAI-compatible server takes
    it (usage included in the stream)."""
    messages = [
        Message(
            role=m.role,
            content=_wire_content(m),
            tool_calls=[_wire_call(c) for c in m.tool_calls] or None,
            tool_call_id=m.tool_call_id,
        )
        for m in chat.messages
    ]
    tools = [
        WireTool(type="function", function=FunctionDef(name=t.name, description=t.description, parameters=t.parameters))
        for t in chat.tools
    ]
    choice = chat.tool_choice
    response_format = None
    if chat.json_schema is not None:
        response_format = ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(schema=chat.json_schema))
    body = ChatCompletionBody(
        model=model,
        messages=messages,
        stream=True,
        stream_options=StreamOptions(include_usage=True),
        temperature=chat.sampling.temperature,
        top_p=chat.sampling.top_p,
        seed=chat.sampling.seed,
        max_tokens=chat.max_tokens,
        stop=chat.stop or None,
        response_format=response_format,
        tools=tools or None,
        tool_choice=None
        if not tools
        else choice
        if choice in ("auto", "none", "required")
        else NamedToolChoice(type="function", function={"name": choice}),
        parallel_tool_calls=False if tools and not chat.parallel_tool_calls else None,
    )
    return body.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)


def _wire_call(call: ToolCall) -> WireToolCall:
    return WireToolCall(id=call.id, type="function", function=FunctionCall(name=call.name, arguments=call.arguments))


async def events_of_chunks(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[Event]:
    """The text core's events of a streamed chat completion's chunks (its first choice): text and
    reasoning as they come, tool calls once their arguments are whole, then the end with the usage
    reported."""
    calls: dict[int, list[str]] = {}
    reason, usage = "stop", {}
    async for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                yield ReasoningDelta(delta["reasoning_content"])
            if delta.get("content"):
                yield TextDelta(delta["content"])
            for call in delta.get("tool_calls") or []:
                entry = calls.setdefault(call.get("index", 0), ["", "", ""])
                function = call.get("function") or {}
                entry[0] = call.get("id") or entry[0]
                entry[1] += function.get("name") or ""
                entry[2] += function.get("arguments") or ""
            reason = choice.get("finish_reason") or reason
    for index, (call_id, name, arguments) in sorted(calls.items()):
        yield ToolCallEvent(index, ToolCall(call_id, name, arguments or "{}"))
    finish = reason if reason in ("stop", "length", "tool_calls") else "stop"
    yield Finished(finish, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))


def logprob_entry(lp: Any) -> dict[str, Any]:
    """A token's log probability as OpenAI's chat and Responses APIs write it."""
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": lp.bytes,
        "top_logprobs": [{"token": t, "logprob": p, "bytes": b} for t, b, p in lp.top],
    }


def _usage(prompt: int, completion: int, reasoning: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


# Changes when the serving code changes, as OpenAI's does with its backend.
FINGERPRINT = f"fp_gpustack_{__version__}"


class Envelope:
    """The id, timestamp and model every object of one response shares."""

    def __init__(self, prefix: str, model: str):
        self.id = f"{prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model

    def wrap(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            **fields,
        }


def chat_choice(answer: Answer, index: int, with_logprobs: bool) -> dict[str, Any]:
    """A chat completion's `choices[index]` for a whole answer."""
    calls = [_tool_call(call) for call in answer.calls]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.text if answer.text or not calls else None,
        "refusal": None,
    }
    if answer.reasoning:
        message["reasoning_content"] = answer.reasoning
    if calls:
        message["tool_calls"] = calls
    logprobs = [logprob_entry(lp) for delta in answer.deltas for lp in delta.logprobs]
    return {
        "index": index,
        "message": message,
        "logprobs": {"content": logprobs, "refusal": None} if with_logprobs else None,
        "finish_reason": answer.finished.reason,
    }


def chunk_deltas(event: Event, with_logprobs: bool) -> list[tuple[dict[str, Any], str | None, Any]]:
    """The `(delta, finish_reason, logprobs)` of the chunks that stream one event of a choice: a
    text piece; a piece of reasoning (`reasoning_content`, as DeepSeek's API and vLLM stream it);
    a tool call as OpenAI streams one (its id and name, then its arguments); the end."""
    if isinstance(event, TextDelta):
        logprobs = None
        if with_logprobs:
            logprobs = {"content": [logprob_entry(lp) for lp in event.logprobs], "refusal": None}
        return [({"content": event.text}, None, logprobs)]
    if isinstance(event, ReasoningDelta):
        return [({"reasoning_content": event.text}, None, None)]
    if isinstance(event, ToolCallEvent):
        call = event.call
        function = {"name": call.name, "arguments": ""}
        opening = {"index": event.index, "id": call.id, "type": "function", "function": function}
        arguments = {"index": event.index, "function": {"arguments": call.arguments}}
        return [({"tool_calls": [opening]}, None, None), ({"tool_calls": [arguments]}, None, None)]
    return [({}, event.reason, None)]


def _chat_choices(engine: TextGenerator, prepared: Prepared, n: int, rid: str) -> list[Choice]:
    return [lambda i=i: chat_events(engine, seeded(prepared, i), f"{rid}-{i}") for i in range(n)]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    rid = request[REQUEST_ID]
    body = await read_json(request, ChatCompletionBody)
    chat = chat_request(body)
    check_chat(chat, context(request).settings.limits)
    manifest = resolve_model(request, body.model, Category.llm, "chat completions")
    async with engine_for(request, manifest, TextGenerator, keep_alive_of(request, body.keep_alive)) as engine:
        prepared = await asyncio.to_thread(prepare_chat, engine, chat)
        envelope = Envelope("chatcmpl", manifest.name)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return await _stream_chat(request, engine, prepared, body.n, envelope, usage)
        choices = _chat_choices(engine, prepared, body.n, rid)
        answers = await collected(choices, prepared.sampling.seed is not None, engine.max_concurrency)
        logprobs = prepared.sampling.logprobs is not None
        prompt = answers[0].finished.prompt_tokens
        completion = sum(answer.finished.completion_tokens for answer in answers)
        reasoning = sum(answer.finished.reasoning_tokens for answer in answers)
        usage = _usage(prompt, completion, reasoning)
        choices = [chat_choice(answer, index, logprobs) for index, answer in enumerate(answers)]
        return json_response(envelope.wrap("chat.completion", choices=choices, usage=usage))


async def _stream_chat(
    request: web.Request, engine: TextGenerator, prepared: Prepared, n: int, envelope: Envelope, usage: bool
) -> web.StreamResponse:
    rid = request[REQUEST_ID]
    stream = EventStream(request)
    await stream.open()

    async def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> None:
        choice = {"index": index, "delta": delta, "finish_reason": finish}
        if logprobs is not None:
            choice["logprobs"] = logprobs
        await stream.send(envelope.wrap("chat.completion.chunk", choices=[choice]))

    prompt = completion = reasoning = 0
    choices = _chat_choices(engine, prepared, n, rid)
    try:
        for index in range(n):  # each choice's first chunk says whose it is, as OpenAI's do
            await chunk(index, {"role": "assistant", "content": "", "refusal": None})
        sequential = prepared.sampling.seed is not None
        async with contextlib.aclosing(merged(choices, sequential, engine.max_concurrency)) as events:
            async for index, event in events:  # the choices interleaved, as they come
                for delta, finish, logprobs in chunk_deltas(event, prepared.sampling.logprobs is not None):
                    await chunk(index, delta, finish, logprobs)
                if isinstance(event, Finished):
                    prompt, completion = event.prompt_tokens, completion + event.completion_tokens
                    reasoning += event.reasoning_tokens
        if usage:
            usage_chunk = envelope.wrap(
                "chat.completion.chunk", choices=[], usage=_usage(prompt, completion, reasoning)
            )
            await stream.send(usage_chunk)
        await stream.send("[DONE]")
    except Exception as exc:
        # Headers are gone: report in the stream, as OpenAI does, and end it cleanly.
        await stream.fail(exc)
    return await stream.close()


# -- legacy completions ------------------------------------------------------------------------


def _prompts(body: CompletionBody, engine: TextGenerator) -> list[list[int]]:
    prompt = body.prompt
    if isinstance(prompt, str):
        texts: list[str | list[int]] = [prompt]
    elif prompt and isinstance(prompt[0], int):
        texts = [prompt]  # type: ignore[list-item]
    else:
        texts = list(prompt)  # type: ignore[arg-type]
    if not texts:
        raise GenerationError("Invalid 'prompt': it is empty.", param="prompt")
    return [engine.tokenize(t) if isinstance(t, str) else list(t) for t in texts]


def _prompt_count(prompt: Prompt) -> int:
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return 1
    return len(prompt)


def _prompt_chars(prompt: Prompt) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(p) for p in prompt if isinstance(p, str | list))


def completion_logprobs(deltas: list[TextDelta], offset: int) -> dict[str, Any]:
    """A legacy completion's `logprobs` for the text `deltas` hold, which begins at character
    `offset` of the choice's text (after an echoed prompt)."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    for delta in deltas:
        for lp in delta.logprobs:
            offsets.append(offset)
            offset += len(lp.token)
            tokens.append(lp.token)
            token_logprobs.append(lp.logprob)
            top.append({t: p for t, _b, p in lp.top})
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def _completion_choices(engine: TextGenerator, prepared: list[Prepared], n: int, rid: str) -> list[Choice]:
    """Choice `p * n + i` is the `i`th of the n of prompt `p`, as OpenAI numbers them."""
    return [
        lambda p=p, i=i: text_events(engine, seeded(prepared[p], i), f"{rid}-{p * n + i}")
        for p in range(len(prepared))
        for i in range(n)
    ]


async def completions(request: web.Request) -> web.StreamResponse:
    rid = request[REQUEST_ID]
    body = await read_json(request, CompletionBody)
    if body.best_of is not None and body.best_of != body.n:
        raise GenerationError("'best_of' other than 'n' is not supported: ask for n choices instead.", param="best_of")
    if body.echo and body.logprobs is not None:
        raise GenerationError("'echo' together with 'logprobs' is not supported.", param="echo")
    settings = context(request).settings
    check_text_size(_prompt_chars(body.prompt) + len(body.suffix or ""), settings.limits, "prompt")
    check_stops(_stops(body.stop), settings.limits)
    choices = _prompt_count(body.prompt) * body.n
    if choices > settings.max_choices:
        raise GenerationError(
            f"This request asks for {choices} completions (prompts x n); the limit is {settings.max_choices}.",
            param="n" if body.n > 1 else "prompt",
        )
    manifest = resolve_model(request, body.model, Category.llm, "completions")
    async with engine_for(request, manifest, TextGenerator, keep_alive_of(request, body.keep_alive)) as engine:
        sampling = body.sampling(body.logprobs)
        prompts = await asyncio.to_thread(_prompts, body, engine)
        if body.suffix:
            prompts = [fill_in_the_middle(engine, p, body.suffix) for p in prompts]
        prepared = []
        for tokens in prompts:
            budget = fit_context(engine, len(tokens), capped(body.max_tokens, settings.limits), what="prompt")
            prepared.append(Prepared(tokens, replace(sampling, max_tokens=budget), _stops(body.stop)))
        envelope = Envelope("cmpl", manifest.name)
        heads = [engine.detokenize(p.prompt_tokens) if body.echo else "" for p in prepared]
        choices = _completion_choices(engine, prepared, body.n, rid)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return await _stream_completion(request, engine, choices, heads, body, envelope, usage)
        answers = await collected(choices, body.seed is not None, engine.max_concurrency)
        wire = []
        for index, answer in enumerate(answers):
            head = heads[index // body.n]
            text = head + "".join(d.text for d in answer.deltas)
            logprobs = completion_logprobs(answer.deltas, len(head)) if body.logprobs is not None else None
            wire.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": answer.finished.reason})
        prompt_total = sum(answer.finished.prompt_tokens for answer in answers[:: body.n])
        usage = _usage(prompt_total, sum(answer.finished.completion_tokens for answer in answers))
        return json_response(envelope.wrap("text_completion", choices=wire, usage=usage))


async def _stream_completion(
    request: web.Request,
    engine: TextGenerator,
    choices: list[Choice],
    heads: list[str],
    body: CompletionBody,
    envelope: Envelope,
    usage: bool,
) -> web.StreamResponse:
    stream = EventStream(request)
    await stream.open()

    async def chunk(index: int, text: str, finish: str | None = None, logprobs: Any = None) -> None:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        await stream.send(envelope.wrap("text_completion", choices=[choice]))

    prompt_total = completion_total = 0
    # Where each choice's text has got to (its echoed prompt first), for its logprobs' offsets.
    offsets = [len(heads[index // body.n]) for index in range(len(choices))]
    try:
        if body.echo:
            for index in range(len(choices)):
                await chunk(index, heads[index // body.n])
        async with contextlib.aclosing(merged(choices, body.seed is not None, engine.max_concurrency)) as events:
            async for index, event in events:  # the choices interleaved, as they come
                if isinstance(event, TextDelta):
                    logprobs = None
                    if body.logprobs is not None:
                        logprobs = completion_logprobs([event], offsets[index])
                    offsets[index] += len(event.text)
                    await chunk(index, event.text, logprobs=logprobs)
                elif isinstance(event, Finished):
                    prompt_total += event.prompt_tokens if index % body.n == 0 else 0
                    completion_total += event.completion_tokens
                    await chunk(index, "", finish=event.reason)
        if usage:
            await stream.send(
                envelope.wrap("text_completion", choices=[], usage=_usage(prompt_total, completion_total))
            )
        await stream.send("[DONE]")
    except Exception as exc:
        await stream.fail(exc)
    return await stream.close()


def add_routes(app: web.Application) -> None:
    chats = Operation(
        "POST",
        "/v1/chat/completions",
        "Chat completions",
        "openai",
        ChatCompletionBody,
        response=ChatCompletion,
        also=(STREAM,),
    )
    operation(app, model_route(Category.llm, "chat completions")(chat_completions), chats)
    texts = Operation(
        "POST", "/v1/completions", "Text completions", "openai", CompletionBody, response=Completion, also=(STREAM,)
    )
    operation(app, model_route(Category.llm, "completions")(completions), texts)
