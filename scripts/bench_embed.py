"""Embedding throughput: our HTTP API against sentence-transformers' `encode` called directly, and
32 concurrent single-sentence requests with dynamic batching against the same without it.

    python scripts/bench_embed.py [--model all-minilm-l6-v2] [--sentences 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import HEADERS, start_server  # noqa: E402

from gpustack_cli.config import Settings  # noqa: E402
from gpustack_cli.models.pull import Puller  # noqa: E402
from gpustack_cli.models.store import ModelStore  # noqa: E402

WORDS = ("the quick brown fox jumps over a lazy dog while rain falls on quiet city streets at night").split()  # noqa: SIM905


def sentences(count: int) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8 + i % 9)) + f" ({i})" for i in range(count)]


def api_batch(url: str, model: str, texts: list[str]) -> float:
    started = time.perf_counter()
    response = httpx.post(url + "/v1/embeddings", json={"model": model, "input": texts}, timeout=600, headers=HEADERS)
    response.raise_for_status()
    return len(texts) / (time.perf_counter() - started)


def api_concurrent(url: str, model: str, texts: list[str]) -> float:
    async def run() -> float:
        async with httpx.AsyncClient(
            base_url=url, timeout=600, limits=httpx.Limits(max_connections=len(texts)), headers=HEADERS
        ) as http:
            started = time.perf_counter()
            responses = await asyncio.gather(
                *(http.post("/v1/embeddings", json={"model": model, "input": t}) for t in texts)
            )
            elapsed = time.perf_counter() - started
        assert all(r.status_code == 200 for r in responses)
        return len(texts) / elapsed

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--home", default=os.environ.get("GPUSTACK_HOME", str(Path.home() / ".gpustack")))
    args = parser.parse_args()

    settings = Settings.load(home=args.home)
    Puller(settings).pull(args.model)
    folder = ModelStore(settings.home).model_dir(args.model)
    big, small = sentences(args.sentences), sentences(args.concurrent)

    from sentence_transformers import SentenceTransformer

    direct_model = SentenceTransformer(str(folder), device="cpu")
    direct_model.encode(big[:8], show_progress_bar=False)

    def direct() -> float:
        started = time.perf_counter()
        direct_model.encode(big, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        return len(big) / (time.perf_counter() - started)

    rates: dict[str, list[float]] = {"direct": [], "api": [], "batched": [], "unbatched": []}
    server, url = start_server(settings.home, "--preload", args.model, GPUSTACK_BATCH_WAIT=str(settings.batch_wait))
    try:
        api_batch(url, args.model, big[:8])
        for _ in range(args.rounds):
            rates["direct"].append(direct())
            rates["api"].append(api_batch(url, args.model, big))
            rates["batched"].append(api_concurrent(url, args.model, small))
    finally:
        server.terminate()
        server.wait(30)
    server, url = start_server(settings.home, "--preload", args.model, GPUSTACK_BATCH_WAIT="-1")
    try:
        api_concurrent(url, args.model, small[:4])
        for _ in range(args.rounds):
            rates["unbatched"].append(api_concurrent(url, args.model, small))
    finally:
        server.terminate()
        server.wait(30)
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(f"model {args.model}, medians of {args.rounds} rounds, sentences per second")
    print(f"{'one request of ' + str(args.sentences):36}{'direct encode':>16}{'HTTP API':>12}{'ratio':>8}")
    print(f"{'':36}{median['direct']:16.1f}{median['api']:12.1f}{median['api'] / median['direct']:8.3f}")
    print(
        f"{str(args.concurrent) + ' concurrent one-sentence requests':36}{'unbatched':>16}{'batched':>12}{'ratio':>8}"
    )
    print(f"{'':36}{median['unbatched']:16.1f}{median['batched']:12.1f}{median['batched'] / median['unbatched']:8.2f}")


if __name__ == "__main__":
    main()
