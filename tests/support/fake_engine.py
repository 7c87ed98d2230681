"""Stand-ins for engines, for unit tests only: FakeEngine for the scheduler and the HTTP layer,
FakeGenerator (and its async twin) for the text core, "generating" the pieces a test gives it.

They run no model. Tests of real inference use the real engines on real models.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence

from engines.base import Sampling, Token


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


class FakeGenerator:
    """Unit tests only: "generates" the byte pieces it was given, one token each."""

    n_ctx = 512
    architecture = "fake"
    chat_template = None
    bos_text = eos_text = ""
    stop_strings: tuple[str, ...] = ()

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return list(range(len(text)))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return ""

    def piece(self, token: int) -> bytes:
        return self.pieces[token]

    def fim_tokens(self) -> None:
        return None

    def check_schema(self, schema: dict) -> None:
        return None

    def generate(self, prompt: Sequence[int], sampling: Sampling, cancel: threading.Event) -> Iterator[Token]:
        for i, piece in enumerate(self.pieces[: sampling.max_tokens]):
            yield Token(id=i, piece=piece)


class AsyncFakeGenerator(FakeGenerator):
    """Unit tests only: the same, delivered to the event loop."""

    def __init__(self, pieces: list[bytes]):
        super().__init__(pieces)
        self.request_ids: list[str] = []

    async def agenerate(self, prompt: Sequence[int], sampling: Sampling, request_id: str) -> AsyncIterator[Token]:
        self.request_ids.append(request_id)
        for token in self.generate(prompt, sampling, threading.Event()):
            await asyncio.sleep(0)
            yield token

    def abort(self, request_id: str) -> bool:
        return False
