"""Ollama's error shape: `{"error": "..."}`, with the status of the failure."""

from __future__ import annotations

from typing import Any

from gpustack_cli.server.errors import APIError
from gpustack_cli.server.operations import Doc


class OllamaError(Doc):
    error: str


def error_body(error: APIError, request_id: str | None = None) -> dict[str, Any]:
    return {"error": error.message}
