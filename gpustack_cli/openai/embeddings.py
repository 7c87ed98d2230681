"""OpenAI's `POST /v1/embeddings`, for every engine that implements `Embedder`.

Inputs longer than the model's maximum are refused with a 400 that names the numbers (as
OpenAI does), never silently truncated: a cut-off text would embed to a different meaning.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from engines.base import Embedder
from gpustack_cli.config import Settings
from gpustack_cli.core.embeddings import MAX_INPUTS, check_lengths, shortened
from gpustack_cli.core.limits import check_text_size
from gpustack_cli.models.store import Category
from gpustack_cli.openai.answers import EmbeddingList
from gpustack_cli.runtime import batching
from gpustack_cli.server.context import context, engine_for, keep_alive_of, read_json, resolve_model
from gpustack_cli.server.errors import bad_request
from gpustack_cli.server.operations import Operation, operation
from gpustack_cli.server.routing import model_route
from gpustack_cli.server.wire import json_response

# Below this many characters, tokens are counted on the event loop (about a tenth of a millisecond).
INLINE_CHARS = 4096
Tokens = Annotated[list[Annotated[int, Field(ge=0, lt=2**31)]], Field(min_length=1)]


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: str | Annotated[list[str], Field(min_length=1)] | Tokens | Annotated[list[Tokens], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None
    keep_alive: str | int | float | None = None


def _texts(body: EmbeddingsBody, engine: Embedder) -> list[str]:
    value = body.input
    if isinstance(value, str):
        items: list = [value]
    elif isinstance(value[0], int):
        items = [value]
    else:
        items = list(value)
    texts = []
    for index, item in enumerate(items):
        text = item if isinstance(item, str) else engine.detokenize(item)
        if not text:
            raise bad_request(f"Invalid 'input[{index}]': empty strings cannot be embedded.", param="input")
        texts.append(text)
    return texts


def encode(vector: list[float], encoding: str) -> list[float] | str:
    """As OpenAI sends it: floats, or base64 of little-endian float32."""
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def _check_size(body: EmbeddingsBody, settings: Settings) -> None:
    """How much one request may ask to embed, checked before a model is loaded."""
    value = body.input
    items = [value] if isinstance(value, str) or isinstance(value[0], int) else value
    if len(items) > MAX_INPUTS:
        raise bad_request(f"Invalid 'input': at most {MAX_INPUTS} inputs per request.", param="input")
    check_text_size(sum(len(item) for item in items if isinstance(item, str)), settings.limits, "input")


async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request, EmbeddingsBody)
    _check_size(body, context(request).settings)
    manifest = resolve_model(request, body.model, Category.embedding, "embeddings")
    async with engine_for(request, manifest, Embedder, keep_alive_of(request, body.keep_alive)) as engine:
        if body.dimensions is not None and body.dimensions != engine.dimensions:
            if not engine.truncatable:
                raise bad_request(
                    f"Model '{manifest.name}' does not support 'dimensions' other than {engine.dimensions}.",
                    param="dimensions",
                )
            if body.dimensions > engine.dimensions:
                raise bad_request(f"Invalid 'dimensions': at most {engine.dimensions}.", param="dimensions")
        texts = _texts(body, engine)
        if sum(map(len, texts)) < INLINE_CHARS:
            tokens = check_lengths(texts, engine)  # a thread hop would cost more than the work
        else:
            tokens = await asyncio.to_thread(check_lengths, texts, engine)
        vectors = await batching.embed(engine, texts, context(request).settings.batch_wait)
    if body.dimensions is not None and body.dimensions != engine.dimensions:
        vectors = [shortened(v, body.dimensions) for v in vectors]
    data = [
        {"object": "embedding", "index": i, "embedding": encode(v, body.encoding_format)} for i, v in enumerate(vectors)
    ]
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": manifest.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def add_routes(app: web.Application) -> None:
    embedded = Operation("POST", "/v1/embeddings", "Embeddings", "openai", EmbeddingsBody, response=EmbeddingList)
    operation(app, model_route(Category.embedding, "embeddings")(embeddings), embedded)
