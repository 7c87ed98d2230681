"""Speech to text with Whisper models in CTranslate2 format (faster-whisper): CUDA in float16
when there is a GPU, else the CPU in int8. Audio files are decoded with PyAV (FFmpeg) before the
model sees them, so that anything that is not audio is the caller's error, whatever PyAV raised.
They are decoded frame by frame into 16-bit samples, and refused as soon as they run past the
longest audio the caller allows (faster-whisper's own `decode_audio` keeps every decoded frame
and several copies of the whole, about 60 bytes a sample: hours of audio take gigabytes)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from faster_whisper import WhisperModel

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


def _too_long(max_seconds: float) -> AudioError:
    return AudioError(f"the audio is longer than the limit of {max_seconds:g} seconds")


def decode(audio: Any, rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 samples at `rate` of an audio file (a path or a file object)."""
    import av

    limit = None if max_seconds is None else int(max_seconds * rate)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(audio, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError("the file holds no audio")
            if max_seconds is not None and container.duration and container.duration / av.time_base > max_seconds:
                raise _too_long(max_seconds)  # as the file says, before any of it is decoded
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            frames = container.decode(container.streams.audio[0])
            for frame in [*frames, None]:
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    total += chunk.size
                    if limit is not None and total > limit:  # as it decodes, whatever the file said
                        raise _too_long(max_seconds or 0)
                    chunks.append(chunk)
    except AudioError:
        raise
    except Exception as exc:  # PyAV and FFmpeg fail in many ways on what is not audio
        raise AudioError(f"the file could not be decoded as audio: {exc}") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0


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
        max_seconds: float | None = None,
    ) -> Transcription:
        samples = decode(audio, self.model.feature_extractor.sampling_rate, max_seconds)
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
