"""FakeEngine: a stand-in engine for unit tests of the scheduler and the HTTP layer only.

It runs no model. Tests of real inference use the real engines on real models.
"""

from __future__ import annotations

import threading
import time


class FakeEngine:
    def __init__(self, name: str, max_concurrency: int = 2, load_seconds: float = 0.0):
        time.sleep(load_seconds)
        self.name = name
        self.max_concurrency = max_concurrency
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


class FakeLoader:
    """Loads FakeEngines and remembers what it loaded; names starting with 'broken' fail."""

    def __init__(self, max_concurrency: int = 2, load_seconds: float = 0.0):
        self.max_concurrency = max_concurrency
        self.load_seconds = load_seconds
        self.loaded: list[FakeEngine] = []

    def __call__(self, name: str) -> FakeEngine:
        if name.startswith("broken"):
            raise RuntimeError(f"cannot load {name}")
        engine = FakeEngine(name, self.max_concurrency, self.load_seconds)
        self.loaded.append(engine)
        return engine
