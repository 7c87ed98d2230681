"""llama-server's `POST /tokenize` and `/detokenize` at the top level, with a `model` field (several
models share one server); the same handlers answer per model on the Generic Proxy."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from engines.base import Tokenizer
from gpustack_cli.core.limits import check_text_size
from gpustack_cli.native.engine_apis import llama_detokenize, llama_tokenize
from gpustack_cli.server.context import context, engine_for, read_json, resolve_model
from gpustack_cli.server.operations import Doc, Operation, operation


class Tokens(Doc):
    tokens: list[int] | list[dict[str, Any]]


class Detokenized(Doc):
    content: str


class TokenizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    tokens: list[Annotated[int, Field(ge=0)]]


async def tokenize(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, TokenizeBody)
    check_text_size(len(body.content), context(request).settings.limits, "content")
    manifest = resolve_model(request, body.model)
    async with engine_for(request, manifest, Tokenizer) as engine:
        return await llama_tokenize(request, engine, body.model_dump(), manifest.name)


async def detokenize(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, DetokenizeBody)
    manifest = resolve_model(request, body.model)
    async with engine_for(request, manifest, Tokenizer) as engine:
        return await llama_detokenize(request, engine, body.model_dump(), manifest.name)


def add_routes(app: web.Application) -> None:
    operation(
        app,
        tokenize,
        Operation("POST", "/tokenize", "llama-server's tokenize", "native", TokenizeBody, response=Tokens),
    )
    summary = "llama-server's detokenize"
    operation(
        app, detokenize, Operation("POST", "/detokenize", summary, "native", DetokenizeBody, response=Detokenized)
    )
