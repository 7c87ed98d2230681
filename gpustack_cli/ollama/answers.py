"""The shapes of Ollama's answers as this server writes them, for the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from gpustack_cli.server.operations import Doc


class Version(Doc):
    version: str


class Details(Doc):
    parent_model: str
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class Tagged(Doc):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: Details


class Tags(Doc):
    models: list[Tagged]


class Shown(Doc):
    license: str
    modelfile: str
    parameters: str
    template: str
    details: Details
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class Running(Doc):
    name: str
    model: str
    size: int
    digest: str
    details: Details
    expires_at: str
    size_vram: int
    context_length: int
    # This server's own: request slots busy and in all, requests waiting, seconds loaded.
    active: int
    concurrency: int
    waiting: int
    loaded_for: float
    expires_in: float | None
    # llama.cpp's KV cache: flash attention and the K and V types (`flash_attn`, `type_k`, `type_v`).
    kv_cache: dict[str, str] | None = None
    # Per device (CPU, a GPU, an RPC server's HOST:PORT): `layers`, `weights_bytes`,
    # `kv_cache_bytes`, `compute_bytes`; and the RPC servers a model's layers are on.
    placement: list[dict[str, Any]] | None = None
    rpc: list[str] | None = None
    # Speculative drafting: `kind`, `max_tokens`, `min_tokens`, `drafted_tokens`, `accepted_tokens`.
    draft: dict[str, Any] | None = None


class RunningList(Doc):
    models: list[Running]


class Durations(Doc):
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class AnswerCall(Doc):
    name: str
    arguments: dict[str, Any]


class AnswerToolCall(Doc):
    function: AnswerCall


class AnswerMessage(Doc):
    role: Literal["assistant"]
    content: str
    thinking: str | None = None
    tool_calls: list[AnswerToolCall] | None = None


class ChatAnswer(Durations):
    """A chat's answer, or (streamed, one a line) each of its chunks and its last object."""

    model: str
    created_at: str
    message: AnswerMessage


class GenerateAnswer(Durations):
    model: str
    created_at: str
    response: str
    thinking: str | None = None


class Embedded(Doc):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class LegacyEmbedding(Doc):
    embedding: list[float]


class Progress(Doc):
    """A pull's progress (streamed, one a line), ending with `success`."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
