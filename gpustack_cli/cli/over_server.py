"""The terminal's connection to a running `gpustack serve`, over the server's own API: a chat is
the core's `ChatRequest` sent as a streamed chat completion (`openai.chat.chat_body`) and read back
as the core's events by the same converter that reads an upstream's stream."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from gpustack_cli.cli.connection import ClientError, ImageAsk
from gpustack_cli.config import Settings
from gpustack_cli.core.types import ChatRequest, Event
from gpustack_cli.openai.chat import chat_body, events_of_chunks


class ServerConnection:
    def __init__(self, settings: Settings):
        self.where = settings.url
        self._client = httpx.AsyncClient(base_url=settings.url, headers=settings.client_headers, timeout=None)

    async def chat(self, model: str, chat: ChatRequest) -> AsyncIterator[Event]:
        # Our server takes llama.cpp's top_k beside OpenAI's fields.
        body = {**chat_body(chat, model), "top_k": chat.sampling.top_k}
        async with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                _refused(response)
            async for event in events_of_chunks(_chunks(response)):
                yield event

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        answer = await self._post("/v1/embeddings", {"model": model, "input": texts})
        return [item["embedding"] for item in sorted(answer["data"], key=lambda item: item["index"])]

    async def rerank(self, model: str, query: str, documents: list[str]) -> list[tuple[int, float]]:
        body = {"model": model, "query": query, "documents": documents, "return_documents": False}
        return [(r["index"], r["relevance_score"]) for r in (await self._post("/v1/rerank", body))["results"]]

    async def speak(self, model: str, text: str, fmt: str, voice: str | None) -> bytes:
        body = {"model": model, "input": text, "voice": voice, "response_format": fmt}
        return _checked(await self._client.post("/v1/audio/speech", json=body)).content

    async def transcribe(self, model: str, path: Path, fmt: str) -> str:
        files = {"file": (path.name, path.read_bytes())}
        data = {"model": model, "response_format": fmt}
        return _checked(await self._client.post("/v1/audio/transcriptions", files=files, data=data)).text

    async def image(self, model: str, ask: ImageAsk, on_step: Callable[[int, int], None]) -> bytes:
        extras = {"num_inference_steps": ask.steps, "seed": ask.seed}
        fields = {
            "model": model,
            "prompt": ask.prompt,
            "size": ask.size,
            **{k: v for k, v in extras.items() if v is not None},
        }
        if ask.source is None:
            response = await self._client.post("/v1/images/generations", json=fields)
        else:
            files = {"image": (ask.source.name, ask.source.read_bytes())}
            if ask.mask is not None:
                files["mask"] = (ask.mask.name, ask.mask.read_bytes())
            data = {k: str(v) for k, v in fields.items()}
            response = await self._client.post("/v1/images/edits", data=data, files=files)
        return base64.b64decode(_checked(response).json()["data"][0]["b64_json"])

    async def ps(self) -> list[dict[str, Any]]:
        return _checked(await self._client.get("/api/ps", timeout=30)).json()["models"]

    async def stop(self, model: str) -> None:
        _checked(await self._client.post("/api/stop", json={"model": model}, timeout=30))

    async def close(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _checked(await self._client.post(path, json=body)).json()


async def _chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """A chat completion stream's chunks; an error event ends it with that error."""
    async for line in response.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise ClientError(chunk["error"].get("message", "the server ended the answer with an error"))
        yield chunk


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        _refused(response)
    return response


def _refused(response: httpx.Response) -> None:
    try:
        error = response.json()["error"]
        message = error if isinstance(error, str) else error["message"]  # Ollama's shape, or OpenAI's
    except (ValueError, KeyError, TypeError):
        message = response.text
    raise ClientError(f"{message} (HTTP {response.status_code})")
