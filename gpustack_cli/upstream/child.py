"""A model served by a `gpustack serve` of its own: a child process on a loopback port, behind a
key only this server knows, that this server forwards the model's requests to as to any upstream.

Why a process: llama.cpp's RPC backend ends the process that holds a model when one of its RPC
servers stops answering (ggml aborts: no error comes back to catch). A model whose layers are on
RPC servers therefore runs in a child; when the child ends, its engine says so (`broken`): the
request that was running gets a 503 naming the RPC server that went away, the scheduler unloads
the model, and the next request starts a child again (which fails clearly while the RPC server is
still down, and loads once it is back).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engines.base import EngineUnavailable
from engines.ggml_devices import check_reachable
from gpustack_cli.config import Settings
from gpustack_cli.upstream.pool import RemoteEngine, Upstream

log = logging.getLogger("gpustack.child")
# Seconds a child may take to load its model (weights cross the network to RPC servers).
LOAD_TIMEOUT = 1800.0
# Lines of a child's output kept to explain why it ended.
TAIL = 40


@dataclass
class ChildEngine(RemoteEngine):
    """A model in a child server (`start`), forwarded to as a remote model of one upstream."""

    name: str = ""
    process: subprocess.Popen[bytes] | None = None
    rpc: tuple[str, ...] = ()
    # What the child reports of its model once loaded (its `/api/ps` entry).
    n_ctx: int | None = None
    context_from: str | None = None
    kv_cache: dict[str, str] | None = None
    placement: list[dict[str, Any]] = field(default_factory=list)
    output: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL))

    @property
    def broken(self) -> bool:
        """Whether the child has ended: the model must be loaded again."""
        return self.process is None or self.process.poll() is not None

    def ended(self, wait: float) -> bool:
        """Whether the child has ended or ends within `wait` seconds (a connection to it breaks
        an instant before the process is gone)."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stopped(self) -> str | None:
        """Why the child ended (which RPC server went away, or else what it said last), or None
        while it runs."""
        if not self.ended(2.0):
            return None
        down = [f"{endpoint} ({why})" for endpoint in self.rpc if (why := check_reachable(endpoint, 2.0))]
        if down:
            return (
                f"model '{self.name}' stopped: its RPC server {', '.join(down)} does not answer. "
                "The model loads again on the next request, once the server is back."
            )
        code = None if self.process is None else self.process.returncode
        return f"model '{self.name}' stopped: its process ended (exit code {code}): {_last_words(self.output)}"

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.stdin is not None:
            self.process.stdin.close()  # the child stops when its input ends (and was told to)
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _last_words(lines: deque[str]) -> str:
    said = [line for line in lines if line.strip()]
    errors = [line for line in said if "error" in line.lower() or "abort" in line.lower()]
    return (errors or said or ["(nothing)"])[-1].strip()


def program() -> list[str]:
    """The command that runs this gpustack: the binary itself, or this Python with the package."""
    return [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "gpustack_cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read(engine: ChildEngine, stream: Any) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        engine.output.append(line)
        log.debug("[%s] %s", engine.name, line)


def _loaded(url: str, key: str, name: str) -> dict[str, Any] | None:
    """The child's `/api/ps` entry for `name` once it answers, else None."""
    request = urllib.request.Request(f"{url}/api/ps", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            models = json.load(answer).get("models", [])
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return next((m for m in models if m.get("name") == name or m.get("model") == name), None)


def start(name: str, settings: Settings, rpc: tuple[str, ...]) -> ChildEngine:
    """Start a child server that loads `name` (its layers on `rpc`), and wait until it has."""
    for endpoint in rpc:  # the child would abort on a failed connect: say which server, here
        why = check_reachable(endpoint)
        if why is not None:
            raise EngineUnavailable(f"model '{name}' cannot load: its RPC server {endpoint} does not answer ({why})")
    port, key = _free_port(), secrets.token_urlsafe(32)
    env = {
        **os.environ,
        **settings.environment(),
        **{
            f"GPUSTACK_{k}": v
            for k, v in {
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "SERVER_URL": "",
                "API_KEY": key,
                "PRELOAD": name,
                "MAX_LOADED_MODELS": "1",
                "KEEP_ALIVE": "-1",
                "PULL_DEFAULTS": "false",
                "UI": "false",
                "ISOLATE_RPC": "false",
                "HEALTH_INTERVAL": "0",
                "REMOTE_REFRESH_INTERVAL": "0",
                "STOP_WITH_STDIN": "true",
            }.items()
        },
    }
    process = subprocess.Popen(
        # Its standard input is a pipe this process holds open: the child stops when it closes,
        # however this process ends.
        [*program(), "serve"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    engine = ChildEngine(upstreams=[Upstream(url)], api_key=key, name=name, process=process, rpc=rpc)
    threading.Thread(target=_read, args=(engine, process.stdout), name=f"child-{name}", daemon=True).start()
    deadline = time.monotonic() + LOAD_TIMEOUT
    while time.monotonic() < deadline:
        if engine.ended(0.25):
            raise EngineUnavailable(f"model '{name}' did not load: {_last_words(engine.output)}")
        entry = _loaded(url, key, name)
        if entry is not None:
            engine.n_ctx = entry.get("context_length")
            engine.context_from = entry.get("context_from")
            engine.kv_cache = entry.get("kv_cache")
            engine.placement = entry.get("placement") or []
            # Requests beyond the child's slots wait here, in this server's queue for the model.
            engine.max_concurrency = int(entry.get("concurrency") or 1)
            log.info("model %s runs in process %d on %s", name, process.pid, url)
            return engine
    engine.close()
    raise EngineUnavailable(f"model '{name}' did not load within {LOAD_TIMEOUT:g} s")
