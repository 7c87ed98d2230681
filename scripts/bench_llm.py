"""Decode speed and time to first token of one stream: our HTTP API against llama.cpp called directly.

Both sides run the same GGUF with the same context, batch and thread settings, greedy, with the
end-of-generation token banned so every run decodes exactly --tokens tokens. Runs alternate
between the two sides (so neither gets a warmer machine) and each run's prompt differs (so
neither reuses the other's KV cache); the table shows medians.

    python scripts/bench_llm.py [--model smollm2] [--tokens 128] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import start_server  # noqa: E402

from engines.base import Sampling  # noqa: E402
from engines.llama import _threads  # noqa: E402
from gpustack_cli.config import Settings  # noqa: E402
from gpustack_cli.pull import Puller  # noqa: E402
from gpustack_cli.store import ModelStore  # noqa: E402

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
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT.format(i=i)}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "logit_bias": {str(eos): -100},
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = end = None
    count = 0
    with http.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                if first is None:
                    first = time.perf_counter()
                end = time.perf_counter()
    assert count == tokens, f"expected {tokens} tokens, got {count}"
    return first - started, (count - 1) / (end - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--home", default=os.environ.get("GPUSTACK_HOME", str(Path.home() / ".gpustack")))
    args = parser.parse_args()

    settings = Settings.load(home=args.home)
    Puller(settings).pull(args.model)
    store = ModelStore(settings.home)
    manifest = store.get(args.model)

    from llama_cpp import Llama

    from gpustack_cli.textgen import ChatMessage, ChatRequest, render_chat

    options = manifest.options
    threads = _threads()
    llm = Llama(
        str(store.model_dir(args.model) / options["model_file"]),
        n_ctx=int(options.get("n_ctx", 4096)),
        n_batch=512,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=-1,
        verbose=False,
    )

    class View:  # what render_chat needs of an engine, from the direct Llama
        chat_template = llm.metadata.get("tokenizer.chat_template")
        architecture = llm.metadata.get("general.architecture", "")
        bos_text = llm.detokenize([llm.token_bos()], special=True).decode()
        eos_text = llm.detokenize([llm.token_eos()], special=True).decode()

    eos = llm.token_eos()
    server, url = start_server(settings.home, "--preload", args.model)
    try:
        # One client for every run, as an application keeps one: creating a client costs tens of
        # milliseconds (it loads the CA bundle), which is no part of the server's time.
        http = httpx.Client()
        api_run(http, url, args.model, eos, -1, 8)
        direct: list[tuple[float, float]] = []
        ours: list[tuple[float, float]] = []
        for i in range(args.runs):
            prompt = render_chat(View(), ChatRequest([ChatMessage("user", PROMPT.format(i=i))], Sampling(max_tokens=1)))
            tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            direct.append(direct_run(llm, eos, tokens, args.tokens))
            ours.append(api_run(http, url, args.model, eos, i, args.tokens))
    finally:
        server.terminate()
        server.wait(20)
    d_ttft, d_tps = (statistics.median(x) for x in zip(*direct, strict=True))
    o_ttft, o_tps = (statistics.median(x) for x in zip(*ours, strict=True))
    print(f"model {args.model}, {args.tokens} tokens per run, {args.runs} runs, {threads} threads, medians")
    print(f"{'':24}{'decode tok/s':>14}{'first token ms':>16}")
    print(f"{'llama.cpp direct':24}{d_tps:14.1f}{d_ttft * 1000:16.1f}")
    print(f"{'gpustack HTTP API':24}{o_tps:14.1f}{o_ttft * 1000:16.1f}")
    print(f"{'ours / direct':24}{o_tps / d_tps:14.3f}{(o_ttft - d_ttft) * 1000:+15.1f}ms")


if __name__ == "__main__":
    main()
