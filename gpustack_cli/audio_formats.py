"""Audio formats: encoding speech as it is made (PyAV, which faster-whisper already brings, with
its own FFmpeg), and transcripts as SRT and WebVTT subtitles."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


@dataclass(frozen=True)
class _Codec:
    container: str
    codec: str
    # Opus only takes some rates: encode at 48 kHz (PyAV resamples).
    rate: int | None = None


_CODECS = {
    "mp3": _Codec("mp3", "libmp3lame"),
    "opus": _Codec("ogg", "libopus", 48000),
    "aac": _Codec("adts", "aac"),
    "flac": _Codec("flac", "flac"),
}


class _Sink(io.RawIOBase):
    """A write-only, unseekable file: muxers write streaming-friendly headers into it."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        data, self.buffer = bytes(self.buffer), bytearray()
        return data


def wav_header(rate: int, data_bytes: int) -> bytes:
    """A 16-bit mono PCM WAV header for `data_bytes` of samples."""
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def encode(pcm_chunks: Iterable[bytes], rate: int, fmt: str) -> Iterator[bytes]:
    """Encode 16-bit mono PCM chunks into `fmt`, yielding bytes as soon as each chunk is encoded.

    `pcm` passes the samples through; `wav` needs its length in the header, so it comes whole at the
    end; the others stream.
    """
    if fmt == "pcm":
        yield from pcm_chunks
        return
    if fmt == "wav":
        data = b"".join(pcm_chunks)
        yield wav_header(rate, len(data)) + data
        return
    import av
    import numpy as np

    spec = _CODECS[fmt]
    sink = _Sink()
    container = av.open(sink, mode="w", format=spec.container)
    stream = container.add_stream(spec.codec, rate=spec.rate or rate)
    stream.layout = "mono"
    try:
        for pcm in pcm_chunks:
            samples = np.frombuffer(pcm, dtype=np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
            if chunk := sink.take():
                yield chunk
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()
    if chunk := sink.take():
        yield chunk


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(segments: Iterable[tuple[float, float, str]]) -> str:
    blocks = [
        f"{i}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text.strip()}\n"
        for i, (start, end, text) in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def vtt(segments: Iterable[tuple[float, float, str]]) -> str:
    blocks = [f"{_timestamp(s, '.')} --> {_timestamp(e, '.')}\n{text.strip()}\n" for s, e, text in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)
