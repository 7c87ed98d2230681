"""A mixed load on one `gpustack serve` over loopback: N clients for T seconds, each picking the
next kind of request in turn (chat, streamed chat, a stream it leaves early, embeddings, speech,
transcription), reporting per kind the successes, 503s with `Retry-After`, other failures and
p50/p99 latency, and the server's resident memory over time.

    python scripts/load_mixed.py --home ~/.cache/gpustack-tests/home --clients 48 --seconds 300

The server is started here on the store given (the default models: smollm2, all-minilm-l6-v2,
whisper-tiny.en, piper-joe), with its models preloaded so that the warm-up is not counted, or
`--url` names one already running. Every loop is bounded in count and time and talks to
127.0.0.1 only. Targets: no failure other than a 503 with `Retry-After`, and RSS after warm-up
(the first tenth of the run, under the full load) within 10% of where it stood then.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import KEY, start_server

KINDS = ("chat", "chat_stream", "stream_left", "embeddings", "speech", "transcription")
MODELS = {"llm": "smollm2", "embedding": "all-minilm-l6-v2", "stt": "whisper-tiny.en", "tts": "piper-joe"}


@dataclass
class Tally:
    ok: int = 0
    busy: int = 0  # 503 with Retry-After: the server's stated answer to a full queue
    failed: int = 0
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies: list[float] = field(default_factory=list)


async def chat(client: httpx.AsyncClient, index: int) -> httpx.Response:
    body = {
        "model": MODELS["llm"],
        "messages": [{"role": "user", "content": f"Say a word about the number {index}."}],
        "max_tokens": 16,
    }
    return await client.post("/v1/chat/completions", json=body)


async def chat_stream(client: httpx.AsyncClient, index: int, leave_early: bool = False) -> httpx.Response:
    body = {
        "model": MODELS["llm"],
        "messages": [{"role": "user", "content": f"Count from {index}."}],
        "max_tokens": 32,
        "stream": True,
    }
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return response
        events = 0
        async for line in response.aiter_lines():
            events += line.startswith("data: ")
            if leave_early and events >= 3:
                break  # the client leaves: the server must free the slot and log no error
    return response


async def embeddings(client: httpx.AsyncClient, index: int) -> httpx.Response:
    texts = [f"document {index} about {topic}" for topic in ("cats", "dogs", "rain", "the sea")]
    return await client.post("/v1/embeddings", json={"model": MODELS["embedding"], "input": texts})


async def speech(client: httpx.AsyncClient, index: int) -> httpx.Response:
    body = {"model": MODELS["tts"], "input": f"Request number {index} is here.", "response_format": "wav"}
    return await client.post("/v1/audio/speech", json=body)


async def transcription(client: httpx.AsyncClient, audio: bytes) -> httpx.Response:
    files = {"file": ("speech.wav", audio, "audio/wav")}
    return await client.post("/v1/audio/transcriptions", data={"model": MODELS["stt"]}, files=files)


async def one(kind: str, client: httpx.AsyncClient, index: int, audio: bytes) -> httpx.Response:
    if kind == "chat":
        return await chat(client, index)
    if kind in ("chat_stream", "stream_left"):
        return await chat_stream(client, index, leave_early=kind == "stream_left")
    if kind == "embeddings":
        return await embeddings(client, index)
    if kind == "speech":
        return await speech(client, index)
    return await transcription(client, audio)


async def worker(
    number: int, url: str, headers: dict[str, str], deadline: float, tallies: dict[str, Tally], audio: bytes
) -> None:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        for index in itertools.count(number * 100_000):
            if time.monotonic() >= deadline:
                return
            kind = KINDS[index % len(KINDS)]
            tally = tallies[kind]
            started = time.monotonic()
            try:
                response = await one(kind, client, index, audio)
            except httpx.HTTPError as exc:
                tally.failed += 1
                tally.failures[type(exc).__name__] += 1
                continue
            if response.status_code == 200:
                tally.ok += 1
                tally.latencies.append(time.monotonic() - started)
            elif response.status_code == 503 and "retry-after" in response.headers:
                tally.busy += 1
                await asyncio.sleep(float(response.headers["retry-after"]))
            else:
                tally.failed += 1
                tally.failures[str(response.status_code)] += 1


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def sample_rss(pid: int | None, deadline: float, every: float, samples: list[tuple[float, float]]) -> None:
    started = time.monotonic()
    while pid is not None and time.monotonic() < deadline:
        samples.append((time.monotonic() - started, rss_mib(pid)))
        await asyncio.sleep(every)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(args: argparse.Namespace, url: str, pid: int | None) -> int:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        spoken = await speech(client, 0)
        spoken.raise_for_status()
        audio = spoken.content
        for kind in KINDS:  # warm-up: every model answers once before the clock starts
            (await one(kind, client, 0, audio)).raise_for_status()
    tallies = {kind: Tally() for kind in KINDS}
    samples: list[tuple[float, float]] = []
    deadline = time.monotonic() + args.seconds
    tasks = [worker(n, url, headers, deadline, tallies, audio) for n in range(args.clients)]
    await asyncio.gather(*tasks, sample_rss(pid, deadline, args.seconds / 10, samples))
    print(f"\n{args.clients} clients, {args.seconds:.0f} s, {url}\n")
    print("| kind | ok | 503 + Retry-After | other failures | p50 s | p99 s |")
    print("|---|---:|---:|---:|---:|---:|")
    failed = 0
    for kind, tally in tallies.items():
        failures = ", ".join(f"{k}: {v}" for k, v in tally.failures.items()) or "0"
        failed += tally.failed
        p50, p99 = percentile(tally.latencies, 50), percentile(tally.latencies, 99)
        print(f"| {kind} | {tally.ok} | {tally.busy} | {failures} | {p50:.2f} | {p99:.2f} |")
    memory_ok = True
    if samples:
        print("\nserver RSS (MiB) over time: " + ", ".join(f"{t:.0f}s {m:.0f}" for t, m in samples))
        # Warm-up ends with the first tenth of the run: by then every kind has run many at once.
        base = samples[1][1] if len(samples) > 1 else samples[0][1]
        growth = (samples[-1][1] - base) / base * 100
        memory_ok = abs(growth) <= 10
        print(f"RSS change after warm-up (from {base:.0f} MiB): {growth:+.1f}% (target within 10%)")
    print(f"\nfailures other than 503 with Retry-After: {failed}")
    return 0 if failed == 0 and memory_ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path.home() / ".cache" / "gpustack-tests" / "home")
    parser.add_argument("--url", help="a server already running (its RSS is not sampled)")
    # The server started here takes benchlib's key (the caller's GPUSTACK_API_KEY, or one of its own).
    parser.add_argument("--api-key", default=KEY)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=180)
    args = parser.parse_args()
    if args.url:
        return asyncio.run(run(args, args.url.rstrip("/"), None))
    preload = [arg for name in MODELS.values() for arg in ("--preload", name)]
    process, url = start_server(args.home, *preload, GPUSTACK_MAX_LOADED_MODELS="4")
    try:
        return asyncio.run(run(args, url, process.pid))
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    sys.exit(main())
