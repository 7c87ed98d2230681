"""The KV cache's types against its memory and speed: our server with an f16 cache, a q8_0 cache
and a q4_0 one (flash attention on for the quantized ones, as llama.cpp needs), in one run: the
server's resident memory once the model is loaded with its slots, and one stream's decode speed.

Each side loads the same GGUF with the same slots, context and threads; answers are greedy with
the end-of-generation token banned, so each is exactly --tokens tokens; medians of --runs.

    python scripts/bench_kv_cache.py [--model smollm2] [--ctx 8192] [--slots 4] [--tokens 128] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import chat_cases, start_server, stream_chat  # noqa: E402

from gpustack_cli.models.gguf_meta import read_metadata  # noqa: E402
from gpustack_cli.models.store import ModelStore  # noqa: E402

SIDES = {"f16": ("auto", "f16", "f16"), "q8_0": ("on", "q8_0", "q8_0"), "q4_0": ("on", "q4_0", "q4_0")}


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
    cases = chat_cases(args.tokens, eos)
    print(f"{args.model}, {args.slots} slots x {args.ctx} context, {args.runs} runs a case")
    print("| KV cache | server memory MiB | case | tokens per answer | tokens/s | vs f16 |")
    print("|---|---|---|---|---|---|")
    reference: dict[str, float] = {}
    for name, (flash, type_k, type_v) in SIDES.items():
        # fmt: off
        process, url = start_server(
            args.home, "--preload", args.model, "--parallel", str(args.slots), "--ctx-size", str(args.ctx),
            "--threads", str(args.threads), "--flash-attn", flash, "--cache-type-k", type_k, "--cache-type-v", type_v,
        )
        # fmt: on
        try:
            ask = [{"role": "user", "content": "Warm up."}]
            stream_chat(url, {"model": args.model, "messages": ask, "max_tokens": 8})
            memory = psutil.Process(process.pid).memory_info().rss / 2**20
            for case, fields in cases.items():
                answers = [
                    stream_chat(
                        url,
                        {
                            "model": args.model,
                            "messages": [{"role": "user", "content": f"Run {run}: write a long story about the sea."}],
                            **fields,
                        },
                    )
                    for run in range(args.runs)
                ]
                rate = sum(a.tokens - 1 for a in answers) / sum(a.decode for a in answers)
                reference.setdefault(case, rate)
                tokens = statistics.mean(a.tokens for a in answers)
                print(
                    f"| {name} (flash attention {flash}) | {memory:.0f} | {case} | {tokens:.0f} | {rate:.1f} "
                    f"| {rate / reference[case]:.2f}x |"
                )
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
