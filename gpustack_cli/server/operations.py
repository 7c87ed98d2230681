"""Routes that describe themselves: each protocol adds its routes through `operation`, with the
pydantic models of the body it reads and the answer it writes, and the OpenAPI document
(`openapi.py`) is built from what was added. So a route cannot be served without being described,
and no module repeats another's route list.

The answer models (`Doc`) describe what the converters write: the handlers write plain dicts (a
streamed token must not pay for a model), and the tests hold what they write to these models and
to the official clients' own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict

STREAM = "text/event-stream"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Doc(BaseModel):
    """An answer's shape as the document gives it (clients must take fields it does not list)."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    # A multipart form: its text fields are `body`'s, these are its files (required first).
    files: tuple[str, ...] = ()
    optional_files: tuple[str, ...] = ()
    response: type[BaseModel] | None = None
    # Other content types the 200 may have (a stream, audio, text).
    also: tuple[str, ...] = ()
    # The shape of its errors; None: the application's default (`DEFAULT_ERROR_DOC`).
    error: type[BaseModel] | None = None
    public: bool = False
    # The key scope the route needs: "inference", "management", or "any" (a key of either).
    scope: Literal["inference", "management", "any"] = "inference"
    # A body the route takes without a model of it (the Generic Proxy's): any JSON object.
    free_body: bool = False


@dataclass
class Described:
    operations: list[Operation] = field(default_factory=list)
    # The document, once built (the application is frozen by then; this holder is not).
    document: dict | None = None


DESCRIBED = web.AppKey("described", Described)
# The routes whose key scope is not "inference", by path.
SCOPES = web.AppKey("scopes", dict)
DEFAULT_ERROR_DOC = web.AppKey("default_error_doc", type[BaseModel])


def describe(app: web.Application, op: Operation) -> None:
    """Put `op` in the document (for a route added otherwise)."""
    if DESCRIBED not in app:
        app[DESCRIBED] = Described()
    app[DESCRIBED].operations.append(op)


def operation(app: web.Application, handler: Handler, op: Operation, pattern: str | None = None) -> web.AbstractRoute:
    """Add the route and describe it; `pattern` is the router's path where it differs from the
    document's (a `{name:regex}` part)."""
    describe(app, op)
    if op.scope != "inference":
        app.setdefault(SCOPES, {})[op.path] = op.scope
    if op.method == "GET":  # and HEAD beside it, as aiohttp's add_get gives
        return app.router.add_get(pattern or op.path, handler)
    return app.router.add_route(op.method, pattern or op.path, handler)
