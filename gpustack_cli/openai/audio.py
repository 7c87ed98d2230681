"""OpenAI's audio routes: `POST /v1/audio/speech` (Piper), `POST /v1/audio/transcriptions` and
`/v1/audio/translations` (faster-whisper), and our `GET /v1/audio/voices`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import re
from dataclasses import asdict
from typing import Annotated, Literal

from aiohttp import web
from multidict import MultiDictProxy
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engines import piper_voice
from engines.base import AudioError, Segment, Speaker, Transcriber, Transcription
from gpustack_cli.audio_formats import CONTENT_TYPES, encode, srt, vtt
from gpustack_cli.models.store import Category
from gpustack_cli.openai import answers
from gpustack_cli.runtime.threads import iterate_in_thread
from gpustack_cli.server.context import (
    context,
    engine_for,
    keep_alive_of,
    principal,
    read_form,
    read_json,
    resolve_model,
)
from gpustack_cli.server.errors import bad_request, from_validation
from gpustack_cli.server.operations import STREAM, Operation, operation
from gpustack_cli.server.routing import model_route
from gpustack_cli.server.sse import EventStream
from gpustack_cli.server.wire import json_response

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
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class SpeechBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: Annotated[str, Field(min_length=1, max_length=4096)]
    voice: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    stream_format: Literal["audio", "sse"] = "audio"
    keep_alive: str | int | float | None = None

    @field_validator("input")
    @classmethod
    def _printable(cls, text: str) -> str:
        # Control characters (NUL among them) break the phonemiser; tabs and line breaks are fine.
        if CONTROL_CHARACTERS.search(text):
            raise ValueError("it contains control characters; send plain text")
        return text


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


class TranscriptionForm(BaseModel):
    """The form fields of `/v1/audio/transcriptions` and `/translations` (besides the `file`)."""

    model_config = ConfigDict(extra="allow")
    model: Annotated[str, Field(min_length=1)]
    language: str | None = None
    prompt: str | None = None
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = "json"
    temperature: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    stream: bool = False
    timestamp_granularities: list[Literal["segment", "word"]] = Field(
        default_factory=list, alias="timestamp_granularities[]"
    )

    @classmethod
    def read(cls, form: MultiDictProxy) -> TranscriptionForm:
        fields: dict[str, object] = {k: v for k, v in form.items() if isinstance(v, str) and v != ""}
        fields["timestamp_granularities[]"] = [
            v for k in ("timestamp_granularities[]", "timestamp_granularities") for v in form.getall(k, [])
        ]
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise from_validation(exc) from exc


async def _read_audio(request: web.Request) -> tuple[TranscriptionForm, bytes]:
    form = await read_form(request, "Send the audio as multipart/form-data with a 'file' field.", "file")
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise bad_request("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    data = upload.file.read()
    if not data:
        raise bad_request("The uploaded file is empty.", param="file")
    return TranscriptionForm.read(form), data


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
    form, data = await _read_audio(request)
    if form.stream and form.response_format not in ("json", "text"):
        raise bad_request("Streaming returns text events: use response_format 'json' or 'text'.", param="stream")
    model = form.model
    manifest = resolve_model(request, model, Category.speech_to_text, "transcriptions")
    async with engine_for(request, manifest, Transcriber) as engine:
        if translate and not engine.multilingual:
            raise bad_request(
                f"Model '{model}' is English-only and cannot translate; use a multilingual model.", param="model"
            )
        words = "word" in form.timestamp_granularities
        max_seconds = context(request).settings.max_audio_seconds

        def run() -> Transcription:
            return engine.transcribe(
                io.BytesIO(data),
                language=None if translate else form.language,
                prompt=form.prompt,
                temperature=form.temperature,
                translate=translate,
                words=words,
                max_seconds=max_seconds,
            )

        try:
            transcription = await asyncio.to_thread(run)
            segments_iter = iterate_in_thread(lambda cancel: transcription.segments)
            if form.stream:
                return await _transcript_events(request, segments_iter)
            segments = [s async for s in segments_iter]
        except AudioError as exc:
            raise bad_request(str(exc), param=exc.param, code="invalid_audio") from exc
    text = "".join(s.text for s in segments).strip()
    spans = [(s.start, s.end, s.text) for s in segments]
    response_format = form.response_format
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
    sounds = ("audio/mpeg", "audio/wav", "audio/flac", "audio/aac", "audio/ogg", "audio/pcm", STREAM)
    spoken = Operation("POST", "/v1/audio/speech", "Text to speech", "openai", SpeechBody, also=sounds)
    operation(app, model_route(Category.text_to_speech, "speech")(speech), spoken)
    texts = ("text/plain", "text/vtt", STREAM)
    for path, summary, handler in [
        ("/v1/audio/transcriptions", "Speech to text", transcriptions),
        ("/v1/audio/translations", "Speech to English text", translations),
    ]:
        heard = Operation(
            "POST",
            path,
            summary,
            "openai",
            TranscriptionForm,
            files=("file",),
            response=answers.Transcription,
            also=texts,
        )
        operation(app, model_route(Category.speech_to_text, path.rsplit("/", 1)[1])(handler), heard)
    listed = Operation(
        "GET", "/v1/audio/voices", "The voices of each speech model", "openai", response=answers.VoiceList
    )
    operation(app, voices, listed)
