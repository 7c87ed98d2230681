"""The server's own OpenAPI 3.1 document, `GET /openapi.json` (no key needed), built from the
operations the routes were added with (`operations.py`), as FastAPI-based servers publish theirs.

Request bodies are the very models the handlers read (`read_json`, the form models); answers are
each protocol's `Doc` models; errors have the shape of each protocol (OpenAI's `{"error": {...}}`,
Anthropic's `{"type": "error", ...}`), as each operation says.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gpustack_cli import __version__
from gpustack_cli.server.operations import DEFAULT_ERROR_DOC, DESCRIBED, Operation, operation
from gpustack_cli.server.plumbing import public
from gpustack_cli.server.wire import json_response

ERRORS = {
    "400": "Invalid request",
    "401": "No key, or a wrong one",
    "403": "The key may not do this",
    "404": "No such model or route",
    "408": "The body did not arrive in time",
    "413": "The body is too large",
    "415": "Not the content type this route reads",
    "503": "The model's queue is full (see Retry-After)",
}


# Each model's reference in the document, as pydantic names it (two models of one name, in two
# protocols, get names that tell them apart).
Refs = dict[type[BaseModel], dict[str, str]]


def _request_body(op: Operation, refs: Refs) -> dict[str, Any] | None:
    if op.body is None:
        if op.free_body:
            return {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
        return None
    if not op.files and not op.optional_files:
        return {"required": True, "content": {"application/json": {"schema": refs[op.body]}}}
    form = op.body.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    form.pop("$defs", None)
    for name in (*op.files, *op.optional_files):
        form["properties"][name] = {"type": "string", "contentMediaType": "application/octet-stream"}
    form["required"] = [*form.get("required", []), *op.files]
    return {"required": True, "content": {"multipart/form-data": {"schema": form}}}


def _responses(op: Operation, default_error: type[BaseModel], refs: Refs) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if op.response is not None:
        content["application/json"] = {"schema": refs[op.response]}
    for kind in op.also:
        content[kind] = {"schema": {"type": "string"}}
    if not content:
        content["application/json"] = {"schema": {"type": "object"}}
    error = refs[op.error or default_error]
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    if not op.public:
        for status, description in ERRORS.items():
            responses[status] = {"description": description, "content": {"application/json": {"schema": error}}}
    return responses


def _parameters(op: Operation) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in op.path.split("/") if part.startswith("{")]
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]


def document(app: web.Application) -> dict[str, Any]:
    """The document of every operation added to `app`, built once."""
    described = app[DESCRIBED]
    if described.document is None:
        described.document = _build(described.operations, app[DEFAULT_ERROR_DOC])
    return described.document


def _build(operations: list[Operation], default_error: type[BaseModel]) -> dict[str, Any]:
    models = {op.body for op in operations if op.body is not None and not op.files}
    models |= {op.response for op in operations if op.response is not None}
    models |= {op.error or default_error for op in operations if not op.public}
    named, schemas = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: (m.__name__, m.__module__))],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
    )
    refs: Refs = {model: ref for (model, _), ref in named.items()}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        entry: dict[str, Any] = {
            "summary": op.summary,
            "tags": [op.tag],
            "operationId": op.method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", op.path).rstrip("_"),
            "parameters": _parameters(op),
            "responses": _responses(op, default_error, refs),
        }
        body = _request_body(op, refs)
        if body is not None:
            entry["requestBody"] = body
        if op.public:
            entry["security"] = []
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "gpustack", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(document(request.app))


def add_routes(app: web.Application) -> None:
    public(app, "/openapi.json")
    operation(app, openapi_json, Operation("GET", "/openapi.json", "This document", "server", public=True))
