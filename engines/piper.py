"""Text to speech with Piper voices (piper-tts, ONNX on the CPU, or CUDA when onnxruntime has it).

Piper phonemises the text with its bundled espeak-ng and synthesises one sentence at a time, so
audio can leave the server while later sentences are still being made.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from piper import PiperVoice, SynthesisConfig

from engines import piper_voice
from engines.base import LoadSpec

log = logging.getLogger("gpustack.engines.piper")


class PiperEngine:
    max_concurrency = 1

    def __init__(self, spec: LoadSpec):
        model_file = spec.path / spec.options["model_file"]
        self.voice = PiperVoice.load(model_file)
        self.sample_rate = int(self.voice.config.sample_rate)
        self.speakers = piper_voice.speakers(model_file)
        self.voices = piper_voice.voice_names(model_file)
        log.info("loaded voice %s (%d Hz, %d speaker(s))", model_file.name, self.sample_rate, len(self.voices))

    def speak(self, text: str, voice: str | None, speed: float) -> Iterator[bytes]:
        config = SynthesisConfig(speaker_id=self.speakers.get(voice or ""), length_scale=1.0 / speed)
        for chunk in self.voice.synthesize(text, syn_config=config):
            yield chunk.audio_int16_bytes

    def close(self) -> None:
        del self.voice


def load(spec: LoadSpec) -> PiperEngine:
    return PiperEngine(spec)
