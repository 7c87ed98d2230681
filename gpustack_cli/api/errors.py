"""One error type for every route, rendered in the caller's API's own shape.

OpenAI routes: `{"error": {"message", "type", "param", "code"}}`; Anthropic's `/v1/messages`:
`{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from engines.base import EngineUnavailable, InvalidTokens
from gpustack_cli.scheduler import QueueFull
from gpustack_cli.textgen import GenerationError

# OpenAI's `type` and Anthropic's error `type` for each status.
_OPENAI_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_exceeded", 500: "server_error"}
_ANTHROPIC_TYPES = {
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


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type
        self.headers = headers or {}

    def openai(self) -> dict[str, Any]:
        kind = (
            self.type
            or _OPENAI_TYPES.get(self.status)
            or ("server_error" if self.status >= 500 else "invalid_request_error")
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def anthropic(self) -> dict[str, Any]:
        kind = _ANTHROPIC_TYPES.get(self.status) or ("api_error" if self.status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


# Pydantic puts the name of the union member it tried into `loc` ("str", "list[int]", "TextPart"):
# they are not fields, and the caller should see only the path through their JSON.
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list|dict|literal|function|constrained)\b|[\[\]-]|^[A-Z]")


def _loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, str) and _TYPE_TAG.search(part):
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def from_validation(exc: ValidationError) -> APIError:
    """The first validation failure, worded as OpenAI words them, with the field as `param`."""
    first = exc.errors(include_url=False)[0]
    param = _loc(first["loc"]) or None
    kind, message = first["type"], first["msg"].removeprefix("Value error, ")
    if kind == "missing":
        text = f"Missing required parameter: '{param}'."
        return APIError(400, text, param=param, code="missing_required_parameter")
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param)
    return APIError(400, f"Invalid value for '{param}': {message}.", param=param, code="invalid_value")


def engine_error(exc: Exception) -> APIError | None:
    """What an exception raised by an engine or the scheduler means on the wire; None for any
    other (a bug: the caller answers 500). One mapping for answers and for streams' error events."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFull):
        return APIError(503, str(exc), code="model_busy", headers={"Retry-After": "1"})
    if isinstance(exc, GenerationError):
        return APIError(400, str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, InvalidTokens):
        return APIError(400, str(exc), code="invalid_tokens")
    if isinstance(exc, EngineUnavailable):
        return APIError(503, str(exc), code="engine_unavailable")
    return None


def client_left(request: web.Request, exc: Exception) -> bool:
    """Whether `exc` is the client's connection closing under a handler that was writing to it
    (aiohttp cancels a handler whose client left, but a write may come first): no server error,
    and nothing to answer."""
    transport = request.transport
    return isinstance(exc, ConnectionError) and (transport is None or transport.is_closing())
