"""One error type for every route, and how a route's errors look on the wire.

Each protocol says how its errors look (OpenAI's `{"error": {...}}`, Anthropic's
`{"type": "error", "error": {...}}`) for the routes it adds (`speaks`); a route no protocol claims
(an unknown path) answers in the application's default shape."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from engines.base import AudioError, EngineUnavailable, InvalidSchema, InvalidTokens, OutOfMemory, RequestAborted
from gpustack_cli.core.types import GenerationError
from gpustack_cli.runtime.scheduler import QueueFull


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


# An error's body in one protocol's shape: the error, and the id of the request it answers.
ErrorShape = Callable[[APIError, str | None], dict[str, Any]]
# Per route (its aiohttp resource), the shape its errors take; and the shape of all others.
ERROR_SHAPES = web.AppKey("error_shapes", dict)
DEFAULT_ERROR_SHAPE = web.AppKey("default_error_shape", Callable)


def speaks(app: web.Application, route: web.AbstractRoute, shape: ErrorShape) -> None:
    """The errors of `route` take `shape` (answers and stream error events alike)."""
    app.setdefault(ERROR_SHAPES, {})[route.resource] = shape


def error_body(request: web.Request, error: APIError, request_id: str | None) -> dict[str, Any]:
    """`error` in the shape of the route that `request` reached."""
    shapes = request.app.get(ERROR_SHAPES, {})
    route = request.match_info.route
    shape = shapes.get(route.resource) if route is not None else None
    return (shape or request.app[DEFAULT_ERROR_SHAPE])(error, request_id)


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
    """The failure that reached deepest into the body (of a field that takes several shapes, the
    shape that matched furthest: `input[3].content` rather than "input is not a string"), worded as
    OpenAI words them, with the field as `param`."""
    errors = exc.errors(include_url=False)
    first = max(errors, key=lambda e: len(_loc(e["loc"])))
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
    if isinstance(exc, AudioError):
        return APIError(400, str(exc), param=exc.param, code="invalid_audio")
    if isinstance(exc, InvalidSchema):  # found while generating: the grammar was too slow
        return APIError(400, f"Invalid schema: {exc}.", code="invalid_schema")
    if isinstance(exc, InvalidTokens):
        return APIError(400, str(exc), code="invalid_tokens")
    if isinstance(exc, OutOfMemory):
        return APIError(507, f"The model cannot be loaded: {exc}.", code="insufficient_memory")
    if isinstance(exc, EngineUnavailable):
        return APIError(503, str(exc), code="engine_unavailable")
    if isinstance(exc, RequestAborted):
        return APIError(503, str(exc), code="request_aborted")
    return None


def client_left(request: web.Request, exc: Exception) -> bool:
    """Whether `exc` is the client's connection closing under a handler that was writing to it
    (aiohttp cancels a handler whose client left, but a write may come first): no server error,
    and nothing to answer."""
    transport = request.transport
    return isinstance(exc, ConnectionError) and (transport is None or transport.is_closing())
