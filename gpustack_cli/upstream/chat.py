"""A remote model's chats: the core's `ChatRequest` sent to an upstream's OpenAI chat completions
(streamed), and its chunks read back as the core's events. Any protocol's handler answers a remote
model through this backend as it answers a local one through `LocalChat`."""

from __future__ import annotations

from aiohttp import web

from engines.base import Engine
from gpustack_cli.core.backend import ChatStart
from gpustack_cli.core.types import ChatRequest
from gpustack_cli.models.store import Manifest
from gpustack_cli.openai.chat import chat_body, events_of_chunks
from gpustack_cli.upstream.forward import upstream_chunks
from gpustack_cli.upstream.pool import RemoteEngine


class UpstreamChat:
    def __init__(self, request: web.Request, engine: RemoteEngine, manifest: Manifest):
        self.request = request
        self.engine = engine
        self.model = engine.upstream_model or manifest.name

    async def start(self, chat: ChatRequest, request_id: str, truncate: bool = False) -> ChatStart:
        """The upstream counts the prompt (its usage comes with the last chunk) and fits it to its
        own context: `truncate` is the upstream's affair."""
        chunks = upstream_chunks(self.request, self.engine, chat_body(chat, self.model))
        return ChatStart(0, events_of_chunks(chunks))


def remote_chat(request: web.Request, engine: Engine, manifest: Manifest) -> UpstreamChat | None:
    """The backend of a remote model's loaded engine; None for a local one."""
    return UpstreamChat(request, engine, manifest) if isinstance(engine, RemoteEngine) else None
