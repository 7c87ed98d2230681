"""A remote model's pool of upstream servers: any OpenAI-compatible one (vLLM, SGLang, TGI, TEI,
llama-server, another `gpustack serve`). Nothing is loaded: the scheduler "loads" a remote model
as this pool (engine `remote` in its manifest), which picks the upstream for each request, round
robin over its URLs, skipping one for a while after it fails to answer a request or a health check
(the server's active checks: `health.py` beside this)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from engines.base import LoadSpec

# How long an upstream that failed stays out of the rotation before it is tried again.
COOL_DOWN = 15.0
# What a health check asks for: every OpenAI-compatible server answers it (any answer below 500
# means the server is up; a 401 or 404 still proves it listens).
HEALTH_PATH = "/v1/models"


@dataclass
class Upstream:
    url: str
    down_until: float = 0.0

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
        """Every upstream, the next in the rotation first and those cooling down last."""
        with self._lock:
            start = self._next
            self._next = (self._next + 1) % len(self.upstreams)
        rotated = self.upstreams[start:] + self.upstreams[:start]
        return [u for u in rotated if u.up] + [u for u in rotated if not u.up]

    def failed(self, upstream: Upstream) -> None:
        upstream.down_until = time.monotonic() + COOL_DOWN

    def recovered(self, upstream: Upstream) -> None:
        upstream.down_until = 0.0

    def close(self) -> None:
        """Nothing to free: the model lives on its servers."""


def load(spec: LoadSpec) -> RemoteEngine:
    urls = spec.options.get("urls") or []
    if not urls:
        raise ValueError(f"remote model '{spec.name}' has no upstream URLs")
    return RemoteEngine(
        upstreams=[Upstream(url.rstrip("/")) for url in urls],
        api_key=spec.options.get("api_key"),
        upstream_model=spec.options.get("upstream_model"),
        health_path=spec.options.get("health_path") or HEALTH_PATH,
        timeout=spec.options.get("timeout"),
    )
