"""OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any

from gpustack_cli.server.errors import APIError
from gpustack_cli.server.operations import Doc

# OpenAI's `type` for each status it documents; others by class (4xx, 5xx).
_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_exceeded", 500: "server_error"}


class OpenAIErrorDetail(Doc):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(Doc):
    error: OpenAIErrorDetail


def error_body(error: APIError, request_id: str | None = None) -> dict[str, Any]:
    by_class = "server_error" if error.status >= 500 else "invalid_request_error"
    kind = error.type or _TYPES.get(error.status) or by_class
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}
