"""Requests for remote models go to their upstream servers, byte for byte.

Every `/v1` model route is forwarded as it came (the `model` field rewritten when the upstream
names the model otherwise), streaming included; the Generic Proxy forwards its path. Anthropic's
`/v1/messages` goes to the upstream's own route when it has one, else it is translated onto the
upstream's chat completions through the same text core events the local engines produce.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from gpustack_cli.models.store import Manifest
from gpustack_cli.server.context import CONTEXT, REQUEST_ID, read_form, read_json_object
from gpustack_cli.server.errors import APIError
from gpustack_cli.upstream.clients.base import HttpClient, UpstreamError, UpstreamTimeout, UpstreamUnreached, replayable
from gpustack_cli.upstream.clients.raw import RawClient
from gpustack_cli.upstream.clients.raw import Response as UpstreamResponse
from gpustack_cli.upstream.clients.session import SessionClient
from gpustack_cli.upstream.pool import RemoteEngine, Upstream

# Hop-by-hop headers (RFC 9110) and those that describe this hop's body or credentials (a
# browser's cookies for this server are not the upstream's either).
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
    "cookie",
    "proxy-connection",
}
# The byte relay's client (forwarding as it came), and the one for answers parsed here.
RELAY = web.AppKey("upstream_relay", RawClient | SessionClient)
CLIENT = web.AppKey("upstream_client", HttpClient)
SMALL_ANSWER = 1024 * 1024
# Characters kept as they are when a decoded proxy path is encoded again for the upstream.
PATH_SAFE = "/!$&'()*+,;=:@"


def credentials(engine: RemoteEngine) -> list[tuple[str, str]]:
    """The upstream's own key, sent in place of ours (which never leaves this server)."""
    return [("Authorization", f"Bearer {engine.api_key}")] if engine.api_key else []


def _timed_out(upstream: Upstream) -> APIError:
    message = f"The upstream of this model did not answer in time ({upstream.url})."
    return APIError(504, message, code="upstream_timeout")


def _not_retried(upstream: Upstream, exc: UpstreamError) -> APIError:
    """A request that went out to `upstream` and got no answer: not sent to another upstream,
    since it may have run there (a second generation, a second write)."""
    return APIError(
        502,
        f"The upstream {upstream.url} took the request and gave no answer ({exc}); it was not sent to another "
        "upstream, as it may have run there.",
        code="upstream_unavailable",
    )


def _named_in_connection(values: list[str]) -> set[str]:
    """The headers a `Connection` header names: hop-by-hop for this connection alone (RFC 9110 7.6.1)."""
    return {name.strip().lower() for value in values for name in value.split(",") if name.strip()}


def _headers(request: web.Request, engine: RemoteEngine, content_type: str | None) -> list[tuple[str, str]]:
    """The client's headers for the upstream: hop-by-hop ones and our credentials left out, the
    request's id as ours (so that both servers' logs name the request alike)."""
    replaced = HOP_BY_HOP | {"x-request-id"} | ({"content-type"} if content_type is not None else set())
    replaced |= _named_in_connection(request.headers.getall("Connection", []))
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
            body = {**body, "model": engine.upstream_model}
            return orjson.dumps(body), None
    return raw, None


def upstream_target(path: str, request: web.Request) -> str:
    """`path` (decoded) percent-encoded again, with the request's query as the client sent it."""
    query = request.raw_path.partition("?")[2]
    return quote(path, safe=PATH_SAFE) + (f"?{query}" if query else "")


class FramedResponse(web.StreamResponse):
    """An answer whose body is written already framed: an upstream's chunked body passed on as
    it came, so that aiohttp neither frames it again nor counts its length (the switch is the one
    aiohttp's WebSocketResponse and its own tests of raw chunked bodies use: an internal, hence
    the bound on aiohttp's version in pyproject.toml)."""

    _length_check = False

    def __init__(self, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        self.headers["Transfer-Encoding"] = "chunked"


async def forward(request: web.Request, engine: RemoteEngine, path: str) -> web.StreamResponse:
    """Send the request to the first upstream that answers and stream its answer back."""
    client = request.app[RELAY]
    body, content_type = await _body(request, engine)
    headers = _headers(request, engine, content_type)
    target = upstream_target(path, request)
    # An HTTP/1.1 client takes a chunked answer as the upstream framed it (no copies here).
    framing = request.version == aiohttp.HttpVersion11 and request.method != "HEAD"
    failure: Exception | None = None
    for upstream in engine.order():
        response: web.StreamResponse | None = None
        try:
            with engine.serving(upstream):
                if isinstance(client, RawClient):
                    opened = client.request(
                        request.method,
                        upstream.url,
                        target,
                        headers,
                        body,
                        timeout=engine.timeout,
                        keep_framing=framing,
                    )
                else:
                    opened = client.request(request.method, upstream.url, target, headers, body, timeout=engine.timeout)
                async with opened as answer:
                    back = CIMultiDict((k, v) for k, v in answer.headers if k.lower() not in HOP_BY_HOP)
                    if answer.content_length is not None and answer.content_length <= SMALL_ANSWER:
                        # A small answer of known length goes back in one write: less per-request overhead.
                        whole = await answer.read()
                        return web.Response(status=answer.status, reason=answer.reason, body=whole, headers=back)
                    # The raw client's answer, framed or of a declared length, passes as it comes (`_relay`).
                    raw = isinstance(answer, UpstreamResponse)
                    relayed = raw and (answer.framed or answer.content_length is not None)
                    if raw and answer.framed:
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
            await _check_running(engine, exc)
            if response is not None:  # the answer had begun: it is cut short for the client too
                raise APIError(502, f"The upstream broke off its answer: {exc}", code="upstream_unavailable") from exc
            if isinstance(exc, UpstreamTimeout):
                raise _timed_out(upstream) from exc
            engine.failed(upstream)
            if not isinstance(exc, UpstreamUnreached) and not replayable(request.method, headers):
                raise _not_retried(upstream, exc) from exc
            failure = exc
    raise APIError(502, f"No upstream of this model answers: {failure}", code="upstream_unavailable")


async def _check_running(engine: RemoteEngine, exc: UpstreamError) -> None:
    """A 503 saying why, when the failure was the engine's end (a model's child server), not an
    upstream's: the scheduler unloads such an engine, and the next request loads the model again."""
    why = await asyncio.to_thread(engine.stopped)
    if why is not None:
        raise APIError(503, why, code="model_stopped") from exc


async def _relay(request: web.Request, answer: UpstreamResponse) -> None:
    """The body from the upstream's connection straight into the client's, as it arrives. It is
    framed already, or of a declared length, so aiohttp's writer has nothing to add: it is only
    told how much went by (for the access log)."""
    if request.transport is None:
        raise ConnectionResetError("the client closed the connection")
    request.writer.output_size += await answer.relay(request.transport, request.writer.drain)


async def forward_model(request: web.Request, manifest: Manifest) -> web.StreamResponse:
    """The application's forwarder (`gpustack_cli.server.routing`): the request goes to the
    upstreams of `manifest`'s model, on the path it came on."""
    async with request.app[CONTEXT].scheduler.use(manifest.name) as engine:
        return await forward(request, engine, request.path)


# -- a chat on an upstream's chat completions, as a stream of chunks ------------------------------


async def upstream_chunks(request: web.Request, engine: RemoteEngine, body: dict[str, Any]) -> AsyncIterator[dict]:
    """The chunks an upstream streams for a chat completions request `body` (`stream` set),
    from the first upstream that answers."""
    client = request.app[CLIENT]
    headers = [("Content-Type", "application/json"), *credentials(engine)]
    payload = orjson.dumps(body)
    for upstream in engine.order():
        started = False
        try:
            with engine.serving(upstream):
                async with client.request(
                    "POST", upstream.url, "/v1/chat/completions", headers, payload, timeout=engine.timeout
                ) as answer:
                    started = True
                    if answer.status >= 400:
                        text = (await answer.read()).decode(errors="replace")
                        raise APIError(answer.status, f"The upstream refused the request: {text[:500]}")
                    async for line in answer.lines():
                        if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                            yield orjson.loads(line[6:])
            return
        except UpstreamTimeout as exc:
            raise _timed_out(upstream) from exc
        except UpstreamError as exc:
            await _check_running(engine, exc)
            engine.failed(upstream)
            if started:
                raise APIError(502, f"The upstream broke off its answer: {exc}", code="upstream_unavailable") from exc
            if not isinstance(exc, UpstreamUnreached):  # a chat is not made twice
                raise _not_retried(upstream, exc) from exc
    raise APIError(502, "No upstream of this model answers.", code="upstream_unavailable")


async def open_client(app: web.Application) -> None:
    # No cookie jar, by design: cookies one user's answer sets must never ride along on another's request.
    timeout = app[CONTEXT].settings.upstream_timeout
    relay = app[CONTEXT].settings.relay_client
    # A relay passes bodies on as they came: compressed ones stay compressed.
    app[RELAY] = RawClient(read_timeout=timeout) if relay == "raw" else SessionClient(timeout, decompress=False)
    app[CLIENT] = SessionClient(read_timeout=timeout)


async def close_client(app: web.Application) -> None:
    await app[RELAY].close()
    await app[CLIENT].close()
