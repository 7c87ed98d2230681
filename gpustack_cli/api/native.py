"""Engine-native routes: llama-server's `POST /tokenize` and `/detokenize`, with a `model` field
(several models share one server). The Generic Proxy mounts the same handlers per model."""

from __future__ import annotations

import asyncio
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from engines.base import Tokenizer
from gpustack_cli.api.context import engine_for, read_json, resolve_model
from gpustack_cli.api.errors import bad_request


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


async def tokenize(request: web.Request) -> web.Response:
    body = await read_json(request, TokenizeBody)
    manifest = resolve_model(request, body.model)
    async with engine_for(request, manifest, Tokenizer) as engine:
        tokens = await asyncio.to_thread(engine.tokenize, body.content, body.add_special)
        if not body.with_pieces:
            return web.json_response({"tokens": tokens})
        pieces = [{"id": t, "piece": await asyncio.to_thread(engine.detokenize, [t])} for t in tokens]
    return web.json_response({"tokens": pieces})


async def detokenize(request: web.Request) -> web.Response:
    body = await read_json(request, DetokenizeBody)
    manifest = resolve_model(request, body.model)
    async with engine_for(request, manifest, Tokenizer) as engine:
        try:
            content = await asyncio.to_thread(engine.detokenize, body.tokens)
        except (ValueError, IndexError, RuntimeError) as exc:
            raise bad_request(f"Invalid 'tokens': {exc}", param="tokens") from exc
    return web.json_response({"content": content})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
