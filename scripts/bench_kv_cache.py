"""The KV cache's types against its memory and speed: our server with an f16 cache, a q8_0 cache
and a q4_0 one (flash attention on for the quantized ones, as llama.cpp needs), in one run: the
server's resident memory once the model is loaded with its slots, and one stream's decode speed.

Each side loads the same GGUF with the same slots, context and threads; answers are greedy with
the end-of-generation token banned, so each is exactly --tokens tokens; medians of --runs.

    python scripts/bench_kv_cache.py [--model smollm2] [--ctx 8192] [--slots 4] [--tokens 128] [--runs 3]
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
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import HEADERS, start_server  # noqa: E402

from gpustack_cli.models.gguf_meta import read_metadata  # noqa: E402
from gpustack_cli.models.store import ModelStore  # noqa: E402

SIDES = {"f16": ("auto", "f16", "f16"), "q8_0": ("on", "q8_0", "q8_0"), "q4_0": ("on", "q4_0", "q4_0")}


def decode_rate(url: str, model: str, tokens: int, eos: int, run: int) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Run {run}: write a long story about the sea."}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "logit_bias": {str(eos): -100},
    }
    first = last = 0.0
    count = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=HEADERS, timeout=600) as response:
        for line in response.iter_lines():
            choices = json.loads(line[6:])["choices"] if line.startswith("data: {") else []
            if choices and choices[0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                count += 1
    return (count - 1) / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("GPUSTACK_HOME", "~/.gpustack")).expanduser())
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    store = ModelStore(args.home)
    model_file = store.model_dir(args.model) / store.get(args.model).options["model_file"]
    eos = int(read_metadata(model_file)["tokenizer.ggml.eos_token_id"])
    print(f"{args.model}, {args.slots} slots x {args.ctx} context, {args.tokens} tokens, {args.runs} runs")
    print("| KV cache | server memory MiB | tokens/s | vs f16 |")
    print("|---|---|---|---|")
    reference = None
    for name, (flash, type_k, type_v) in SIDES.items():
        # fmt: off
        process, url = start_server(
            args.home, "--preload", args.model, "--parallel", str(args.slots), "--ctx-size", str(args.ctx),
            "--threads", str(args.threads), "--flash-attn", flash, "--cache-type-k", type_k, "--cache-type-v", type_v,
        )
        # fmt: on
        try:
            decode_rate(url, args.model, 8, eos, -1)  # a warm-up answer
            memory = psutil.Process(process.pid).memory_info().rss / 2**20
            rate = statistics.median(decode_rate(url, args.model, args.tokens, eos, run) for run in range(args.runs))
        finally:
            process.terminate()
            process.wait(30)
        reference = reference or rate
        print(f"| {name} (flash attention {flash}) | {memory:.0f} | {rate:.1f} | {rate / reference:.2f}x |")


if __name__ == "__main__":
    main()
