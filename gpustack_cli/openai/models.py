"""OpenAI-compatible routes under `/v1` and their wire shapes."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web

from gpustack_cli.models.store import Category, Manifest
from gpustack_cli.runtime.scheduler import Scheduler
from gpustack_cli.server.context import context, principal, resolve_model
from gpustack_cli.server.errors import bad_request
from gpustack_cli.server.operations import Doc, Operation, operation
from gpustack_cli.server.wire import json_response


class ModelObject(Doc):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    categories: list[str]
    # What it takes besides text: "vision" (images), "audio".
    capabilities: list[str]
    loaded: bool


class ModelList(Doc):
    object: Literal["list"]
    data: list[ModelObject]


def model_object(manifest: Manifest, scheduler: Scheduler) -> dict[str, Any]:
    """A `Model` as OpenAI lists it, plus our extras `categories`, `capabilities` and `loaded`."""
    return {
        "id": manifest.name,
        "object": "model",
        "created": int(manifest.created),
        "owned_by": "gpustack",
        "categories": [c.value for c in manifest.categories],
        "capabilities": manifest.modalities,
        "loaded": scheduler.is_loaded(manifest.name),
    }


def _category_filter(request: web.Request) -> set[Category] | None:
    values = [v for raw in request.query.getall("categories", []) for v in raw.split(",") if v.strip()]
    if not values:
        return None
    try:
        return {Category(v.strip()) for v in values}
    except ValueError:
        known = ", ".join(c.value for c in Category)
        raise bad_request(f"Invalid value for 'categories': use one or more of {known}.", param="categories") from None


async def list_models(request: web.Request) -> web.Response:
    ctx, who = context(request), principal(request)
    wanted = _category_filter(request)
    data = [
        model_object(m, ctx.scheduler)
        for m in ctx.store.list()
        if who.may_use(m.name) and (wanted is None or wanted & set(m.categories))
    ]
    return json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    manifest = resolve_model(request, request.match_info["model"])
    return json_response(model_object(manifest, context(request).scheduler))


def add_routes(app: web.Application) -> None:
    operation(
        app,
        list_models,
        Operation("GET", "/v1/models", "List the models this key may use", "openai", response=ModelList),
    )
    # Model ids may hold '/', as in OpenAI's fine-tuned names and Hugging Face repos.
    one = Operation("GET", "/v1/models/{model}", "One model", "openai", response=ModelObject)
    operation(app, get_model, one, pattern="/v1/models/{model:.+}")
