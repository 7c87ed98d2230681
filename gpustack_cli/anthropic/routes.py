"""Anthropic's routes: messages and token counts, in Anthropic's error shape. A remote model's
messages are answered by its upstream's chat completions, through the same converters as a local
model's; its token counts go to the upstream as they came."""

from __future__ import annotations

from aiohttp import web

from gpustack_cli.anthropic.errors import error_body
from gpustack_cli.anthropic.messages import count_tokens, messages
from gpustack_cli.models.store import Category
from gpustack_cli.server.errors import speaks
from gpustack_cli.server.routing import model_route


def add_routes(app: web.Application) -> None:
    speaks(app, app.router.add_post("/v1/messages", messages), error_body)
    handle_count = model_route(Category.llm, "messages")(count_tokens)
    speaks(app, app.router.add_post("/v1/messages/count_tokens", handle_count), error_body)
