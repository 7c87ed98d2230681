"""Decode speed and time to first token of one stream: our HTTP API against llama.cpp called
directly, and against a peer server (llama-cpp-python's own OpenAI server), in one run. A row for
our engine and text core called in-process (no HTTP) tells the engine's share from the server's,
and one for our server on asyncio's own event loop (where uvloop, its default, is installed) what
the loop costs.

All sides run the same GGUF with the same context, batch and thread settings, greedy, with the
end-of-generation token banned so every run decodes exactly --tokens tokens. Each round runs every
side once, in a rotating order (so none gets a warmer machine), and each round's prompt differs (so
none reuses another's KV cache). The table shows medians, and each server's ratio to direct as
the median of per-round ratios (the machine's speed drifts less within a round than across).

The peer runs when llama-cpp-python's server extra is installed
(`pip install 'llama-cpp-python[server]'`); otherwise its row says so.

    python scripts/bench_llm.py [--model smollm2] [--tokens 128] [--runs 9]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import HEADERS, start_llama_cpp_python, start_server  # noqa: E402

from engines.base import Sampling  # noqa: E402
from gpustack_cli.config import Settings  # noqa: E402
from gpustack_cli.models.loading import load_model  # noqa: E402
from gpustack_cli.models.pull import Puller  # noqa: E402
from gpustack_cli.models.store import ModelStore  # noqa: E402

PROMPT = "Run {i}. Write a detailed story about a lighthouse keeper and the sea."


def direct_run(llm, eos: int, prompt_tokens: list[int], tokens: int) -> tuple[float, float]:
    import numpy as np
    from llama_cpp import LogitsProcessorList

    def ban_eos(_ids, logits: np.ndarray) -> np.ndarray:
        logits[eos] -= 100
        return logits

    started = time.perf_counter()
    first = None
    count = 0
    for _token in llm.generate(
        prompt_tokens, temp=0, top_k=40, top_p=0.95, min_p=0.05, logits_processor=LogitsProcessorList([ban_eos])
    ):
        count += 1
        if first is None:
            first = time.perf_counter()
        if count >= tokens:
            break
    end = time.perf_counter()
    return first - started, (count - 1) / (end - first)


def api_run(http: httpx.Client, url: str, model: str, eos: int, i: int, tokens: int) -> tuple[float, float]:
    """(first token s, decode tok/s) of one streamed chat through an OpenAI-compatible server."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT.format(i=i)}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "logit_bias": {str(eos): -100},
    }
    started = time.perf_counter()
    first = end = None
    finish = None
    with http.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            if choice["delta"].get("content"):
                if first is None:
                    first = time.perf_counter()
                end = time.perf_counter()
            finish = choice.get("finish_reason") or finish
    # EOS is banned, so every reply runs to max_tokens: `tokens` tokens, whatever the chunking.
    assert finish == "length" and first is not None and end is not None, f"a short reply ({finish})"
    return first - started, (tokens - 1) / (end - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--home", default=os.environ.get("GPUSTACK_HOME", str(Path.home() / ".gpustack")))
    args = parser.parse_args()

    settings = Settings.load(home=args.home)
    Puller(settings).pull(args.model)
    store = ModelStore(settings.home)
    manifest = store.get(args.model)

    from llama_cpp import Llama

    from gpustack_cli.core.prompts import prepare_chat, render_chat
    from gpustack_cli.core.streams import stream_chat
    from gpustack_cli.core.types import ChatMessage, ChatRequest, TextDelta

    # Our engine first: the direct side and the peer take its context size and threads.
    engine = load_model(store, args.model, settings)
    threads, n_ctx = engine.threads, engine.n_ctx
    model_path = store.model_dir(args.model) / manifest.options["model_file"]
    llm = Llama(
        str(model_path),
        n_ctx=n_ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=-1,
        verbose=False,
    )

    def direct(i: int) -> tuple[float, float]:
        prompt = render_chat(engine, ChatRequest([ChatMessage("user", PROMPT.format(i=i))], Sampling(max_tokens=1)))
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        return direct_run(llm, eos, tokens, args.tokens)

    eos = llm.token_eos()

    def in_process(i: int) -> tuple[float, float]:
        """Our engine and text core called in-process: what the HTTP layer adds is the rest."""
        sampling = Sampling(max_tokens=args.tokens, temperature=0, logit_bias={eos: -100})
        chat = ChatRequest([ChatMessage("user", PROMPT.format(i=i))], sampling, max_tokens=args.tokens)
        prepared = prepare_chat(engine, chat)
        started, first, end = time.perf_counter(), None, None
        for event in stream_chat(engine, prepared, threading.Event()):
            if isinstance(event, TextDelta):
                end = time.perf_counter()
                first = first or end
        assert first is not None and end is not None
        return first - started, (args.tokens - 1) / (end - first)

    server, url = start_server(settings.home, "--preload", args.model)
    # The server runs on uvloop where it is installed; a second one on asyncio's own loop shows why.
    on_asyncio = None
    if importlib.util.find_spec("uvloop") is not None:
        on_asyncio = start_server(settings.home, "--preload", args.model, GPUSTACK_EVENT_LOOP="asyncio")
    peer = start_llama_cpp_python(model_path, n_ctx, threads)
    # One client for every run, as an application keeps one: creating a client costs tens of
    # milliseconds (it loads the CA bundle), which is no part of a server's time.
    http = httpx.Client(headers=HEADERS)
    sides = {
        "llama.cpp direct": direct,
        "gpustack in-process": in_process,
        "gpustack HTTP API": lambda i: api_run(http, url, args.model, eos, i, args.tokens),
    }
    if on_asyncio is not None:
        sides["gpustack, asyncio loop"] = lambda i: api_run(http, on_asyncio[1], args.model, eos, i, args.tokens)
    if peer is not None:
        sides["llama-cpp-python server"] = lambda i: api_run(http, peer[1], args.model, eos, i, args.tokens)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    try:
        for run in sides.values():
            run(-1)  # warm up: first requests pay for lazy imports and allocations
        names = list(sides)
        for i in range(args.runs):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                results[name].append(sides[name](i))
    finally:
        engine.close()
        for process in [server] + [pair[0] for pair in (on_asyncio, peer) if pair is not None]:
            process.terminate()
            process.wait(20)
    base = results["llama.cpp direct"]
    print(f"model {args.model}, {args.tokens} tokens per run, {args.runs} rounds, {threads} threads, medians")
    print(f"{'':26}{'decode tok/s':>13}{'first token ms':>16}{'decode / direct':>17}{'first token +ms':>17}")
    for name, runs in results.items():
        ttft, tps = (statistics.median(x) for x in zip(*runs, strict=True))
        line = f"{name:26}{tps:13.1f}{ttft * 1000:16.1f}"
        if runs is not base:
            ratio = statistics.median(r[1] / b[1] for r, b in zip(runs, base, strict=True))
            delay = statistics.median((r[0] - b[0]) * 1000 for r, b in zip(runs, base, strict=True))
            line += f"{ratio:17.3f}{delay:+17.1f}"
        print(line)
    if peer is None:
        print("llama-cpp-python server: not installed (pip install 'llama-cpp-python[server]')")
    print("targets: decode at least 0.95x direct, first token within 10 ms of direct")


if __name__ == "__main__":
    main()
