"""A remote model's pool of upstream servers: any OpenAI-compatible one (vLLM, SGLang, TGI, TEI,
llama-server, another `gpustack serve`). Nothing is loaded: the scheduler "loads" a remote model
as this pool (engine `remote` in its manifest), which picks the upstream for each request: the one
with the fewest requests in flight (this server's, and those of other clients its `/api/ps` last
reported), round robin among equals, skipping one for a
while after it fails to answer a request or a health check (the server's active checks: `health.py`
beside this). So a long answer on one upstream sends the next requests to the others."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from engines.base import EngineUnavailable, LoadSpec

# How long an upstream that failed stays out of the rotation before it is tried again.
COOL_DOWN = 15.0
# What a health check asks for: every OpenAI-compatible server answers it (any answer below 500
# means the server is up; a 401 or 404 still proves it listens).
HEALTH_PATH = "/v1/models"


@dataclass
class Upstream:
    url: str
    down_until: float = 0.0
    # This server's requests on it now (sent, and their answers not yet read to the end).
    in_flight: int = 0
    # Requests of other clients running or waiting there for the model, as the upstream's
    # `/api/ps` said at the last health check (a gpustack or Ollama upstream; 0 for others).
    others: int = 0

    @property
    def up(self) -> bool:
        return self.down_until <= time.monotonic()


@dataclass
class RemoteEngine:
    upstreams: list[Upstream]
    api_key: str | None = None
    # The model's name on the upstream, when it differs from ours.
    upstream_model: str | None = None
    health_path: str = HEALTH_PATH
    # Seconds the upstream may stay silent before a 504; None: the server's setting.
    timeout: float | None = None
    max_concurrency: int = 256
    # Requests are admitted up to max_concurrency: the upstream does the batching.
    admits_all: bool = True
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def order(self) -> list[Upstream]:
        """Every upstream, to try in turn: those up before those cooling down, the least loaded
        first (this server's requests in flight, and the others' it last reported), and the
        rotation's order among equals."""
        with self._lock:
            start = self._next
            self._next = (self._next + 1) % len(self.upstreams)
        rotated = self.upstreams[start:] + self.upstreams[:start]
        return sorted(rotated, key=lambda u: (not u.up, u.in_flight + u.others))  # a stable sort keeps the rotation

    @contextmanager
    def serving(self, upstream: Upstream) -> Iterator[None]:
        """A request on `upstream`, counted while it runs."""
        with self._lock:
            upstream.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                upstream.in_flight -= 1

    def failed(self, upstream: Upstream) -> None:
        upstream.down_until = time.monotonic() + COOL_DOWN

    def recovered(self, upstream: Upstream) -> None:
        upstream.down_until = 0.0

    def stopped(self) -> str | None:
        """Why this engine can serve no more after a failed request, or None: an upstream's
        failure is the upstream's (a child server that ended says so: `upstream.child`). Blocking."""
        return None

    def close(self) -> None:
        """Nothing to free: the model lives on its servers."""


def load(spec: LoadSpec) -> RemoteEngine:
    urls = spec.options.get("urls") or []
    if spec.options.get("unavailable"):
        group = spec.options.get("from_server", "")
        raise EngineUnavailable(f"model '{spec.name}' is no longer listed by the servers of remote group '{group}'")
    if not urls:
        raise ValueError(f"remote model '{spec.name}' has no upstream URLs")
    return RemoteEngine(
        upstreams=[Upstream(url.rstrip("/")) for url in urls],
        api_key=spec.options.get("api_key"),
        upstream_model=spec.options.get("upstream_model"),
        health_path=spec.options.get("health_path") or HEALTH_PATH,
        timeout=spec.options.get("timeout"),
    )
