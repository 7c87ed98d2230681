"""What every route handler reaches: the server's shared objects, and the request's helpers."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDict, MultiDictProxy
from pydantic import BaseModel, ValidationError

from engines.base import TextGenerator
from gpustack_cli.config import Settings, parse_duration
from gpustack_cli.core.backend import ChatBackend, LocalChat
from gpustack_cli.core.json_values import MAX_DEPTH, depth
from gpustack_cli.models.store import Category, Manifest, ModelNotFound, ModelStore
from gpustack_cli.runtime.scheduler import Scheduler
from gpustack_cli.server.errors import APIError, bad_request, from_validation, model_not_found
from gpustack_cli.server.keys import Authenticator, Principal, Scope, Throttle
from gpustack_cli.server.metrics import Metrics

Body = TypeVar("Body", bound=BaseModel)

ANONYMOUS = Principal(name="anonymous", scope=Scope.all)


# How many scrypt checks of new keys run at once (each takes 16 MiB and tens of milliseconds of a core).
KEY_CHECKS = 2


@dataclass
class ServerContext:
    settings: Settings
    store: ModelStore
    scheduler: Scheduler
    auth: Authenticator
    metrics: Metrics
    # Failed key checks by client address and key id, and the slow checks allowed at once.
    throttle: Throttle = field(default_factory=Throttle)
    key_checks: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(KEY_CHECKS))


CONTEXT = web.AppKey("context", ServerContext)
PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)


def context(request: web.Request) -> ServerContext:
    return request.app[CONTEXT]


def principal(request: web.Request) -> Principal:
    return request.get(PRINCIPAL, ANONYMOUS)


def _too_large(limit: int, what: str = "Request body") -> APIError:
    return APIError(413, f"{what} too large: the limit is {limit} bytes.", code="request_too_large")


async def read_body(request: web.Request) -> bytes:
    """The whole body, within the JSON size limit and the body timeout (413 and 408 otherwise)."""
    limit = context(request).settings.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        async with asyncio.timeout(context(request).settings.body_timeout):
            raw = await request.read()
    except TimeoutError:
        raise _body_timeout(request) from None
    if len(raw) > limit:
        raise _too_large(limit)
    return raw


def _body_timeout(request: web.Request) -> APIError:
    seconds = context(request).settings.body_timeout
    return APIError(408, f"The request body did not arrive within {seconds:g} seconds.", code="request_timeout")


_NOT_JSON = object()
JSON_BODY = web.RequestKey("json_body", object)


async def _parsed_body(request: web.Request) -> Any:
    """The body parsed as JSON once per request (orjson refuses nesting past 1024 levels), or
    _NOT_JSON; empty bodies are None."""
    if JSON_BODY not in request:
        raw = await read_body(request)
        try:
            request[JSON_BODY] = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            request[JSON_BODY] = _NOT_JSON
    return request[JSON_BODY]


# Types that clients which are not browsers put on JSON by default (`curl -d`, a library sending
# bytes): read as JSON when no web page sent them.
_UNTYPED = frozenset({"application/x-www-form-urlencoded", "application/octet-stream"})


def _check_json_type(request: web.Request) -> None:
    """A JSON route takes JSON: a body typed as text or a form is what a web page can send to
    another site without asking the browser first, and is refused (415). No type, or the type
    curl and byte-sending libraries put on any body, is taken as JSON from a client that is not
    a browser (one that sends no `Origin`)."""
    if hdrs.CONTENT_TYPE not in request.headers:
        return
    kind = request.content_type
    if kind in _UNTYPED and hdrs.ORIGIN not in request.headers:
        return
    if kind != "application/json" and not kind.endswith("+json"):
        raise APIError(
            415,
            f"This route takes a JSON body: send it with 'Content-Type: application/json', not '{kind}'.",
            code="unsupported_media_type",
        )


async def read_json(request: web.Request, model: type[Body]) -> Body:
    """The request's JSON body, size-checked and validated into `model` (400/413/415 otherwise)."""
    _check_json_type(request)
    body = await _parsed_body(request)
    if body is None:
        raise bad_request("The request body is empty; send a JSON object.")
    if body is _NOT_JSON:
        raise bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload.)"
        )
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    if depth(body) > MAX_DEPTH:
        raise bad_request(f"The request body nests deeper than {MAX_DEPTH} levels.")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from exc


async def read_json_object(request: web.Request) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (for routing on its `model`)."""
    body = await _parsed_body(request)
    return body if isinstance(body, dict) else None


FORM = web.RequestKey("form", MultiDictProxy)


async def read_form(
    request: web.Request, hint: str = "", param: str | None = None
) -> MultiDictProxy[str | web.FileField]:
    """The request's multipart form: text fields as str, files as `web.FileField`, read once.

    aiohttp's `request.post()` decodes a part sent without a filename as text, so a binary field
    (curl's `-F 'image=<x.png'`) failed; here a part that is not text, or too long for a text
    field, is a file. Parts, the whole upload and its read time are bounded by the settings; a
    malformed body is a 400."""
    if FORM in request:
        return request[FORM]
    if not request.content_type.startswith("multipart/form-data"):
        message = hint or "Send this request as multipart/form-data."
        raise APIError(415, message, code="unsupported_media_type", param=param)
    settings = context(request).settings
    if request.content_length is not None and request.content_length > settings.max_upload_bytes:
        raise _too_large(settings.max_upload_bytes)
    try:
        async with asyncio.timeout(settings.body_timeout):
            form = await _parse_form(request, settings)
    except TimeoutError:
        raise _body_timeout(request) from None
    except (ValueError, AssertionError, RuntimeError, LookupError, HttpProcessingError) as exc:  # aiohttp's parser
        raise bad_request(f"The multipart body could not be read: {exc}.") from exc
    request[FORM] = form
    return form


async def _parse_form(request: web.Request, settings: Settings) -> MultiDictProxy[str | web.FileField]:
    reader = await request.multipart()
    fields: MultiDict[str | web.FileField] = MultiDict()
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise bad_request("Nested multipart bodies are not supported.")
        if len(fields) >= settings.max_form_parts:
            raise bad_request(f"Too many parts in the form: at most {settings.max_form_parts}.")
        data = bytearray()
        while chunk := await part.read_chunk(256 * 1024):
            data += part.decode(chunk)
            total += len(chunk)
            if total > settings.max_upload_bytes:
                raise _too_large(settings.max_upload_bytes)
        name = part.name or ""
        text = None
        if part.filename is None and len(data) <= settings.max_form_field_bytes:
            with contextlib.suppress(UnicodeDecodeError):
                text = data.decode(part.get_charset(default="utf-8"))
        if text is not None:
            fields.add(name, text)
        else:  # a file, or a field whose bytes are not text (or too many for a text field)
            content_type = part.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream")
            file = io.BytesIO(bytes(data))
            fields.add(name, web.FileField(name, part.filename or name, file, content_type, part.headers))
    return MultiDictProxy(fields)


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


# Given by the composition root: the chat backend of a remote model's engine (None for a local one),
# so that the plumbing needs no protocol to answer a remote model's chat.
RemoteChat = Callable[[web.Request, Any, Manifest], ChatBackend | None]
REMOTE_CHAT = web.AppKey("remote_chat", RemoteChat)


@asynccontextmanager
async def chat_backend(
    request: web.Request, manifest: Manifest, keep_alive: float | None = None
) -> AsyncIterator[ChatBackend]:
    """Hold a request slot of the model, and the backend that answers its chats: the local engine,
    or the upstreams of a remote model."""
    async with context(request).scheduler.use(manifest.name, keep_alive) as engine:
        remote = request.app.get(REMOTE_CHAT)
        backend = remote(request, engine, manifest) if remote is not None else None
        if backend is not None:
            yield backend
        elif isinstance(engine, TextGenerator):
            yield LocalChat(engine)
        else:
            what = _CAPABILITIES["TextGenerator"]
            raise bad_request(f"Model '{manifest.name}' cannot {what}.", param="model", code="model_not_supported")


_CAPABILITIES = {
    "TextGenerator": "generate text",
    "Embedder": "embed text",
    "Reranker": "rerank",
    "Tokenizer": "tokenize",
    "Speaker": "speak",
    "Transcriber": "transcribe",
    "ImageGenerator": "make images",
}
