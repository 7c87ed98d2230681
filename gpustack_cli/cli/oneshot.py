"""`gpustack run` for embedding, rerank, speech, transcription and image models: one call, against the
running server when one answers, else with the model loaded in this process."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from engines.base import AudioError, Embedder, ImageGenerator, ImageRequest, Reranker, Speaker, Transcriber
from gpustack_cli.audio_formats import encode, srt, vtt
from gpustack_cli.cli.server_client import checked, server_answers
from gpustack_cli.config import Settings
from gpustack_cli.models.loading import load_model
from gpustack_cli.models.store import ModelStore


def _post(settings: Settings, path: str, body: dict) -> dict:
    return checked(httpx.post(settings.url + path, json=body, headers=settings.client_headers, timeout=300)).json()


def embed_one(settings: Settings, model: str, text: str) -> list[float]:
    if server_answers(settings):
        return _post(settings, "/v1/embeddings", {"model": model, "input": text})["data"][0]["embedding"]
    engine = load_model(ModelStore(settings.home), model, settings)
    if not isinstance(engine, Embedder):
        raise RuntimeError(f"model '{model}' cannot embed text")
    return engine.embed([text])[0]


def rerank(settings: Settings, model: str, query: str, documents: list[str]) -> list[tuple[int, float]]:
    """(document index, score) pairs, best first."""
    if server_answers(settings):
        body = {"model": model, "query": query, "documents": documents, "return_documents": False}
        return [(r["index"], r["relevance_score"]) for r in _post(settings, "/v1/rerank", body)["results"]]
    engine = load_model(ModelStore(settings.home), model, settings)
    if not isinstance(engine, Reranker):
        raise RuntimeError(f"model '{model}' cannot rerank")
    scores = engine.rerank(query, documents).scores
    return sorted(enumerate(scores), key=lambda pair: pair[1], reverse=True)


def speak(settings: Settings, model: str, text: str, fmt: str, voice: str | None) -> bytes:
    if server_answers(settings):
        body = {"model": model, "input": text, "voice": voice, "response_format": fmt}
        response = httpx.post(
            settings.url + "/v1/audio/speech", json=body, headers=settings.client_headers, timeout=600
        )
        return checked(response).content
    engine = load_model(ModelStore(settings.home), model, settings)
    if not isinstance(engine, Speaker):
        raise RuntimeError(f"model '{model}' cannot speak")
    return b"".join(encode(engine.speak(text, voice, 1.0), engine.sample_rate, fmt))


def transcribe(settings: Settings, model: str, path: Path, fmt: str) -> str:
    if server_answers(settings):
        with path.open("rb") as handle:
            response = httpx.post(
                settings.url + "/v1/audio/transcriptions",
                headers=settings.client_headers,
                timeout=600,
                files={"file": (path.name, handle)},
                data={"model": model, "response_format": fmt},
            )
        return checked(response).text
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


def image(
    settings: Settings,
    model: str,
    prompt: str,
    size: str,
    steps: int | None,
    seed: int | None,
    source: Path | None,
    mask: Path | None,
    on_step: Callable[[int, int], None],
) -> bytes:
    """A PNG: made from `prompt`, or an edit of `source` (inpainting where `mask` is transparent)."""
    extras = {"num_inference_steps": steps, "seed": seed}
    fields = {"model": model, "prompt": prompt, "size": size, **{k: v for k, v in extras.items() if v is not None}}
    if server_answers(settings):
        if source is None:
            response = httpx.post(
                settings.url + "/v1/images/generations", json=fields, headers=settings.client_headers, timeout=None
            )
        else:
            files = {"image": (source.name, source.read_bytes())}
            if mask is not None:
                files["mask"] = (mask.name, mask.read_bytes())
            data = {k: str(v) for k, v in fields.items()}
            response = httpx.post(
                settings.url + "/v1/images/edits", data=data, files=files, headers=settings.client_headers, timeout=None
            )
        return base64.b64decode(checked(response).json()["data"][0]["b64_json"])
    from PIL import Image

    engine = load_model(ModelStore(settings.home), model, settings)
    if not isinstance(engine, ImageGenerator):
        raise RuntimeError(f"model '{model}' cannot make images")
    picture = Image.open(source).convert("RGB") if source else None
    if size == "auto":
        width, height = picture.size if picture else (engine.default_size, engine.default_size)
    else:
        width, height = (int(v) for v in size.lower().split("x"))
    alpha = Image.open(mask).getchannel("A") if mask else None
    white_to_edit = Image.eval(alpha, lambda a: 255 - a) if alpha else None
    request = ImageRequest(prompt=prompt, width=width, height=height, steps=steps, seed=seed)
    result = engine.generate(request, threading.Event(), on_step, picture, white_to_edit)[0]
    buffer = io.BytesIO()
    result.save(buffer, format="PNG")
    return buffer.getvalue()
