"""The shapes of Anthropic's answers as this server writes them, for the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from gpustack_cli.server.operations import Doc


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
