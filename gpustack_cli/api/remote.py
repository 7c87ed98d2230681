"""Requests for remote models go to their upstream servers, byte for byte.

Every `/v1` model route is forwarded as it came (the `model` field rewritten when the upstream
names the model otherwise), streaming included; the Generic Proxy forwards its path. Anthropic's
`/v1/messages` goes to the upstream's own route when it has one, else it is translated onto the
upstream's chat completions through the same text core events the local engines produce.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from engines.remote import RemoteEngine, Upstream
from gpustack_cli.api.context import CONTEXT, REQUEST_ID, read_form, read_json_object, resolve_model
from gpustack_cli.api.errors import APIError
from gpustack_cli.api.upstream_http import Response as UpstreamResponse
from gpustack_cli.api.upstream_http import UpstreamClient, UpstreamError, UpstreamTimeout
from gpustack_cli.store import Category, ModelNotFound, StoreError
from gpustack_cli.textgen import ChatRequest, Event, Finished, TextDelta, ToolCall, ToolCallEvent

ENGINE = "remote"
# Hop-by-hop headers (RFC 9110) and those that describe this hop's body or credentials.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "x-api-key",
}
# The routes forwarded for remote models, with the category each needs and its name in errors.
ROUTE_CATEGORIES = {
    "/v1/chat/completions": (Category.llm, "chat completions"),
    "/v1/completions": (Category.llm, "completions"),
    "/v1/messages": (Category.llm, "messages"),
    "/v1/messages/count_tokens": (Category.llm, "messages"),
    "/v1/embeddings": (Category.embedding, "embeddings"),
    "/v1/rerank": (Category.reranker, "rerank"),
    "/v1/audio/speech": (Category.text_to_speech, "speech"),
    "/v1/audio/transcriptions": (Category.speech_to_text, "transcriptions"),
    "/v1/audio/translations": (Category.speech_to_text, "translations"),
    "/v1/images/generations": (Category.image, "image generation"),
    "/v1/images/edits": (Category.image, "image edits"),
}
FORWARDED_ROUTES = set(ROUTE_CATEGORIES)
CLIENT = web.AppKey("upstream_client", UpstreamClient)
SMALL_ANSWER = 1024 * 1024
# Characters kept as they are when a decoded proxy path is encoded again for the upstream.
PATH_SAFE = "/!$&'()*+,;=:@"


class UpstreamMissing(Exception):
    """The upstream has no such route (a 404 or 405 before any byte was sent on)."""


def credentials(engine: RemoteEngine) -> list[tuple[str, str]]:
    """The upstream's own key, sent in place of ours (which never leaves this server)."""
    return [("Authorization", f"Bearer {engine.api_key}")] if engine.api_key else []


def _timed_out(upstream: Upstream) -> APIError:
    message = f"The upstream of this model did not answer in time ({upstream.url})."
    return APIError(504, message, code="upstream_timeout")


def _headers(request: web.Request, engine: RemoteEngine, content_type: str | None) -> list[tuple[str, str]]:
    """The client's headers for the upstream: hop-by-hop ones and our credentials left out, the
    request's id as ours (so that both servers' logs name the request alike)."""
    replaced = HOP_BY_HOP | {"x-request-id"} | ({"content-type"} if content_type is not None else set())
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in replaced]
    headers.append(("X-Request-Id", request[REQUEST_ID]))
    if content_type is not None:  # a form encoded anew has a boundary of its own
        headers.append(("Content-Type", content_type))
    return headers + credentials(engine)


async def _body(request: web.Request, engine: RemoteEngine) -> tuple[bytes, str | None]:
    """The body to send on, with the model renamed for the upstream; and a form's new Content-Type."""
    if request.content_type.startswith("multipart/form-data"):
        form = await read_form(request)
        data = aiohttp.FormData()
        for key, value in form.items():
            if isinstance(value, str):
                data.add_field(key, engine.upstream_model if key == "model" and engine.upstream_model else value)
            else:
                data.add_field(key, value.file.read(), filename=value.filename, content_type=value.content_type)
        payload = data()
        return await payload.as_bytes(), payload.content_type
    raw = await request.read()
    if engine.upstream_model and raw:
        body = await read_json_object(request)
        if body is not None and "model" in body:
            body["model"] = engine.upstream_model
            return orjson.dumps(body), None
    return raw, None


def upstream_target(path: str, request: web.Request) -> str:
    """`path` (decoded) percent-encoded again, with the request's query as the client sent it."""
    query = request.raw_path.partition("?")[2]
    return quote(path, safe=PATH_SAFE) + (f"?{query}" if query else "")


class FramedResponse(web.StreamResponse):
    """An answer whose body is written already framed: an upstream's chunked body passed on as
    it came, so that aiohttp neither frames it again nor counts its length (the switch is the one
    aiohttp's WebSocketResponse and its own tests of raw chunked bodies use)."""

    _length_check = False

    def __init__(self, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        self.headers["Transfer-Encoding"] = "chunked"


async def forward(
    request: web.Request, engine: RemoteEngine, path: str, missing_ok: bool = False
) -> web.StreamResponse:
    """Send the request to the first upstream that answers and stream its answer back."""
    client = request.app[CLIENT]
    body, content_type = await _body(request, engine)
    headers = _headers(request, engine, content_type)
    target = upstream_target(path, request)
    # An HTTP/1.1 client takes a chunked answer as the upstream framed it (no copies here).
    framing = not missing_ok and request.version == aiohttp.HttpVersion11 and request.method != "HEAD"
    failure: Exception | None = None
    for upstream in engine.order():
        response: web.StreamResponse | None = None
        try:
            async with client.request(
                request.method, upstream.url, target, headers, body, timeout=engine.timeout, keep_framing=framing
            ) as answer:
                kept = None
                if missing_ok and answer.status in (404, 405):
                    kept = await answer.read()
                    if _route_missing(answer.status, kept):
                        raise UpstreamMissing()
                back = CIMultiDict((k, v) for k, v in answer.headers if k.lower() not in HOP_BY_HOP)
                if kept is not None or (answer.content_length is not None and answer.content_length <= SMALL_ANSWER):
                    # A small answer of known length goes back in one write: less per-request overhead.
                    whole = kept if kept is not None else await answer.read()
                    return web.Response(status=answer.status, reason=answer.reason, body=whole, headers=back)
                # Framed, or of a declared length: the body passes as it comes (`_relay`).
                relayed = answer.framed or answer.content_length is not None
                if answer.framed:
                    response = FramedResponse(answer.status, answer.reason, back)
                else:
                    if answer.content_length is not None:
                        back["Content-Length"] = str(answer.content_length)
                    response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=back)
                await response.prepare(request)  # a StreamResponse sends its head at once
                if relayed:
                    await _relay(request, answer)
                else:  # aiohttp frames a body of unknown length (chunked, to HTTP/1.1 clients)
                    async for chunk in answer.iter_chunks():
                        await response.write(chunk)
                await response.write_eof()
                return response
        except UpstreamError as exc:
            if response is not None:  # the answer had begun: it is cut short for the client too
                raise APIError(502, f"The upstream broke off its answer: {exc}", code="upstream_unavailable") from exc
            if isinstance(exc, UpstreamTimeout):
                raise _timed_out(upstream) from exc
            engine.failed(upstream)
            failure = exc
    raise APIError(502, f"No upstream of this model answers: {failure}", code="upstream_unavailable")


async def _relay(request: web.Request, answer: UpstreamResponse) -> None:
    """The body from the upstream's connection straight into the client's, as it arrives. It is
    framed already, or of a declared length, so aiohttp's writer has nothing to add: it is only
    told how much went by (for the access log)."""
    if request.transport is None:
        raise ConnectionResetError("the client closed the connection")
    request.writer.output_size += await answer.relay(request.transport, request.writer.drain)


def _route_missing(status: int, body: bytes) -> bool:
    """Whether the upstream lacks the route (not: lacks the model, or refused the request)."""
    if status == 405:
        return True
    return b"model_not_found" not in body and b"not_found_error" not in body


async def _model_of(request: web.Request) -> str | None:
    if request.content_type.startswith("multipart/form-data"):
        value = (await read_form(request)).get("model")
    else:
        value = ((await read_json_object(request)) or {}).get("model")
    return value if isinstance(value, str) else None


def is_remote(request: web.Request, name: str) -> bool:
    try:
        return request.app[CONTEXT].store.get(name).engine == ENGINE
    except (ModelNotFound, StoreError, ValueError):
        return False


@web.middleware
async def remote_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.method != "POST" or request.path not in FORWARDED_ROUTES:
        return await handler(request)
    name = await _model_of(request)
    if not name or not is_remote(request, name):
        return await handler(request)
    category, route = ROUTE_CATEGORIES[request.path]
    manifest = resolve_model(request, name, category, route)
    async with request.app[CONTEXT].scheduler.use(manifest.name) as engine:
        if request.path != "/v1/messages":
            return await forward(request, engine, request.path)
        try:
            return await forward(request, engine, request.path, missing_ok=True)
        except UpstreamMissing:
            from gpustack_cli.api import anthropic  # the translation onto chat completions

            model = engine.upstream_model or name
            return await anthropic.messages_via(request, lambda chat: upstream_chat(request, engine, chat, model))


# -- Anthropic messages onto an upstream's chat completions ----------------------------------------


def openai_body(chat: ChatRequest, model: str) -> dict[str, Any]:
    messages = []
    for m in chat.messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            message["tool_call_id"] = m.tool_call_id
        messages.append(message)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": chat.sampling.temperature,
        "top_p": chat.sampling.top_p,
    }
    if chat.max_tokens:
        body["max_tokens"] = chat.max_tokens
    if chat.stop:
        body["stop"] = chat.stop
    if chat.sampling.seed is not None:
        body["seed"] = chat.sampling.seed
    if chat.tools:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in chat.tools
        ]
        choice = chat.tool_choice
        body["tool_choice"] = (
            choice if choice in ("auto", "none", "required") else {"type": "function", "function": {"name": choice}}
        )
    return body


async def upstream_chat(
    request: web.Request, engine: RemoteEngine, chat: ChatRequest, model: str
) -> AsyncIterator[Event]:
    """The events of a chat answered by the upstream's `/v1/chat/completions` (streamed)."""
    client = request.app[CLIENT]
    headers = [("Content-Type", "application/json"), *credentials(engine)]
    body = orjson.dumps(openai_body(chat, model))
    calls: dict[int, list[str]] = {}
    reason, usage = "stop", {"prompt_tokens": 0, "completion_tokens": 0}
    for upstream in engine.order():
        try:
            async with client.request(
                "POST", upstream.url, "/v1/chat/completions", headers, body, timeout=engine.timeout
            ) as answer:
                if answer.status >= 400:
                    text = (await answer.read()).decode(errors="replace")
                    raise APIError(answer.status, f"The upstream refused the request: {text[:500]}")
                async for line in answer.lines():
                    if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices", []):
                        delta = choice.get("delta", {})
                        if delta.get("content"):
                            yield TextDelta(delta["content"])
                        for call in delta.get("tool_calls") or []:
                            entry = calls.setdefault(call["index"], ["", "", ""])
                            entry[0] = call.get("id") or entry[0]
                            entry[1] += (call.get("function") or {}).get("name") or ""
                            entry[2] += (call.get("function") or {}).get("arguments") or ""
                        reason = choice.get("finish_reason") or reason
            break
        except UpstreamTimeout as exc:
            raise _timed_out(upstream) from exc
        except UpstreamError:
            engine.failed(upstream)
    else:
        raise APIError(502, "No upstream of this model answers.", code="upstream_unavailable")
    for index, (call_id, name, arguments) in sorted(calls.items()):
        yield ToolCallEvent(index, ToolCall(call_id, name, arguments or "{}"))
    finish = reason if reason in ("stop", "length", "tool_calls") else "stop"
    yield Finished(finish, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))


async def open_client(app: web.Application) -> None:
    # No cookie jar, by design: cookies one user's answer sets must never ride along on another's request.
    app[CLIENT] = UpstreamClient(read_timeout=app[CONTEXT].settings.upstream_timeout)


async def close_client(app: web.Application) -> None:
    app[CLIENT].close()
