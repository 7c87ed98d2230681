"""The whole server, put together: the shared objects (store, scheduler, keys, metrics), the
plumbing of `gpustack_cli.server`, every protocol's routes, and the upstream machinery for remote
models. The one place that knows every part; each part knows only the plumbing and the text core."""

from __future__ import annotations

from aiohttp import web

from engines.base import Engine
from gpustack_cli.anthropic import routes as anthropic
from gpustack_cli.config import Settings
from gpustack_cli.jina import rerank
from gpustack_cli.models.loading import load_model
from gpustack_cli.models.store import ModelStore
from gpustack_cli.native import tokenize
from gpustack_cli.ollama import routes as ollama
from gpustack_cli.openai import audio, chat, embeddings, images, models, response_routes
from gpustack_cli.openai.errors import OpenAIError
from gpustack_cli.openai.errors import error_body as openai_errors
from gpustack_cli.runtime.scheduler import Scheduler
from gpustack_cli.server import management, openapi, playground
from gpustack_cli.server.context import REMOTE_CHAT, ServerContext
from gpustack_cli.server.keys import Authenticator, KeyStore
from gpustack_cli.server.metrics import Metrics
from gpustack_cli.server.operations import DEFAULT_ERROR_DOC
from gpustack_cli.server.plumbing import application
from gpustack_cli.server.routing import FORWARDER, remote_manifest
from gpustack_cli.upstream import forward, health, linked, proxy
from gpustack_cli.upstream.chat import remote_chat

PROTOCOLS = (
    management.add_routes,
    models.add_routes,
    chat.add_routes,
    response_routes.add_routes,
    anthropic.add_routes,
    embeddings.add_routes,
    rerank.add_routes,
    audio.add_routes,
    images.add_routes,
    tokenize.add_routes,
    ollama.add_routes,
    proxy.add_routes,
    openapi.add_routes,
)


def build_context(settings: Settings) -> ServerContext:
    store = ModelStore(settings.home)

    def loader(name: str) -> Engine:
        return load_model(store, name, settings)

    scheduler = Scheduler(
        loader,
        max_loaded_models=settings.max_loaded_models,
        parallel=settings.parallel,
        max_queue=settings.max_queue,
        keep_alive=settings.keep_alive,
        elsewhere=lambda name: remote_manifest(store, name) is not None,
    )
    auth = Authenticator(KeyStore(settings.keys_file), settings.api_key)
    return ServerContext(settings=settings, store=store, scheduler=scheduler, auth=auth, metrics=Metrics())


def create_app(ctx: ServerContext) -> web.Application:
    # Errors of routes no protocol claims (an unknown path) take OpenAI's shape, as most clients expect.
    app = application(ctx, default_errors=openai_errors)
    app[DEFAULT_ERROR_DOC] = OpenAIError
    app[FORWARDER] = forward.forward_model
    app[REMOTE_CHAT] = remote_chat
    for add_routes in PROTOCOLS:
        add_routes(app)
    if ctx.settings.ui:
        playground.add_routes(app)
    app.on_startup.append(forward.open_client)
    app.cleanup_ctx.append(health.health_checks)
    app.cleanup_ctx.append(linked.refreshing)
    app.on_cleanup.append(forward.close_client)
    return app
