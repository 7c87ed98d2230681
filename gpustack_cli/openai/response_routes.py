"""OpenAI's Responses API routes: create (whole or streamed), retrieve, delete, list input items,
count input tokens. Responses are kept in the response store when `store` is true (OpenAI's
default) and belong to the API key that made them; `previous_response_id` continues one of them.
A remote model's response is made by its upstream's chat completions, through the same converters
as a local model's, and kept here; its input token counts go to the upstream as they came."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from aiohttp import web

from engines.base import TextGenerator
from gpustack_cli.core.limits import check_chat
from gpustack_cli.core.prompts import count_chat_tokens
from gpustack_cli.core.types import ChatRequest, Event
from gpustack_cli.models.store import Category
from gpustack_cli.openai.answers import InputItemList, InputTokens, ResponseDeleted, ResponseObject
from gpustack_cli.openai.response_output import OutputWriter, ResponseHead
from gpustack_cli.openai.response_store import ResponseStore, StoredResponse
from gpustack_cli.openai.responses import (
    InputTokensBody,
    ResponseBody,
    chat_request,
    input_items,
    namespaces,
    refuse_unsupported,
)
from gpustack_cli.server.context import (
    CONTEXT,
    REQUEST_ID,
    chat_backend,
    context,
    engine_for,
    keep_alive_of,
    principal,
    read_json,
    resolve_model,
)
from gpustack_cli.server.errors import APIError, bad_request
from gpustack_cli.server.operations import STREAM, Operation, operation
from gpustack_cli.server.routing import model_route
from gpustack_cli.server.sse import EventStream
from gpustack_cli.server.wire import json_response

RESPONSES = web.AppKey("responses", ResponseStore)


def _owner(request: web.Request) -> str:
    return principal(request).key_id


async def _history(request: web.Request, previous_id: str | None) -> list[dict[str, Any]]:
    """The items of the stored turns `previous_id` ends: each one's input, then its output."""
    if previous_id is None:
        return []
    limit = context(request).settings.max_response_chain
    chain = await asyncio.to_thread(request.app[RESPONSES].conversation, previous_id, _owner(request), limit + 1)
    if chain is None:
        raise APIError(
            404,
            f"Previous response with id '{previous_id}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    if len(chain) > limit:
        raise bad_request(
            f"The conversation that 'previous_response_id' continues is longer than {limit} responses; "
            "start a new one (send the turns that matter as input).",
            param="previous_response_id",
        )
    return [item for turn in chain for item in turn.input_items + turn.response.get("output", [])]


async def _read(request: web.Request, kind: type[InputTokensBody]) -> tuple[Any, list[dict[str, Any]], ChatRequest]:
    """The request's body, its own input items, and the chat they make with the turns before."""
    body = await read_json(request, kind)
    refuse_unsupported(body)
    items = input_items(body)
    chat = chat_request(body, await _history(request, body.previous_response_id), items)
    check_chat(chat, context(request).settings.limits, schema_param="text.format")
    return body, items, chat


async def create_response(request: web.Request) -> web.StreamResponse:
    body, items, chat = await _read(request, ResponseBody)
    manifest = resolve_model(request, body.model, Category.llm, "responses")
    async with chat_backend(request, manifest, keep_alive_of(request, body.keep_alive)) as backend:
        run = await backend.start(chat, request[REQUEST_ID], truncate=body.truncation == "auto")
        return await _respond(request, ResponseHead(body, manifest.name), items, run.events)


async def _respond(
    request: web.Request, head: ResponseHead, items: list[dict[str, Any]], events: AsyncIterator[Event]
) -> web.StreamResponse:
    if head.body.stream:
        return await _stream(request, head, items, events)
    writer = OutputWriter(namespaces(head.body))
    async with contextlib.aclosing(events):
        async for event in events:
            writer.feed(event)
    response = head.response(writer.status, writer)
    await _keep(request, head, items, response)
    return json_response(response)


async def _keep(request: web.Request, head: ResponseHead, items: list[dict[str, Any]], response: dict) -> None:
    if head.body.store:
        stored = StoredResponse(head.id, _owner(request), head.body.previous_response_id, response, items)
        await asyncio.to_thread(request.app[RESPONSES].put, stored)


async def _stream(
    request: web.Request, head: ResponseHead, items: list[dict[str, Any]], events: AsyncIterator[Event]
) -> web.StreamResponse:
    """The response's events, numbered: created, in progress, the output's items as they are
    written, then completed or incomplete; an error ends it with `error` and `response.failed`."""
    stream = EventStream(request)
    await stream.open()
    sequence = 0

    async def send(event: dict[str, Any]) -> None:
        nonlocal sequence
        event["sequence_number"] = sequence
        sequence += 1
        await stream.send(event, event=event["type"])

    writer = OutputWriter(namespaces(head.body))
    await send({"type": "response.created", "response": head.response("in_progress")})
    await send({"type": "response.in_progress", "response": head.response("in_progress")})
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                for item in writer.feed(event):
                    await send(item)
        status = writer.status
        response = head.response(status, writer)
        await _keep(request, head, items, response)
        await send({"type": f"response.{status}", "response": response})
    except Exception as exc:
        error = stream.error_of(exc)
        await send({"type": "error", "code": error.code, "message": error.message, "param": error.param})
        code = (
            "rate_limit_exceeded"
            if error.status == 429
            else "server_error"
            if error.status >= 500
            else "invalid_prompt"
        )
        response = head.response("failed", writer, {"code": code, "message": error.message})
        await _keep(request, head, items, response)
        await send({"type": "response.failed", "response": response})
    return await stream.close()


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"No response found with id '{response_id}'.", param="response_id", code="not_found")


async def _stored(request: web.Request) -> StoredResponse:
    response_id = request.match_info["response_id"]
    stored = await asyncio.to_thread(request.app[RESPONSES].get, response_id, _owner(request))
    if stored is None:
        raise _not_found(response_id)
    return stored


async def retrieve(request: web.Request) -> web.Response:
    if request.query.get("stream", "false").lower() == "true":
        raise bad_request("Streaming a stored response again is not supported here.", param="stream")
    return json_response((await _stored(request)).response)


async def delete(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    if not await asyncio.to_thread(request.app[RESPONSES].delete, response_id, _owner(request)):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10) or not low <= int(raw) <= high:
        raise bad_request(f"Invalid '{name}': expected an integer from {low} to {high}.", param=name)
    return int(raw)


async def list_input_items(request: web.Request) -> web.Response:
    """The response's input items, a page at a time (`limit`, `order`, `after`), as OpenAI lists them."""
    items = (await _stored(request)).input_items
    limit = _int_query(request, "limit", 20, 1, 100)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("Invalid 'order': expected 'asc' or 'desc'.", param="order")
    if order == "desc":
        items = items[::-1]
    after = request.query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise bad_request(f"Invalid 'after': no input item with id '{after}'.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


async def input_tokens(request: web.Request) -> web.Response:
    body, _, chat = await _read(request, InputTokensBody)
    manifest = resolve_model(request, body.model, Category.llm, "responses")
    async with engine_for(request, manifest, TextGenerator) as engine:
        count = await asyncio.to_thread(count_chat_tokens, engine, chat)
    return json_response({"object": "response.input_tokens", "input_tokens": count})


async def _open_store(app: web.Application) -> AsyncGenerator[None]:
    settings = app[CONTEXT].settings
    app[RESPONSES] = await asyncio.to_thread(ResponseStore, settings.responses_db, settings.responses_ttl)
    yield


def add_routes(app: web.Application) -> None:
    app.cleanup_ctx.append(_open_store)
    summary = "A model response (OpenAI's Responses API), kept when `store` is true"
    made = Operation("POST", "/v1/responses", summary, "openai", ResponseBody, response=ResponseObject, also=(STREAM,))
    operation(app, create_response, made)
    counted = Operation(
        "POST",
        "/v1/responses/input_tokens",
        "The input tokens a response would read",
        "openai",
        InputTokensBody,
        response=InputTokens,
    )
    operation(app, model_route(Category.llm, "responses")(input_tokens), counted)
    one = "/v1/responses/{response_id}"
    operation(app, retrieve, Operation("GET", one, "A stored response", "openai", response=ResponseObject))
    operation(app, delete, Operation("DELETE", one, "Delete a stored response", "openai", response=ResponseDeleted))
    summary = "A stored response's input items (`limit`, `order`, `after`)"
    items = Operation("GET", one + "/input_items", summary, "openai", response=InputItemList)
    operation(app, list_input_items, items)
