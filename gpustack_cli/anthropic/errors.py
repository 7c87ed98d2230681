"""Anthropic's error shape: `{"type": "error", "error": {"type", "message"}, "request_id"}`."""

from __future__ import annotations

from typing import Any, Literal

from gpustack_cli.server.errors import APIError
from gpustack_cli.server.operations import Doc

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class AnthropicErrorDetail(Doc):
    type: str
    message: str


class AnthropicError(Doc):
    type: Literal["error"]
    error: AnthropicErrorDetail
    request_id: str | None = None


def error_body(error: APIError, request_id: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(error.status) or ("api_error" if error.status >= 500 else "invalid_request_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": error.message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body
