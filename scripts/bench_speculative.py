"""Speculative decoding by prompt lookup: our server without drafts and with `--draft ngram`, and
llama.cpp's llama-server with its n-gram drafting on the same settings (`--spec-type ngram-simple`,
the same lookup length and draft sizes), in one run: tokens/s at 1 and 4 clients on a code-editing
prompt (the answer copies most of the prompt) and on free text (little to copy). Each prompt is
sent once before its rounds, so that they time the answers, as a conversation's next turn does.

    python scripts/bench_speculative.py --llama-server ~/.cache/llama-server-peer/0.3.36/bin/llama-server \\
        [--model gemma3-270m] [--tokens 160] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import HEADERS, start_llama_server, start_server  # noqa: E402

from engines.llama_draft import Drafting  # noqa: E402
from gpustack_cli.models.store import ModelStore  # noqa: E402

CODE = '''class Inventory:
    """Items and how many of each are in stock."""

    def __init__(self, owner):
        self.owner = owner
        self.items = {}
        self.history = []

    def add(self, name, count):
        self.items[name] = self.items.get(name, 0) + count
        self.history.append(("add", name, count))

    def remove(self, name, count):
        if self.items.get(name, 0) < count:
            raise ValueError(f"only {self.items.get(name, 0)} of {name} left")
        self.items[name] -= count
        self.history.append(("remove", name, count))

    def total(self):
        return sum(self.items.values())

    def report(self):
        lines = [f"{name}: {count}" for name, count in sorted(self.items.items())]
        return "\\n".join([f"Inventory of {self.owner}", *lines])
'''
PROMPTS = {
    "code edit": f"Here is a Python file:\n\n{CODE}\nThe same file, with the class Inventory renamed to Stock:\n\n",
    "free text": "Once upon a time, in a small village by the sea, there lived an old fisherman who",
}


def stream_completion(url: str, body: dict) -> tuple[int, float]:
    """Tokens generated (the usage's count: a chunk may carry several tokens) and seconds from
    the first text to the last."""
    first = last = 0.0
    count = 0
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=body, headers=HEADERS, timeout=600) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if (chunk.get("choices") or [{}])[0].get("text"):
                last = time.perf_counter()
                first = first or last
            count = (chunk.get("usage") or {}).get("completion_tokens") or count
    return count, last - first


def _round(url: str, body: dict, clients: int) -> tuple[int, float]:
    """`clients` answers at once: the tokens of all of them, and the seconds until the last ended."""
    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        counts = list(pool.map(lambda _: stream_completion(url, body), range(clients)))
    return sum(count for count, _ in counts), time.perf_counter() - started


def ngram_flags(drafting: Drafting) -> tuple[str, ...]:
    """llama-server's flags for the drafting ours does."""
    # fmt: off
    return (
        "--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", str(drafting.ngram),
        "--spec-ngram-simple-size-m", str(drafting.max_tokens), "--spec-draft-n-max", str(drafting.max_tokens),
        "--spec-draft-n-min", str(drafting.min_tokens),
    )
    # fmt: on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("GPUSTACK_HOME", "~/.gpustack")).expanduser())
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--llama-server", type=Path, default=os.environ.get("LLAMA_SERVER"))
    args = parser.parse_args()
    store = ModelStore(args.home)
    model_path = store.model_dir(args.model) / store.get(args.model).options["model_file"]
    drafting = Drafting()
    # A store of this run's own whose models link to the given store's, with a drafting copy.
    home = Path(tempfile.mkdtemp())
    (home / "models").mkdir()
    for model in (args.home / "models").iterdir():
        (home / "models" / model.name).symlink_to(model.resolve(), target_is_directory=True)
    env = {**os.environ, "GPUSTACK_HOME": str(home)}
    cli = [sys.executable, "-m", "gpustack_cli"]
    subprocess.run([*cli, "cp", args.model, "drafting"], env=env, check=True, capture_output=True)
    subprocess.run([*cli, "model", "set", "drafting", "--draft", "ngram"], env=env, check=True, capture_output=True)
    common = ("--parallel", "4", "--ctx-size", str(args.ctx), "--threads", str(args.threads), "--gpu-layers", "0")
    sides = {
        "ours, no drafts": (lambda: start_server(home, "--preload", args.model, *common), args.model),
        "ours, --draft ngram": (lambda: start_server(home, "--preload", "drafting", *common), "drafting"),
    }
    if args.llama_server:
        binary = args.llama_server
        slots = ("-np", "4", "--kv-unified")
        sides["llama-server, no drafts"] = (
            lambda: start_llama_server(binary, model_path, *slots, ctx=args.ctx * 4, threads=args.threads),
            args.model,
        )
        sides["llama-server, ngram-simple"] = (
            lambda: start_llama_server(
                binary, model_path, *slots, *ngram_flags(drafting), ctx=args.ctx * 4, threads=args.threads
            ),
            args.model,
        )
    rates: dict[tuple[str, int, str], float] = {}
    tokens: dict[tuple[str, int, str], float] = {}
    for side, (start, model) in sides.items():
        process, url = start()
        try:
            stream_completion(url, {"model": model, "prompt": "Hello", "max_tokens": 4})
            for prompt_name, prompt in PROMPTS.items():
                for clients in (1, 4):
                    body = {"model": model, "prompt": prompt, "max_tokens": args.tokens, "temperature": 0}
                    stream_completion(url, body)  # the prompt read once: the rounds time the answers
                    results = [_round(url, body, clients) for _ in range(args.runs)]
                    tokens[prompt_name, clients, side] = results[-1][0] / clients
                    rates[prompt_name, clients, side] = sum(t for t, _ in results) / sum(s for _, s in results)
        finally:
            process.terminate()
            process.wait(30)
    print(
        f"{args.model}, greedy, up to {args.tokens} tokens an answer, {args.ctx} context x 4 slots, "
        f"{args.threads} threads; drafts of {drafting.min_tokens}-{drafting.max_tokens} tokens after a "
        f"{drafting.ngram}-token match; {args.runs} runs; tokens/s over all clients, wall clock (tokens an answer)"
    )
    print("| prompt | clients | " + " | ".join(sides) + " | ours ngram / no drafts | ours ngram / llama-server ngram |")
    print("|---|---|" + "---|" * (len(sides) + 2))
    for prompt_name in PROMPTS:
        for clients in (1, 4):
            row = [rates[prompt_name, clients, side] for side in sides]
            gain = row[1] / row[0]
            peer = rates.get((prompt_name, clients, "llama-server, ngram-simple"))
            versus = f"{row[1] / peer:.2f}x" if peer else ""
            cells = " | ".join(
                f"{r:.1f} ({tokens[prompt_name, clients, side]:.0f})" for r, side in zip(row, sides, strict=True)
            )
            print(f"| {prompt_name} | {clients} | {cells} | {gain:.2f}x | {versus} |")


if __name__ == "__main__":
    main()
