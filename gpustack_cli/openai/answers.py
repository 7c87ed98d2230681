"""The shapes of OpenAI's answers as this server writes them, for the OpenAPI document: each
route's `operation` names its answer here (the converters write these shapes as plain dicts)."""

from __future__ import annotations

from typing import Any, Literal

from gpustack_cli.server.operations import Doc


class Usage(Doc):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CalledFunction(Doc):
    name: str
    arguments: str


class ToolCall(Doc):
    id: str
    type: Literal["function"]
    function: CalledFunction


class AssistantMessage(Doc):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(Doc):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None
    finish_reason: FinishReason


class ChatCompletion(Doc):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(Doc):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: FinishReason


class Completion(Doc):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class Embedding(Doc):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsage(Doc):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Doc):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Transcription(Doc):
    text: str


class Voices(Doc):
    model: str
    voices: list[str]
    default: str


class VoiceList(Doc):
    object: Literal["list"]
    data: list[Voices]


class ImageData(Doc):
    b64_json: str | None = None
    url: str | None = None


class Images(Doc):
    created: int
    data: list[ImageData]
    output_format: str


class ResponseUsage(Doc):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens_details: dict[str, int]


class ResponseObject(Doc):
    """A response of the Responses API; its `output` holds `message`, `reasoning` and
    `function_call` items as OpenAI's do."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    model: str
    output: list[dict[str, Any]]
    usage: ResponseUsage | None
    previous_response_id: str | None
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None


class ResponseDeleted(Doc):
    id: str
    object: Literal["response"]
    deleted: Literal[True]


class InputItemList(Doc):
    object: Literal["list"]
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class InputTokens(Doc):
    object: Literal["response.input_tokens"]
    input_tokens: int
