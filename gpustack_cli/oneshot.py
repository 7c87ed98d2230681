"""`gpustack run` for embedding, rerank, speech and transcription models: one call, against the
running server when one answers, else with the model loaded in this process."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from engines.base import AudioError, Embedder, Reranker, Speaker, Transcriber
from gpustack_cli.audio import encode, srt, vtt
from gpustack_cli.config import Settings
from gpustack_cli.loading import load_model
from gpustack_cli.repl import RemoteChat
from gpustack_cli.store import ModelStore


def _post(settings: Settings, path: str, body: dict) -> dict:
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    response = httpx.post(settings.url + path, json=body, headers=headers, timeout=300)
    if response.status_code >= 400:
        raise RuntimeError(response.json().get("error", {}).get("message", response.text))
    return response.json()


def embed_one(settings: Settings, model: str, text: str) -> list[float]:
    if RemoteChat.available(settings):
        return _post(settings, "/v1/embeddings", {"model": model, "input": text})["data"][0]["embedding"]
    engine = load_model(ModelStore(settings.home), model, settings)
    if not isinstance(engine, Embedder):
        raise RuntimeError(f"model '{model}' cannot embed text")
    return engine.embed([text])[0]


def rerank(settings: Settings, model: str, query: str, documents: list[str]) -> list[tuple[int, float]]:
    """(document index, score) pairs, best first."""
    if RemoteChat.available(settings):
        body = {"model": model, "query": query, "documents": documents, "return_documents": False}
        return [(r["index"], r["relevance_score"]) for r in _post(settings, "/v1/rerank", body)["results"]]
    engine = load_model(ModelStore(settings.home), model, settings)
    if not isinstance(engine, Reranker):
        raise RuntimeError(f"model '{model}' cannot rerank")
    scores = engine.rerank(query, documents).scores
    return sorted(enumerate(scores), key=lambda pair: pair[1], reverse=True)


def speak(settings: Settings, model: str, text: str, fmt: str, voice: str | None) -> bytes:
    if RemoteChat.available(settings):
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        body = {"model": model, "input": text, "voice": voice, "response_format": fmt}
        response = httpx.post(settings.url + "/v1/audio/speech", json=body, headers=headers, timeout=600)
        if response.status_code >= 400:
            raise RuntimeError(response.json().get("error", {}).get("message", response.text))
        return response.content
    engine = load_model(ModelStore(settings.home), model, settings)
    if not isinstance(engine, Speaker):
        raise RuntimeError(f"model '{model}' cannot speak")
    return b"".join(encode(engine.speak(text, voice, 1.0), engine.sample_rate, fmt))


def transcribe(settings: Settings, model: str, path: Path, fmt: str) -> str:
    if RemoteChat.available(settings):
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        with path.open("rb") as handle:
            response = httpx.post(
                settings.url + "/v1/audio/transcriptions",
                headers=headers,
                timeout=600,
                files={"file": (path.name, handle)},
                data={"model": model, "response_format": fmt},
            )
        if response.status_code >= 400:
            raise RuntimeError(response.json().get("error", {}).get("message", response.text))
        return response.text
    engine = load_model(ModelStore(settings.home), model, settings)
    if not isinstance(engine, Transcriber):
        raise RuntimeError(f"model '{model}' cannot transcribe")
    try:
        segments = list(engine.transcribe(str(path)).segments)
    except AudioError as exc:
        raise RuntimeError(str(exc)) from exc
    spans = [(s.start, s.end, s.text) for s in segments]
    text = "".join(s.text for s in segments).strip()
    return {"text": text, "json": json.dumps({"text": text}), "srt": srt(spans), "vtt": vtt(spans)}[fmt]
