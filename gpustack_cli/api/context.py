"""What every route handler reaches: the server's shared objects, and the request's helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gpustack_cli.api.errors import APIError, bad_request, from_validation, model_not_found
from gpustack_cli.config import Settings, parse_duration
from gpustack_cli.keys import Authenticator, Principal, Scope
from gpustack_cli.metrics import Metrics
from gpustack_cli.scheduler import Scheduler
from gpustack_cli.store import Category, Manifest, ModelNotFound, ModelStore

Body = TypeVar("Body", bound=BaseModel)

ANONYMOUS = Principal(name="anonymous", scope=Scope.all)


@dataclass
class ServerContext:
    settings: Settings
    store: ModelStore
    scheduler: Scheduler
    auth: Authenticator
    metrics: Metrics


CONTEXT = web.AppKey("context", ServerContext)
PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)


def context(request: web.Request) -> ServerContext:
    return request.app[CONTEXT]


def principal(request: web.Request) -> Principal:
    return request.get(PRINCIPAL, ANONYMOUS)


async def read_json(request: web.Request, model: type[Body]) -> Body:
    """The request's JSON body, size-checked and validated into `model` (400/413 otherwise)."""
    limit = context(request).settings.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise APIError(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large")
    raw = await request.read()
    if len(raw) > limit:
        raise APIError(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large")
    if not raw.strip():
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise bad_request(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                "your HTTP library correctly. The OpenAI API expects a JSON payload.)"
            ) from exc
        if any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            raise bad_request("The request body must be a JSON object.") from exc
        raise from_validation(exc) from exc


KEEP_ALIVE_HEADER = "X-GPUStack-Keep-Alive"


def keep_alive_of(request: web.Request, field: str | int | float | None = None) -> float | None:
    """This request's keep_alive (body field, else header), in seconds; None for the server's."""
    value = field if field is not None else request.headers.get(KEEP_ALIVE_HEADER)
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise bad_request(f"Invalid 'keep_alive': {exc}.", param="keep_alive") from exc


def resolve_model(request: web.Request, name: str, category: Category | None = None, route: str = "") -> Manifest:
    """The manifest of a model the caller may use, of the kind the route needs."""
    if not principal(request).may_use(name):
        raise model_not_found(name)
    try:
        manifest = context(request).store.get(name)
    except (ModelNotFound, ValueError):
        raise model_not_found(name) from None
    if category is not None and category not in manifest.categories:
        kinds = ", ".join(c.value for c in manifest.categories)
        raise bad_request(
            f"Model '{name}' does not support {route or category.value}: it is a model of kind {kinds}.",
            param="model",
            code="model_not_supported",
        )
    return manifest


@asynccontextmanager
async def engine_for(
    request: web.Request, manifest: Manifest, capability: type, keep_alive: float | None = None
) -> AsyncIterator[Any]:
    """Hold a request slot of the model's loaded engine, which must implement `capability`."""
    async with context(request).scheduler.use(manifest.name, keep_alive) as engine:
        if not isinstance(engine, capability):
            what = _CAPABILITIES.get(capability.__name__, capability.__name__)
            raise bad_request(f"Model '{manifest.name}' cannot {what}.", param="model", code="model_not_supported")
        yield engine


_CAPABILITIES = {
    "TextGenerator": "generate text",
    "Embedder": "embed text",
    "Reranker": "rerank",
    "Tokenizer": "tokenize",
    "Speaker": "speak",
    "Transcriber": "transcribe",
    "ImageGenerator": "make images",
}
