"""Management routes under `/api/`: what is loaded (`gpustack ps`) and unloading (`gpustack stop`)."""

from __future__ import annotations

from dataclasses import asdict

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from gpustack_cli.runtime.scheduler import LoadedModel
from gpustack_cli.server.context import context, principal, read_json, resolve_model
from gpustack_cli.server.errors import APIError
from gpustack_cli.server.operations import Doc, Operation, operation
from gpustack_cli.server.wire import json_response


class Loaded(Doc):
    models: list[LoadedModel]


class Unloaded(Doc):
    model: str
    unloaded: bool


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str


async def ps(request: web.Request) -> web.Response:
    # A key limited to some models sees only those.
    who = principal(request)
    loaded = [m for m in context(request).scheduler.loaded() if who.may_use(m.name)]
    return json_response({"models": [asdict(m) for m in loaded]})


async def stop(request: web.Request) -> web.Response:
    body = await read_json(request, StopRequest)
    resolve_model(request, body.model)
    if not await context(request).scheduler.unload(body.model):
        raise APIError(404, f"Model '{body.model}' is not loaded.", param="model", code="model_not_loaded")
    return json_response({"model": body.model, "unloaded": True})


def add_routes(app: web.Application) -> None:
    operation(app, ps, Operation("GET", "/api/ps", "Loaded models (management scope)", "management", response=Loaded))
    summary = "Unload a model (management scope)"
    operation(app, stop, Operation("POST", "/api/stop", summary, "management", StopRequest, response=Unloaded))
