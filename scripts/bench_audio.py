"""Speech and transcription speed: our HTTP API against Piper and faster-whisper called directly.

Transcription: real-time factor (seconds of work per second of audio, lower is better). Speech:
real-time factor of synthesis, and time to the first audio byte for a five-sentence input,
against the time Piper takes to synthesise the first sentence alone (the target: within 50 ms).

    python scripts/bench_audio.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import HEADERS, start_server  # noqa: E402

from gpustack_cli.audio_formats import wav_header  # noqa: E402
from gpustack_cli.config import Settings  # noqa: E402
from gpustack_cli.models.pull import Puller  # noqa: E402
from gpustack_cli.models.store import ModelStore  # noqa: E402

STORY = [
    "The sun rose slowly over the quiet harbour.",
    "Fishermen pulled their boats onto the wet sand.",
    "A small dog barked at the gulls above the water.",
    "Children ran along the pier with bright red kites.",
    "By noon the whole town had gathered for the market.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voice", default="piper-joe")
    parser.add_argument("--whisper", default="whisper-tiny.en")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--home", default=os.environ.get("GPUSTACK_HOME", str(Path.home() / ".gpustack")))
    args = parser.parse_args()
    settings = Settings.load(home=args.home)
    for name in (args.voice, args.whisper):
        Puller(settings).pull(name)
    store = ModelStore(settings.home)

    from faster_whisper import WhisperModel
    from piper import PiperVoice

    voice_file = store.model_dir(args.voice) / store.get(args.voice).options["model_file"]
    piper = PiperVoice.load(voice_file)
    whisper = WhisperModel(str(store.model_dir(args.whisper)), device="cpu", compute_type="int8")
    rate = piper.config.sample_rate
    story = " ".join(STORY)
    pcm = b"".join(c.audio_int16_bytes for c in piper.synthesize(story))
    wav = wav_header(rate, len(pcm)) + pcm
    audio_seconds = len(pcm) / 2 / rate

    def direct_transcribe() -> float:
        started = time.perf_counter()
        segments, _info = whisper.transcribe(io.BytesIO(wav))
        "".join(s.text for s in segments)
        return (time.perf_counter() - started) / audio_seconds

    def direct_speak() -> tuple[float, float]:
        started = time.perf_counter()
        first = None
        for _chunk in piper.synthesize(story):
            first = first or time.perf_counter()
        return (time.perf_counter() - started) / audio_seconds, first - started

    def first_sentence() -> float:
        started = time.perf_counter()
        for _chunk in piper.synthesize(STORY[0]):
            pass
        return time.perf_counter() - started

    server, url = start_server(settings.home, "--preload", args.voice, "--preload", args.whisper)
    http = httpx.Client(base_url=url, timeout=300, headers=HEADERS)

    def api_transcribe() -> float:
        started = time.perf_counter()
        response = http.post("/v1/audio/transcriptions", files={"file": ("s.wav", wav)}, data={"model": args.whisper})
        response.raise_for_status()
        return (time.perf_counter() - started) / audio_seconds

    def api_speak() -> tuple[float, float]:
        body = {"model": args.voice, "input": story, "response_format": "pcm"}
        started = time.perf_counter()
        first = None
        with http.stream("POST", "/v1/audio/speech", json=body) as response:
            for _chunk in response.iter_raw():
                first = first or time.perf_counter()
        return (time.perf_counter() - started) / audio_seconds, first - started

    try:
        api_transcribe(), api_speak(), direct_transcribe(), direct_speak()  # warm every path once
        runs: dict[str, list] = {"dt": [], "at": [], "ds": [], "as": [], "first": []}
        for _ in range(args.rounds):
            runs["dt"].append(direct_transcribe())
            runs["at"].append(api_transcribe())
            runs["ds"].append(direct_speak())
            runs["as"].append(api_speak())
            runs["first"].append(first_sentence())
    finally:
        server.terminate()
        server.wait(30)
    med = statistics.median
    dt, at = med(runs["dt"]), med(runs["at"])
    ds, ds_first = med(r[0] for r in runs["ds"]), med(r[1] for r in runs["ds"])
    aps, as_first = med(r[0] for r in runs["as"]), med(r[1] for r in runs["as"])
    one = med(runs["first"])
    print(f"{audio_seconds:.1f} s of speech, five sentences, medians of {args.rounds} rounds")
    print(f"{'':34}{'direct':>10}{'HTTP API':>10}{'ratio':>8}")
    print(f"{'transcription real-time factor':34}{dt:10.3f}{at:10.3f}{at / dt:8.3f}")
    print(f"{'synthesis real-time factor':34}{ds:10.3f}{aps:10.3f}{aps / ds:8.3f}")
    print(f"{'first audio byte, ms':34}{ds_first * 1000:10.1f}{as_first * 1000:10.1f}")
    print(f"{'first sentence alone, ms':34}{one * 1000:10.1f}{'':10}{'':8}")
    print(f"first byte through the API minus the first sentence alone: {(as_first - one) * 1000:+.1f} ms (target < 50)")


if __name__ == "__main__":
    main()
