"""`gpustack serve`: pull the default models into an empty store, check the key policy, run the app."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from rich.console import Console

from gpustack_cli.cli.progress import RichProgress
from gpustack_cli.config import Settings
from gpustack_cli.models.pull import Puller, PullError
from gpustack_cli.models.store import NAME_PATTERN
from gpustack_cli.server.access_log import AccessLogger, RefusedRequests
from gpustack_cli.server.app import build_context, create_app

log = logging.getLogger("gpustack.server")


class StartupError(Exception):
    pass


def pull_defaults(settings: Settings, console: Console) -> None:
    puller = Puller(settings, RichProgress(console))
    console.print(f"The model store is empty: pulling the default models ({', '.join(settings.default_models)}).")
    for spec in settings.default_models:
        try:
            manifest = puller.pull(spec)
            console.print(f"[green]pulled[/] {manifest.name}")
        except PullError as exc:
            console.print(f"[yellow]could not pull {spec}:[/] {exc}")


def event_loop(choice: str) -> tuple[asyncio.AbstractEventLoop, str]:
    """A new event loop for the server, and its name: uvloop's (libuv, in C) where it is
    installed, unless `choice` is "asyncio".

    Why: every streamed token wakes the loop from the decoding thread and ends in a send, and on
    a machine whose cores all decode, the loop's time is taken from llama.cpp's threads (a thread
    that loses its core stalls the others at the step's barrier); uvloop spends less of it
    (docs/benchmarks.md compares both). Windows has no uvloop: "auto" is asyncio's loop there.
    """
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise StartupError("GPUSTACK_EVENT_LOOP is uvloop, not installed here: pip install uvloop") from None
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


def worker_threads(settings: Settings) -> int:
    """Threads for blocking work: a streamed answer holds one while it runs (its tokens come from
    the engine's decode loop through it), so there must be more than the slots of every model that
    may be loaded, with room for the short jobs (tokenizing, encoding images) beside them. Python's
    default, min(32, cores + 4), is 6 on a two-core machine: the seventh stream would wait for one
    to end."""
    return max(32, 2 * settings.parallel * settings.max_loaded_models + 8)


def stop_when_stdin_ends() -> None:
    """Stop this server (as a SIGTERM does) once its standard input ends: its parent is gone."""

    def watch() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        log.info("standard input closed: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def serve(settings: Settings, console: Console) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(RefusedRequests())
    ctx = build_context(settings)
    if not settings.loopback_only and not ctx.auth.enabled and not settings.insecure_no_auth:
        raise StartupError(
            f"refusing to listen on {settings.host} without an API key: create one with `gpustack keys create`, "
            "set GPUSTACK_API_KEY, or pass --insecure-no-auth to serve everyone on the network"
        )
    for swept in ctx.store.sweep():
        log.info("removed %s, left by a pull that was stopped", swept.name)
    if settings.pull_defaults and not ctx.store.list():
        pull_defaults(settings, console)
    invalid = [name for name in settings.preload if not NAME_PATTERN.match(name)]
    if invalid:
        raise StartupError(f"cannot preload {', '.join(invalid)}: not a model name")
    missing = [name for name in settings.preload if not ctx.store.exists(name)]
    if missing:
        raise StartupError(f"cannot preload {', '.join(missing)}: not in the store (see `gpustack list`)")
    models = len(ctx.store.list())
    keys = "on" if ctx.auth.enabled else "off (loopback only)" if settings.loopback_only else "OFF (insecure)"

    def announce(_message: str) -> None:
        console.print(f"gpustack serving {models} model(s) on [bold]{settings.url}[/] (API keys: {keys})")

    if settings.stop_with_stdin:
        stop_when_stdin_ends()
    loop, loop_name = event_loop(settings.event_loop)
    loop.set_default_executor(ThreadPoolExecutor(worker_threads(settings), thread_name_prefix="gpustack"))
    log.info("event loop: %s", loop_name)
    web.run_app(
        create_app(ctx),
        host=settings.host,
        port=settings.port,
        access_log_class=AccessLogger,
        handler_cancellation=True,
        print=announce,
        shutdown_timeout=10,
        loop=loop,
    )
