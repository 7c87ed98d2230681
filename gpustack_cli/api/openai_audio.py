"""OpenAI's audio routes: `POST /v1/audio/speech` (Piper), `POST /v1/audio/transcriptions` and
`/v1/audio/translations` (faster-whisper), and our `GET /v1/audio/voices`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from dataclasses import asdict
from typing import Annotated, Literal

from aiohttp import web
from multidict import MultiDictProxy
from pydantic import BaseModel, ConfigDict, Field

from engines import piper_voice
from engines.base import AudioError, Segment, Speaker, Transcriber, Transcription
from gpustack_cli.api.context import context, engine_for, keep_alive_of, principal, read_json, resolve_model
from gpustack_cli.api.errors import APIError, bad_request
from gpustack_cli.api.responses import json_response
from gpustack_cli.api.sse import EventStream
from gpustack_cli.audio import CONTENT_TYPES, encode, srt, vtt
from gpustack_cli.store import Category
from gpustack_cli.threads import iterate_in_thread

# OpenAI's voice names: stock clients send one of these, and get the model's default voice.
OPENAI_VOICES = {
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "onyx",
    "nova",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
}
LANGUAGES = {
    "en": "english",
    "de": "german",
    "fr": "french",
    "es": "spanish",
    "it": "italian",
    "pt": "portuguese",
    "nl": "dutch",
    "ru": "russian",
    "zh": "chinese",
    "ja": "japanese",
    "ko": "korean",
    "ar": "arabic",
    "hi": "hindi",
    "pl": "polish",
    "tr": "turkish",
    "uk": "ukrainian",
    "sv": "swedish",
    "cs": "czech",
}
TRANSCRIPT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


class SpeechBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: Annotated[str, Field(min_length=1, max_length=4096)]
    voice: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    stream_format: Literal["audio", "sse"] = "audio"
    keep_alive: str | int | float | None = None


def _voice(engine: Speaker, asked: str | None, model: str) -> str | None:
    if asked is None or asked in OPENAI_VOICES:
        return None
    if asked in engine.voices:
        return asked
    raise bad_request(
        f"Unknown voice '{asked}' for model '{model}': use one of {', '.join(engine.voices)}.", param="voice"
    )


async def speech(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, SpeechBody)
    manifest = resolve_model(request, body.model, Category.text_to_speech, "speech")
    async with engine_for(request, manifest, Speaker, keep_alive_of(request, body.keep_alive)) as engine:
        voice = _voice(engine, body.voice, manifest.name)

        chunks = iterate_in_thread(
            lambda _cancel: encode(
                engine.speak(body.input, voice, body.speed), engine.sample_rate, body.response_format
            )
        )
        if body.stream_format == "sse":
            return await _speech_events(request, chunks)
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPES[body.response_format]})
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if not response.prepared:  # the first sentence is ready: now the status is known
                    await response.prepare(request)
                await response.write(chunk)
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
        return response


async def _speech_events(request: web.Request, chunks) -> web.StreamResponse:
    stream = EventStream(request)
    await stream.open()
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                await stream.send({"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()})
        await stream.send({"type": "speech.audio.done"})
    except Exception as exc:
        await stream.fail(exc)
    return await stream.close()


def _form_bool(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes")


async def _read_form(request: web.Request) -> tuple[MultiDictProxy, bytes]:
    if not request.content_type.startswith("multipart/form-data"):
        raise bad_request("Send the audio as multipart/form-data with a 'file' field.", param="file")
    form = await request.post()
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise bad_request("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    data = upload.file.read()
    if not data:
        raise bad_request("The uploaded file is empty.", param="file")
    return form, data


def _verbose(task: str, language: str, duration: float, segments: list[Segment], words: bool) -> dict:
    body = {
        "task": task,
        "language": LANGUAGES.get(language, language),
        "duration": duration,
        "text": "".join(s.text for s in segments).strip(),
        "segments": [
            {
                "id": s.id,
                "seek": 0,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": s.tokens,
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for s in segments
        ],
    }
    if words:
        body["words"] = [asdict(w) for s in segments for w in s.words]
    return body


async def _transcribe(request: web.Request, translate: bool) -> web.StreamResponse:
    form, data = await _read_form(request)
    model = form.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    response_format = str(form.get("response_format") or "json")
    if response_format not in TRANSCRIPT_FORMATS:
        raise bad_request(
            f"Invalid 'response_format': use one of {', '.join(TRANSCRIPT_FORMATS)}.", param="response_format"
        )
    granularities = set(form.getall("timestamp_granularities[]", [])) | set(form.getall("timestamp_granularities", []))
    if granularities - {"segment", "word"}:
        raise bad_request(
            "Invalid 'timestamp_granularities[]': use 'segment' and/or 'word'.", param="timestamp_granularities[]"
        )
    stream = _form_bool(form.get("stream"))
    if stream and response_format not in ("json", "text"):
        raise bad_request("Streaming returns text events: use response_format 'json' or 'text'.", param="stream")
    try:
        temperature = float(form["temperature"]) if form.get("temperature") else None
    except ValueError:
        raise bad_request("Invalid 'temperature': not a number.", param="temperature") from None
    manifest = resolve_model(request, model, Category.speech_to_text, "transcriptions")
    async with engine_for(request, manifest, Transcriber) as engine:
        if translate and not engine.multilingual:
            raise bad_request(
                f"Model '{model}' is English-only and cannot translate; use a multilingual model.", param="model"
            )
        words = "word" in granularities

        def run() -> Transcription:
            return engine.transcribe(
                io.BytesIO(data),
                language=None if translate else (str(form.get("language")) if form.get("language") else None),
                prompt=str(form.get("prompt") or "") or None,
                temperature=temperature,
                translate=translate,
                words=words,
            )

        try:
            transcription = await asyncio.to_thread(run)
            segments_iter = iterate_in_thread(lambda cancel: transcription.segments)
            if stream:
                return await _transcript_events(request, segments_iter)
            segments = [s async for s in segments_iter]
        except AudioError as exc:
            raise bad_request(str(exc), param="file", code="invalid_audio") from exc
    text = "".join(s.text for s in segments).strip()
    spans = [(s.start, s.end, s.text) for s in segments]
    if response_format == "json":
        return json_response({"text": text})
    if response_format == "verbose_json":
        task = "translate" if translate else "transcribe"
        return json_response(_verbose(task, transcription.language, transcription.duration, segments, words))
    rendered = {"text": text + "\n", "srt": srt(spans), "vtt": vtt(spans)}[response_format]
    return web.Response(text=rendered, content_type="text/vtt" if response_format == "vtt" else "text/plain")


async def _transcript_events(request: web.Request, segments) -> web.StreamResponse:
    stream = EventStream(request)
    await stream.open()
    text = ""
    try:
        async with contextlib.aclosing(segments):
            async for segment in segments:
                delta = segment.text if text else segment.text.lstrip()
                text += delta
                await stream.send({"type": "transcript.text.delta", "delta": delta})
        await stream.send({"type": "transcript.text.done", "text": text})
    except AudioError as exc:
        await stream.send(APIError(400, str(exc), param="file", code="invalid_audio").openai())
    except Exception as exc:
        await stream.fail(exc)
    return await stream.close()


async def transcriptions(request: web.Request) -> web.StreamResponse:
    return await _transcribe(request, translate=False)


async def translations(request: web.Request) -> web.StreamResponse:
    return await _transcribe(request, translate=True)


async def voices(request: web.Request) -> web.Response:
    ctx, who = context(request), principal(request)
    data = []
    for manifest in ctx.store.list():
        model_file = manifest.options.get("model_file")
        # Remote voices live on their upstream, which lists them itself.
        if Category.text_to_speech not in manifest.categories or not model_file or not who.may_use(manifest.name):
            continue
        try:
            names = piper_voice.voice_names(ctx.store.model_dir(manifest.name) / model_file)
        except (OSError, ValueError):
            continue  # a voice without its config cannot be loaded either
        data.append({"model": manifest.name, "voices": names, "default": names[0]})
    return json_response({"object": "list", "data": data})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/translations", translations)
    app.router.add_get("/v1/audio/voices", voices)
