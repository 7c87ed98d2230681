"""`POST /api/stop` (`gpustack stop`): unload a model now, or when its running requests finish.
What is loaded is Ollama's `GET /api/ps` (`gpustack_cli/ollama/`), which `gpustack ps` reads."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from gpustack_cli.server.context import context, read_json, resolve_model
from gpustack_cli.server.errors import APIError
from gpustack_cli.server.operations import Doc, Operation, operation
from gpustack_cli.server.wire import json_response


class Unloaded(Doc):
    model: str
    unloaded: bool


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str


async def stop(request: web.Request) -> web.Response:
    body = await read_json(request, StopRequest)
    resolve_model(request, body.model)
    if not await context(request).scheduler.unload(body.model):
        raise APIError(404, f"Model '{body.model}' is not loaded.", param="model", code="model_not_loaded")
    return json_response({"model": body.model, "unloaded": True})


def add_routes(app: web.Application) -> None:
    summary = "Unload a model (management scope)"
    unloading = Operation(
        "POST", "/api/stop", summary, "management", StopRequest, response=Unloaded, scope="management"
    )
    operation(app, stop, unloading)
