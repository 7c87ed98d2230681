"""Speech to text with Whisper models in CTranslate2 format (faster-whisper): CUDA in float16
when there is a GPU, else the CPU in int8. Audio files are decoded with PyAV (FFmpeg) before the
model sees them, so that anything that is not audio is the caller's error, whatever PyAV raised."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from faster_whisper import WhisperModel, decode_audio

from engines.base import AudioError, LoadSpec, Segment, Transcription, Word

log = logging.getLogger("gpustack.engines.whisper")


def _device() -> tuple[str, str]:
    try:
        import ctranslate2

        if ctranslate2.get_cuda_device_count() > 0:
            return "cuda", "float16"
    except (ImportError, RuntimeError):
        pass
    return "cpu", "int8"


class WhisperEngine:
    max_concurrency = 1

    def __init__(self, spec: LoadSpec):
        device, compute_type = _device()
        self.model = WhisperModel(str(spec.path), device=device, compute_type=compute_type)
        self.multilingual = bool(self.model.model.is_multilingual)
        log.info("loaded %s on %s (%s)", spec.name, device, compute_type)

    def transcribe(
        self,
        audio: Any,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        translate: bool = False,
        words: bool = False,
    ) -> Transcription:
        try:
            samples = decode_audio(audio, sampling_rate=self.model.feature_extractor.sampling_rate)
        except Exception as exc:  # PyAV and FFmpeg fail in many ways on what is not audio
            raise AudioError(f"the file could not be decoded as audio: {exc}") from exc
        if samples.size == 0:
            raise AudioError("the file holds no audio")
        if language is not None and language not in self.model.supported_languages:
            raise AudioError(f"unknown language {language!r}: use an ISO-639-1 code such as 'en'", param="language")
        segments, info = self.model.transcribe(
            samples,
            language=language,
            task="translate" if translate else "transcribe",
            initial_prompt=prompt or None,
            temperature=temperature if temperature is not None else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            word_timestamps=words,
            vad_filter=False,
        )
        return Transcription(language=info.language, duration=float(info.duration), segments=_segments(segments))

    def close(self) -> None:
        del self.model


def _segments(raw: Iterator[Any]) -> Iterator[Segment]:
    for s in raw:
        yield Segment(
            id=s.id - 1 if s.id else 0,
            start=float(s.start),
            end=float(s.end),
            text=s.text,
            tokens=list(s.tokens),
            temperature=float(s.temperature or 0.0),
            avg_logprob=float(s.avg_logprob),
            compression_ratio=float(s.compression_ratio),
            no_speech_prob=float(s.no_speech_prob),
            words=[Word(w.word, float(w.start), float(w.end)) for w in s.words or []],
        )


def load(spec: LoadSpec) -> WhisperEngine:
    return WhisperEngine(spec)
