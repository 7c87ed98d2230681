"""What a schema pattern's grammar costs one stream on a llama.cpp model, per case a client sends:
greedy and short (the most favourable: the answer is held to the pattern), and sampled answers of
everyday length with and without a seed, the end of generation allowed. Prints one table.

    python scripts/bench_grammar.py --home ~/.cache/gpustack-tests/home
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines import llama
from engines.base import InvalidSchema, LoadSpec, Sampling

PATTERNS = [r"^[a-z ]+$", r"^(.*){10}$", r"^(.*){30}$", r"^(.*){50}$"]
CASES = {
    "greedy, 24 tokens": {"max_tokens": 24, "temperature": 0.0},
    "sampled, seed, up to 200": {"max_tokens": 200, "temperature": 0.8, "top_p": 0.95, "seed": 7},
    "sampled, no seed, up to 200": {"max_tokens": 200, "temperature": 0.8, "top_p": 0.95},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, default=Path.home() / ".cache/gpustack-tests/home")
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    folder = args.home / "models" / args.model
    model_file = next(folder.glob("*.gguf")).name
    spec = LoadSpec(args.model, folder, ("llm",), {"model_file": model_file}, parallel=1, ctx_size=1024)
    engine = llama.load(spec)
    prompt = engine.tokenize("<|im_start|>user\nDescribe the sea.<|im_end|>\n<|im_start|>assistant\n")
    print("| pattern | case | tokens | seconds | tokens/s | largest gap |")
    print("|---|---|---:|---:|---:|---:|")
    for pattern in PATTERNS:
        schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}, "required": ["a"]}
        for case, fields in CASES.items():
            sampling = Sampling.of(json_schema=schema, **fields)
            started = last = time.perf_counter()
            gaps, count, ended = [0.0], 0, ""
            try:
                for _ in engine.generate(prompt, sampling, threading.Event()):
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last, count = now, count + 1
            except InvalidSchema:  # over the grammar's budget for one token: the request ends
                ended = " (ended: over the grammar budget)"
            seconds = time.perf_counter() - started
            rate = count / seconds if seconds else 0.0
            print(
                f"| `{pattern}` | {case} | {count}{ended} | {seconds:.2f} | {rate:.1f} | {max(gaps) * 1000:.0f} ms |",
                flush=True,
            )
    engine.close()


if __name__ == "__main__":
    main()
