"""Anthropic's messages for a remote model whose servers have no `/v1/messages`: the request is
turned into the text core's chat, sent to the upstream's OpenAI chat completions, and its chunks
come back as the core's events, which the messages route renders as for a local model."""

from __future__ import annotations

from aiohttp import web

from gpustack_cli.anthropic.messages import messages_via
from gpustack_cli.models.store import Manifest
from gpustack_cli.openai.chat import chat_body, events_of_chunks
from gpustack_cli.upstream.forward import upstream_chunks
from gpustack_cli.upstream.pool import RemoteEngine


async def messages_over_chat(request: web.Request, engine: RemoteEngine, manifest: Manifest) -> web.StreamResponse:
    model = engine.upstream_model or manifest.name
    return await messages_via(
        request, lambda chat: events_of_chunks(upstream_chunks(request, engine, chat_body(chat, model)))
    )
