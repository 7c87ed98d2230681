"""Ollama's routes: the handlers that read its bodies, resolve the model (`name:latest` is `name`),
take a slot through the scheduler and answer in its shapes, as one JSON object or as NDJSON.
A remote model's chats go to its upstream's chat completions through the same converters."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from aiohttp import web

from engines.base import Embedder, InvalidSchema, TextGenerator
from gpustack_cli import __version__
from gpustack_cli.core.embeddings import MAX_INPUTS, check_lengths, shortened
from gpustack_cli.core.limits import bounded_schemas, capped, check_chat, check_stops, check_text_size, fit_context
from gpustack_cli.core.prompts import Prepared, fill_in_the_middle
from gpustack_cli.core.streams import collect, text_events
from gpustack_cli.core.types import ChatRequest, Event, Finished, GenerationError
from gpustack_cli.models.store import Category, Manifest, ModelNotFound, StoreError
from gpustack_cli.ollama import answers, convert, models, wire
from gpustack_cli.ollama.errors import OllamaError, error_body
from gpustack_cli.runtime import batching
from gpustack_cli.server.context import (
    REQUEST_ID,
    chat_backend,
    context,
    engine_for,
    keep_alive_of,
    principal,
    read_json,
    resolve_model,
)
from gpustack_cli.server.errors import APIError, bad_request, speaks
from gpustack_cli.server.operations import Operation, operation
from gpustack_cli.server.playground import UI_HOME
from gpustack_cli.server.plumbing import public
from gpustack_cli.server.sse import NdjsonStream
from gpustack_cli.server.wire import json_response

# The release of Ollama whose API this server follows, as `/api/version` gives it: clients compare
# it with the release that brought what they use (VS Code's Copilot asks for 0.6.4 or later).
OLLAMA_API_VERSION = "0.12.6"
NDJSON = "application/x-ndjson"
# Sources a pull over the API may name: no local paths or `file:` (a caller would read the
# server's files into the store), no `remote:` (that is `gpustack add-remote`).
_API_SOURCES = ("pypi:", "hf:", "ollama:", "https://")


def _model(request: web.Request, name: str, category: Category | None = None, route: str = "") -> Manifest:
    """The model `name` names; `name:latest` is `name`, as clients add the tag Ollama assumes."""
    if not name:
        raise bad_request("Missing required parameter: 'model'.", param="model")
    try:
        return resolve_model(request, name, category, route)
    except APIError as exc:
        if exc.status != 404 or not name.endswith(":latest"):
            raise
        return resolve_model(request, name.removesuffix(":latest"), category, route)


async def _lifecycle(request: web.Request, manifest: Manifest, keep: float | None, chat: bool) -> web.Response:
    """An empty chat or generate loads the model; with `keep_alive` 0 it unloads it."""
    scheduler = context(request).scheduler
    if keep == 0:
        await scheduler.unload(manifest.name)
        return json_response(convert.lifecycle(manifest.name, "unload", chat))
    async with scheduler.use(manifest.name, keep):
        pass
    return json_response(convert.lifecycle(manifest.name, "load", chat))


async def _streamed(
    request: web.Request,
    events: AsyncIterator[Event],
    chunk: Callable[[Event], dict[str, Any] | None],
    final: Callable[[Finished], dict[str, Any]],
) -> web.StreamResponse:
    """The answer as NDJSON: a chunk an event, then the last object; an error ends it as an
    `{"error": ...}` line (the status is gone)."""
    stream = NdjsonStream(request)
    await stream.open()
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                line = final(event) if isinstance(event, Finished) else chunk(event)
                if line is not None:
                    await stream.send(line)
    except Exception as exc:
        await stream.fail(exc)
    return await stream.close()


def _checked(chat: ChatRequest, request: web.Request) -> ChatRequest:
    check_chat(chat, context(request).settings.limits, schema_param="format", stop_param="options.stop")
    return chat


# -- chat and generate ----------------------------------------------------------------------------


async def chat(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, wire.ChatBody)
    manifest = _model(request, body.model, Category.llm, "chat")
    keep = keep_alive_of(request, body.keep_alive)
    if not body.messages:
        return await _lifecycle(request, manifest, keep, chat=True)
    asked = _checked(convert.chat_request(body), request)
    clock, name = convert.Clock(), manifest.name
    async with chat_backend(request, manifest, keep) as backend:
        clock.ready()
        run = await backend.start(asked, request[REQUEST_ID])
        events = clock.timed(run.events)
        if body.stream:
            return await _streamed(
                request,
                events,
                lambda event: convert.chat_chunk(name, event),
                lambda finished: convert.chat_final(name, finished, clock),
            )
        answer = await collect(events)
    return json_response(convert.chat_answer(name, answer, clock))


async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, wire.GenerateBody)
    convert.refuse_unsupported(body)
    manifest = _model(request, body.model, Category.llm, "generate")
    keep = keep_alive_of(request, body.keep_alive)
    if not body.prompt and not body.suffix:
        return await _lifecycle(request, manifest, keep, chat=False)
    clock, name = convert.Clock(), manifest.name
    if body.raw or body.suffix:
        return await _generate_raw(request, body, manifest, keep, clock)
    asked = _checked(convert.generate_request(body), request)
    async with chat_backend(request, manifest, keep) as backend:
        clock.ready()
        run = await backend.start(asked, request[REQUEST_ID])
        return await _generated(request, body, name, run.events, clock)


async def _generate_raw(
    request: web.Request, body: wire.GenerateBody, manifest: Manifest, keep: float | None, clock: convert.Clock
) -> web.StreamResponse:
    """The prompt as it is, with no template (`raw`), or around `suffix` in the model's
    fill-in-the-middle tokens."""
    limits = context(request).settings.limits
    prompt, suffix = body.prompt or "", body.suffix or ""
    check_text_size(len(prompt) + len(suffix), limits, "prompt")
    stops = convert.stops(body.options)
    check_stops(stops, limits, "options.stop")
    schema = convert.schema_of(body.format)
    if schema is not None:  # its bounds, as a chat's
        [schema] = bounded_schemas([("format", schema)], limits)
    async with engine_for(request, manifest, TextGenerator, keep) as engine:
        clock.ready()
        tokens = await asyncio.to_thread(engine.tokenize, prompt)
        if suffix:
            tokens = fill_in_the_middle(engine, tokens, suffix)
        if schema is not None:
            try:
                engine.check_schema(schema)
            except InvalidSchema as exc:
                raise GenerationError(f"Invalid schema: {exc}", param="format", code="invalid_schema") from exc
        budget = fit_context(engine, len(tokens), capped(convert.max_tokens(body.options), limits), what="prompt")
        sampling = replace(convert.sampling(body.options), max_tokens=budget, json_schema=schema)
        events = text_events(engine, Prepared(tokens, sampling, stops), request[REQUEST_ID])
        return await _generated(request, body, manifest.name, events, clock)


async def _generated(
    request: web.Request, body: wire.GenerateBody, name: str, events: AsyncIterator[Event], clock: convert.Clock
) -> web.StreamResponse:
    events = clock.timed(events)
    if body.stream:
        return await _streamed(
            request,
            events,
            lambda event: convert.generate_chunk(name, event),
            lambda finished: convert.generate_final(name, finished, clock),
        )
    answer = await collect(events)
    return json_response(convert.generate_final(name, answer.finished, clock, answer.text, answer.reasoning))


# -- embeddings -----------------------------------------------------------------------------------


async def _embedded(
    request: web.Request, name: str, texts: list[str], keep: float | None, truncate: bool, dimensions: int | None
) -> tuple[list[list[float]], int, convert.Clock]:
    if len(texts) > MAX_INPUTS:
        raise bad_request(f"Invalid 'input': at most {MAX_INPUTS} inputs per request.", param="input")
    settings = context(request).settings
    check_text_size(sum(map(len, texts)), settings.limits, "input")
    manifest = _model(request, name, Category.embedding, "embed")
    clock = convert.Clock()
    async with engine_for(request, manifest, Embedder, keep) as engine:
        clock.ready()
        cut = dimensions is not None and dimensions != engine.dimensions
        if cut and (not engine.truncatable or dimensions > engine.dimensions):
            raise bad_request(
                f"Model '{manifest.name}' makes vectors of {engine.dimensions} dimensions; it cannot make "
                f"{dimensions}.",
                param="dimensions",
            )
        tokens = await asyncio.to_thread(check_lengths, texts, engine, truncate)
        vectors = await batching.embed(engine, texts, settings.batch_wait)
    if dimensions is not None and vectors and dimensions != len(vectors[0]):
        vectors = [shortened(v, dimensions) for v in vectors]
    return vectors, tokens, clock


async def embed(request: web.Request) -> web.Response:
    body = await read_json(request, wire.EmbedBody)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    for index, text in enumerate(texts):
        if not text:
            raise bad_request(f"Invalid 'input[{index}]': empty strings cannot be embedded.", param="input")
    keep = keep_alive_of(request, body.keep_alive)
    vectors, tokens, clock = await _embedded(request, body.model, texts, keep, body.truncate, body.dimensions)
    done = clock.durations(Finished("stop", tokens, 0))
    return json_response(
        {
            "model": body.model,
            "embeddings": vectors,
            "total_duration": done["total_duration"],
            "load_duration": done["load_duration"],
            "prompt_eval_count": tokens,
        }
    )


async def embeddings(request: web.Request) -> web.Response:
    """The older single-text route: an empty prompt has an empty embedding, as Ollama gives it."""
    body = await read_json(request, wire.LegacyEmbeddingsBody)
    if not body.prompt:
        _model(request, body.model, Category.embedding, "embeddings")
        return json_response({"embedding": []})
    vectors, _, _ = await _embedded(
        request, body.model, [body.prompt], keep_alive_of(request, body.keep_alive), True, None
    )
    return json_response({"embedding": vectors[0]})


# -- models ---------------------------------------------------------------------------------------


async def version(request: web.Request) -> web.Response:
    return json_response({"version": OLLAMA_API_VERSION, "gpustack": __version__})


async def root(request: web.Request) -> web.Response:
    """Browsers go to the playground (where it is served); other clients learn that the API
    answers, in Ollama's words."""
    if "text/html" in request.headers.get("Accept", "") and request.app.get(UI_HOME):
        raise web.HTTPFound(request.app[UI_HOME])
    return web.Response(text="Ollama is running")


async def tags(request: web.Request) -> web.Response:
    ctx, who = context(request), principal(request)

    def listing() -> list[dict[str, Any]]:
        return [models.listed(m, models.gguf_metadata(ctx.store, m)) for m in ctx.store.list() if who.may_use(m.name)]

    return json_response({"models": await asyncio.to_thread(listing)})


async def show(request: web.Request) -> web.Response:
    body = await read_json(request, wire.ShowBody)
    manifest = _model(request, body.named)
    return json_response(await asyncio.to_thread(models.shown, context(request).store, manifest, body.verbose))


async def ps(request: web.Request) -> web.Response:
    """The loaded models a key may use."""
    ctx, who = context(request), principal(request)
    engines = dict(ctx.scheduler.engines())

    def listing() -> list[dict[str, Any]]:
        found = []
        for loaded in ctx.scheduler.loaded():
            if not who.may_use(loaded.name):
                continue
            try:
                manifest = ctx.store.get(loaded.name)
            except (StoreError, ValueError):
                continue  # removed while loaded: it goes when it unloads
            meta = models.gguf_metadata(ctx.store, manifest)
            on_gpu = bool(getattr(engines.get(loaded.name), "gpu_offload", False))
            found.append(models.running(loaded, manifest, meta, on_gpu))
        return found

    return json_response({"models": await asyncio.to_thread(listing)})


# -- the store ------------------------------------------------------------------------------------


def pull_spec(name: str) -> str:
    """What a pull over the API fetches: a catalog name or a source of `_API_SOURCES` as
    `gpustack pull` takes it; any other name is one of Ollama's registry, as Ollama's pull means."""
    from gpustack_cli.models.catalog import CATALOG

    if not name:
        raise bad_request("Missing required parameter: 'model'.", param="model")
    if name in CATALOG or name.startswith(_API_SOURCES):
        return name
    if name.startswith(("http://", "file:", "remote:", "/", ".", "~")):
        raise bad_request(
            "This source cannot be pulled over the API (local files, plain http and remote models are "
            "the command line's: gpustack pull, gpustack add-remote).",
            param="model",
        )
    return "ollama:" + name


class _QueuedProgress:
    """The puller's progress as Ollama's events, put on the event loop's queue from the pull's
    thread: one when a file begins, then at most one every `every` seconds, and one when it ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[dict[str, Any]], every: float = 0.25):
        self.loop, self.queue, self.every = loop, queue, every

    def put(self, event: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        done, last = 0, 0.0

        def event() -> dict[str, Any]:
            return {"status": f"pulling {description}", "digest": description, "total": total or 0, "completed": done}

        def advance(n: int) -> None:
            nonlocal done, last
            done += n
            if time.monotonic() - last >= self.every:
                last = time.monotonic()
                self.put(event())

        self.put(event())
        yield advance
        self.put(event())


async def pull(request: web.Request) -> web.StreamResponse:
    from gpustack_cli.models.pull import Puller, PullError  # only a pull needs the sources' clients

    body = await read_json(request, wire.PullBody)
    spec = pull_spec(body.named)
    name = (
        body.named.removesuffix(":latest") if not spec.startswith(_API_SOURCES) or spec.startswith("ollama:") else None
    )
    loop, queue = asyncio.get_running_loop(), asyncio.Queue[dict[str, Any]]()
    puller = Puller(context(request).settings, _QueuedProgress(loop, queue))
    store_name = name if name and spec.startswith("ollama:") else None
    work = asyncio.ensure_future(asyncio.to_thread(puller.pull, spec, store_name))
    queue.put_nowait({"status": "pulling manifest"})

    async def events() -> AsyncIterator[dict[str, Any]]:
        while not (work.done() and queue.empty()):
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait([getter, work], return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        try:
            work.result()
        except (PullError, StoreError) as exc:
            raise bad_request(str(exc), param="model") from exc
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        yield {"status": "success"}

    if not body.stream:
        said = [event async for event in events()]
        return json_response(said[-1])
    stream = NdjsonStream(request)
    await stream.open()
    try:
        async for event in events():
            await stream.send(event)
    except Exception as exc:
        await stream.fail(exc)
    return await stream.close()


async def delete(request: web.Request) -> web.Response:
    body = await read_json(request, wire.ModelBody)
    manifest = _model(request, body.named)
    ctx = context(request)
    await ctx.scheduler.unload(manifest.name)
    try:
        await asyncio.to_thread(ctx.store.remove, manifest.name)
    except ModelNotFound as exc:
        raise APIError(404, f"model '{manifest.name}' not found", param="model") from exc
    return web.Response()


async def copy(request: web.Request) -> web.Response:
    body = await read_json(request, wire.CopyBody)
    manifest = _model(request, body.source)
    try:
        await asyncio.to_thread(context(request).store.copy, manifest.name, body.destination)
    except (StoreError, ValueError) as exc:
        raise bad_request(str(exc), param="destination") from exc
    return web.Response()


async def not_here(request: web.Request) -> web.Response:
    """`/api/create` and `/api/push`: models come from pulls here, and go nowhere."""
    what = {
        "/api/create": "Creating models is not supported: pull one (gpustack pull, or /api/pull) and change "
        "its settings with `gpustack model set`.",
        "/api/push": "Pushing models to a registry is not supported: this server pulls models only.",
    }[request.path]
    raise APIError(501, what)


def add_routes(app: web.Application) -> None:
    public(app, "/", "/api/version")
    streamed = (NDJSON,)
    management = "management"
    routes: list[tuple[Operation, Callable]] = [
        (
            Operation(
                "GET", "/", "Whether the server runs (Ollama's check)", "ollama", also=("text/plain",), public=True
            ),
            root,
        ),
        (
            Operation("GET", "/api/version", "Ollama's API version", "ollama", response=answers.Version, public=True),
            version,
        ),
        (Operation("GET", "/api/tags", "The models (Ollama)", "ollama", response=answers.Tags), tags),
        (Operation("POST", "/api/show", "One model (Ollama)", "ollama", wire.ShowBody, response=answers.Shown), show),
        (Operation("GET", "/api/ps", "The loaded models", "ollama", response=answers.RunningList, scope="any"), ps),
        (
            Operation(
                "POST",
                "/api/chat",
                "A chat (Ollama)",
                "ollama",
                wire.ChatBody,
                response=answers.ChatAnswer,
                also=streamed,
            ),
            chat,
        ),
        (
            Operation(
                "POST",
                "/api/generate",
                "A completion (Ollama)",
                "ollama",
                wire.GenerateBody,
                response=answers.GenerateAnswer,
                also=streamed,
            ),
            generate,
        ),
        (
            Operation("POST", "/api/embed", "Embeddings (Ollama)", "ollama", wire.EmbedBody, response=answers.Embedded),
            embed,
        ),
        (
            Operation(
                "POST",
                "/api/embeddings",
                "One embedding (Ollama's older route)",
                "ollama",
                wire.LegacyEmbeddingsBody,
                response=answers.LegacyEmbedding,
            ),
            embeddings,
        ),
        (
            Operation(
                "POST",
                "/api/pull",
                "Pull a model (Ollama)",
                "ollama",
                wire.PullBody,
                response=answers.Progress,
                also=streamed,
                scope=management,
            ),
            pull,
        ),
        (
            Operation("DELETE", "/api/delete", "Remove a model (Ollama)", "ollama", wire.ModelBody, scope=management),
            delete,
        ),
        (
            Operation(
                "POST",
                "/api/copy",
                "Copy a model under another name (Ollama)",
                "ollama",
                wire.CopyBody,
                scope=management,
            ),
            copy,
        ),
        (Operation("POST", "/api/create", "Not supported (Ollama's create)", "ollama", scope=management), not_here),
        (Operation("POST", "/api/push", "Not supported (Ollama's push)", "ollama", scope=management), not_here),
    ]
    for op, handler in routes:
        speaks(app, operation(app, handler, replace(op, error=OllamaError)), error_body)
