"""Anthropic's routes: messages and token counts, in Anthropic's error shape; for a remote model
whose servers lack `/v1/messages`, its chat completions answer instead."""

from __future__ import annotations

from aiohttp import web

from gpustack_cli.anthropic.errors import error_body
from gpustack_cli.anthropic.messages import count_tokens, messages
from gpustack_cli.anthropic.over_chat import messages_over_chat
from gpustack_cli.models.store import Category
from gpustack_cli.server.errors import speaks
from gpustack_cli.server.routing import model_route


def add_routes(app: web.Application) -> None:
    handle_messages = model_route(Category.llm, "messages", fallback=messages_over_chat)(messages)
    speaks(app, app.router.add_post("/v1/messages", handle_messages), error_body)
    handle_count = model_route(Category.llm, "messages")(count_tokens)
    speaks(app, app.router.add_post("/v1/messages/count_tokens", handle_count), error_body)
