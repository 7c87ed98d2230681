"""The server's own OpenAPI 3.1 document, `GET /openapi.json` (no key needed), generated from the
pydantic models the routes validate their bodies with, as FastAPI-based servers publish theirs.

Request bodies are the very models the handlers read (`read_json`, the form models). Responses
are described by the models below: the handlers write plain dicts (a streamed token must not pay
for a model), and the end-to-end tests hold what they write to these models. Errors have the
shape of each protocol (OpenAI's `{"error": {...}}`, Anthropic's `{"type": "error", ...}`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from gpustack_cli import __version__
from gpustack_cli.anthropic import messages as anthropic
from gpustack_cli.jina import rerank as jina
from gpustack_cli.native import tokenize as native
from gpustack_cli.openai import audio as openai_audio
from gpustack_cli.openai import chat as openai_chat
from gpustack_cli.openai import embeddings as openai_embeddings
from gpustack_cli.openai import images as openai_images
from gpustack_cli.openai import responses as openai_responses
from gpustack_cli.runtime.scheduler import LoadedModel
from gpustack_cli.server import management as admin
from gpustack_cli.server.plumbing import public
from gpustack_cli.server.wire import json_response

# -- responses ---------------------------------------------------------------------------------


class Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class OpenAIErrorDetail(Doc):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(Doc):
    error: OpenAIErrorDetail


class AnthropicErrorDetail(Doc):
    type: str
    message: str


class AnthropicError(Doc):
    type: Literal["error"]
    error: AnthropicErrorDetail
    request_id: str | None = None


class Health(Doc):
    status: Literal["ok"]
    version: str


class ModelObject(Doc):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    categories: list[str]
    loaded: bool


class ModelList(Doc):
    object: Literal["list"]
    data: list[ModelObject]


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


class RerankDocument(Doc):
    text: str


class RerankResult(Doc):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankList(Doc):
    model: str
    object: Literal["list"]
    results: list[RerankResult]
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


class AnthropicUsage(Doc):
    input_tokens: int
    output_tokens: int


class AnthropicMessage(Doc):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[dict[str, Any]]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]
    stop_sequence: str | None
    usage: AnthropicUsage


class TokenCount(Doc):
    input_tokens: int


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


class Tokens(Doc):
    tokens: list[int] | list[dict[str, Any]]


class Detokenized(Doc):
    content: str


class Loaded(Doc):
    models: list[LoadedModel]


class Unloaded(Doc):
    model: str
    unloaded: bool


# -- operations --------------------------------------------------------------------------------

STREAM = "text/event-stream"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    # A multipart form: its text fields are `body`'s, these are its files (required first).
    files: tuple[str, ...] = ()
    optional_files: tuple[str, ...] = ()
    response: type[BaseModel] | None = None
    # Other content types the 200 may have (a stream, audio, text).
    also: tuple[str, ...] = ()
    anthropic: bool = False
    public: bool = False


OPERATIONS = (
    Operation("GET", "/healthz", "Liveness", "server", response=Health, public=True),
    Operation("GET", "/openapi.json", "This document", "server", public=True),
    Operation("GET", "/metrics", "Prometheus metrics (management scope)", "server", also=("text/plain",)),
    Operation("GET", "/v1/models", "List the models this key may use", "openai", response=ModelList),
    Operation("GET", "/v1/models/{model}", "One model", "openai", response=ModelObject),
    Operation(
        "POST",
        "/v1/chat/completions",
        "Chat completions",
        "openai",
        openai_chat.ChatCompletionBody,
        response=ChatCompletion,
        also=(STREAM,),
    ),
    Operation(
        "POST",
        "/v1/completions",
        "Text completions",
        "openai",
        openai_chat.CompletionBody,
        response=Completion,
        also=(STREAM,),
    ),
    Operation(
        "POST",
        "/v1/responses",
        "A model response (OpenAI's Responses API), kept when `store` is true",
        "openai",
        openai_responses.ResponseBody,
        response=ResponseObject,
        also=(STREAM,),
    ),
    Operation(
        "POST",
        "/v1/responses/input_tokens",
        "The input tokens a response would read",
        "openai",
        openai_responses.InputTokensBody,
        response=InputTokens,
    ),
    Operation("GET", "/v1/responses/{response_id}", "A stored response", "openai", response=ResponseObject),
    Operation("DELETE", "/v1/responses/{response_id}", "Delete a stored response", "openai", response=ResponseDeleted),
    Operation(
        "GET",
        "/v1/responses/{response_id}/input_items",
        "A stored response's input items (`limit`, `order`, `after`)",
        "openai",
        response=InputItemList,
    ),
    Operation(
        "POST", "/v1/embeddings", "Embeddings", "openai", openai_embeddings.EmbeddingsBody, response=EmbeddingList
    ),
    Operation(
        "POST",
        "/v1/audio/speech",
        "Text to speech",
        "openai",
        openai_audio.SpeechBody,
        also=("audio/mpeg", "audio/wav", "audio/flac", "audio/aac", "audio/ogg", "audio/pcm", STREAM),
    ),
    Operation(
        "POST",
        "/v1/audio/transcriptions",
        "Speech to text",
        "openai",
        openai_audio.TranscriptionForm,
        files=("file",),
        response=Transcription,
        also=("text/plain", "text/vtt", STREAM),
    ),
    Operation(
        "POST",
        "/v1/audio/translations",
        "Speech to English text",
        "openai",
        openai_audio.TranscriptionForm,
        files=("file",),
        response=Transcription,
        also=("text/plain", "text/vtt", STREAM),
    ),
    Operation("GET", "/v1/audio/voices", "The voices of each speech model", "openai", response=VoiceList),
    Operation(
        "POST",
        "/v1/images/generations",
        "Images from a prompt",
        "openai",
        openai_images.GenerationBody,
        response=Images,
        also=(STREAM,),
    ),
    Operation(
        "POST",
        "/v1/images/edits",
        "An image edited (with a mask: inpainted)",
        "openai",
        openai_images.EditFields,
        files=("image",),
        optional_files=("mask",),
        response=Images,
        also=(STREAM,),
    ),
    Operation(
        "GET", "/v1/images/files/{name}", "An image behind a `url` answer", "openai", also=("image/png", "image/jpeg")
    ),
    Operation(
        "POST",
        "/v1/messages",
        "Anthropic messages",
        "anthropic",
        anthropic.MessagesBody,
        response=AnthropicMessage,
        also=(STREAM,),
        anthropic=True,
    ),
    Operation(
        "POST",
        "/v1/messages/count_tokens",
        "Anthropic token counting",
        "anthropic",
        anthropic.CountTokensBody,
        response=TokenCount,
        anthropic=True,
    ),
    Operation("POST", "/v1/rerank", "Jina rerank", "jina", jina.RerankBody, response=RerankList),
    Operation("POST", "/tokenize", "llama-server's tokenize", "native", native.TokenizeBody, response=Tokens),
    Operation(
        "POST", "/detokenize", "llama-server's detokenize", "native", native.DetokenizeBody, response=Detokenized
    ),
    Operation("GET", "/api/ps", "Loaded models (management scope)", "management", response=Loaded),
    Operation(
        "POST", "/api/stop", "Unload a model (management scope)", "management", admin.StopRequest, response=Unloaded
    ),
    Operation(
        "POST",
        "/model/proxy/{path}",
        "Generic proxy: a model's own API (the model from the X-GPUStack-Model header or the body's `model`)",
        "proxy",
        also=("application/octet-stream", STREAM),
    ),
)
ERRORS = {
    "400": "Invalid request",
    "401": "No key, or a wrong one",
    "403": "The key may not do this",
    "404": "No such model or route",
    "408": "The body did not arrive in time",
    "413": "The body is too large",
    "415": "Not the content type this route reads",
    "503": "The model's queue is full (see Retry-After)",
}


def _schema(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _request_body(op: Operation) -> dict[str, Any] | None:
    if op.body is None:
        if op.path.startswith("/model/proxy"):
            return {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
        return None
    if not op.files and not op.optional_files:
        return {"required": True, "content": {"application/json": {"schema": _schema(op.body)}}}
    form = op.body.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    form.pop("$defs", None)
    for name in (*op.files, *op.optional_files):
        form["properties"][name] = {"type": "string", "contentMediaType": "application/octet-stream"}
    form["required"] = [*form.get("required", []), *op.files]
    return {"required": True, "content": {"multipart/form-data": {"schema": form}}}


def _responses(op: Operation) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if op.response is not None:
        content["application/json"] = {"schema": _schema(op.response)}
    for kind in op.also:
        content[kind] = {"schema": {"type": "string"}}
    if not content:
        content["application/json"] = {"schema": {"type": "object"}}
    error = _schema(AnthropicError if op.anthropic else OpenAIError)
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    if not op.public:
        for status, description in ERRORS.items():
            responses[status] = {"description": description, "content": {"application/json": {"schema": error}}}
    return responses


def _parameters(op: Operation) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in op.path.split("/") if part.startswith("{")]
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]


@functools.cache
def document() -> dict[str, Any]:
    models = {op.body for op in OPERATIONS if op.body is not None and not op.files}
    models |= {op.response for op in OPERATIONS if op.response is not None}
    models |= {OpenAIError, AnthropicError}
    _, schemas = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        entry: dict[str, Any] = {
            "summary": op.summary,
            "tags": [op.tag],
            "operationId": op.method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", op.path).rstrip("_"),
            "parameters": _parameters(op),
            "responses": _responses(op),
        }
        body = _request_body(op)
        if body is not None:
            entry["requestBody"] = body
        if op.public:
            entry["security"] = []
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "gpustack", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(document())


def add_routes(app: web.Application) -> None:
    public(app, "/openapi.json")
    app.router.add_get("/openapi.json", openapi_json)
