"""Anthropic's routes: messages and token counts, in Anthropic's error shape. A remote model's
messages are answered by its upstream's chat completions, through the same converters as a local
model's; its token counts go to the upstream as they came."""

from __future__ import annotations

from aiohttp import web

from gpustack_cli.anthropic.answers import AnthropicMessage, TokenCount
from gpustack_cli.anthropic.errors import AnthropicError, error_body
from gpustack_cli.anthropic.messages import CountTokensBody, MessagesBody, count_tokens, messages
from gpustack_cli.models.store import Category
from gpustack_cli.server.errors import speaks
from gpustack_cli.server.operations import STREAM, Operation, operation
from gpustack_cli.server.routing import model_route


def add_routes(app: web.Application) -> None:
    answered = Operation(
        "POST",
        "/v1/messages",
        "Anthropic messages",
        "anthropic",
        MessagesBody,
        response=AnthropicMessage,
        also=(STREAM,),
        error=AnthropicError,
    )
    speaks(app, operation(app, messages, answered), error_body)
    counted = Operation(
        "POST",
        "/v1/messages/count_tokens",
        "Anthropic token counting",
        "anthropic",
        CountTokensBody,
        response=TokenCount,
        error=AnthropicError,
    )
    speaks(app, operation(app, model_route(Category.llm, "messages")(count_tokens), counted), error_body)
