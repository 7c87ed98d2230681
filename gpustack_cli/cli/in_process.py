"""The terminal's connection when no server answers: models loaded in this process by the same
scheduler the server uses (kept loaded for the command's life), each request checked against the
same limits (`Settings.limits`) and a chat answered through the same backend (`LocalChat`), so an
answer or a refusal here is the one the server would give."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from engines.base import (
    AudioError,
    Embedder,
    EngineUnavailable,
    ImageGenerator,
    ImageRequest,
    Reranker,
    Speaker,
    TextGenerator,
    Transcriber,
)
from gpustack_cli.audio_formats import encode, srt, vtt
from gpustack_cli.cli.connection import ClientError, ImageAsk
from gpustack_cli.config import Settings
from gpustack_cli.core.backend import LocalChat
from gpustack_cli.core.limits import check_chat, check_text_size
from gpustack_cli.core.types import ChatRequest, Event, GenerationError
from gpustack_cli.models.loading import load_model
from gpustack_cli.models.store import ModelStore
from gpustack_cli.runtime.scheduler import Scheduler

E = TypeVar("E")

# The most characters one speech request takes, as `POST /v1/audio/speech` has it.
MAX_SPEECH_CHARS = 4096


class InProcess:
    def __init__(self, settings: Settings):
        self.where = "this process"
        self.settings = settings
        self.store = ModelStore(settings.home)
        # A model with RPC servers is loaded here too, as llama.cpp's own CLI does: a dead RPC server
        # ends this command, not a server.
        loading = settings.model_copy(update={"isolate_rpc": False})
        self.scheduler = Scheduler(
            lambda name: load_model(self.store, name, loading),
            max_loaded_models=settings.max_loaded_models,
            parallel=settings.parallel,
            keep_alive=-1,  # loaded until the command ends
        )

    async def chat(self, model: str, chat: ChatRequest) -> AsyncIterator[Event]:
        with _refusals():
            check_chat(chat, self.settings.limits)
            async with self._engine(model, TextGenerator, "chat") as engine:
                start = await LocalChat(engine).start(chat, uuid.uuid4().hex)
                async for event in start.events:
                    yield event

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        with _refusals():
            check_text_size(sum(map(len, texts)), self.settings.limits, "input")
        async with self._engine(model, Embedder, "embed text") as engine:
            return await asyncio.to_thread(engine.embed, texts)

    async def rerank(self, model: str, query: str, documents: list[str]) -> list[tuple[int, float]]:
        with _refusals():
            check_text_size(
                sum(map(len, documents)) + len(query) * (len(documents) + 1), self.settings.limits, "documents"
            )
        async with self._engine(model, Reranker, "rerank") as engine:
            scores = (await asyncio.to_thread(engine.rerank, query, documents)).scores
        return sorted(enumerate(scores), key=lambda pair: pair[1], reverse=True)

    async def speak(self, model: str, text: str, fmt: str, voice: str | None) -> bytes:
        if len(text) > MAX_SPEECH_CHARS:
            raise ClientError(f"The text holds {len(text)} characters; the limit is {MAX_SPEECH_CHARS}.")
        async with self._engine(model, Speaker, "speak") as engine:

            def spoken() -> bytes:
                return b"".join(encode(engine.speak(text, voice, 1.0), engine.sample_rate, fmt))

            return await asyncio.to_thread(spoken)

    async def transcribe(self, model: str, path: Path, fmt: str) -> str:
        async with self._engine(model, Transcriber, "transcribe") as engine:

            def spans() -> list[tuple[float, float, str]]:
                transcription = engine.transcribe(str(path), max_seconds=self.settings.max_audio_seconds)
                return [(s.start, s.end, s.text) for s in transcription.segments]

            try:
                found = await asyncio.to_thread(spans)
            except AudioError as exc:
                raise ClientError(str(exc)) from exc
        text = "".join(span[2] for span in found).strip()
        return {"text": text, "json": json.dumps({"text": text}), "srt": srt(found), "vtt": vtt(found)}[fmt]

    async def image(self, model: str, ask: ImageAsk, on_step: Callable[[int, int], None]) -> bytes:
        from PIL import Image

        async with self._engine(model, ImageGenerator, "make images") as engine:
            picture = Image.open(ask.source).convert("RGB") if ask.source else None
            if ask.size == "auto":
                width, height = picture.size if picture else (engine.default_size, engine.default_size)
            else:
                width, height = (int(v) for v in ask.size.lower().split("x"))
            alpha = Image.open(ask.mask).getchannel("A") if ask.mask else None
            white_to_edit = Image.eval(alpha, lambda a: 255 - a) if alpha else None
            request = ImageRequest(prompt=ask.prompt, width=width, height=height, steps=ask.steps, seed=ask.seed)
            cancel = threading.Event()
            try:
                made = await asyncio.to_thread(engine.generate, request, cancel, on_step, picture, white_to_edit)
            finally:  # Ctrl-C: the steps stop at the next one
                cancel.set()
        buffer = io.BytesIO()
        made[0].save(buffer, format="PNG")
        return buffer.getvalue()

    async def ps(self) -> list[dict[str, Any]]:
        return [asdict(m) for m in self.scheduler.loaded()]

    async def stop(self, model: str) -> None:
        if not await self.scheduler.unload(model):
            raise ClientError(f"Model '{model}' is not loaded.")

    async def close(self) -> None:
        await self.scheduler.close()

    @asynccontextmanager
    async def _engine(self, model: str, kind: type[E], what: str) -> AsyncIterator[E]:
        """A request slot of `model`, loaded if need be, when it can do `what`."""
        if self.store.get(model).engine == "remote":
            raise ClientError(f"'{model}' is answered by its upstreams: start `gpustack serve` to use it.")
        try:
            async with self.scheduler.use(model) as engine:
                if not isinstance(engine, kind):
                    raise ClientError(f"Model '{model}' cannot {what}.")
                yield engine
        except EngineUnavailable as exc:
            raise ClientError(str(exc)) from exc


@contextmanager
def _refusals() -> Iterator[None]:
    """A GenerationError as the ClientError the terminal prints."""
    try:
        yield
    except GenerationError as exc:
        raise ClientError(str(exc)) from exc
