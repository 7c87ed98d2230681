"""A coding agent's first and second request: the time to the first token of a request shaped as
Claude Code sends them (a long system prompt, 24 tools with nested schemas, a system message among
the messages, streamed) with nothing cached, then of its next turn (the same conversation one
exchange longer), in one run, on three sides:

- gpustack's `/v1/messages`, on a server with one slot of --ctx tokens;
- llama.cpp called directly (llama-cpp-python) on the very tokens gpustack's text core made of the
  request, reusing its evaluated prefix for the second turn as a server's slot does;
- llama.cpp's `llama-server` (when --llama-server names one), given the same tokens on its
  `/completion`, with its prompt cache on. (Its own `/v1/messages` renders the request its own
  way: for a model whose template has no tools it leaves the tools out, a much shorter prompt.)

Each round's system prompt starts with its own number, so no side finds a round's prefix cached
from an earlier one. The request is written here, of the size and shape of Claude Code's, not
copied from it.

    python scripts/bench_agent.py [--model gemma3-270m] [--ctx 32768] [--runs 1] [--llama-server PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import HEADERS, free_port, start_server, wait_ready  # noqa: E402

from gpustack_cli.anthropic.messages import MessagesBody, chat_request  # noqa: E402
from gpustack_cli.config import Settings  # noqa: E402
from gpustack_cli.core.prompts import prepare_chat  # noqa: E402
from gpustack_cli.models.loading import load_model  # noqa: E402
from gpustack_cli.models.pull import Puller  # noqa: E402
from gpustack_cli.models.store import ModelStore  # noqa: E402

TEXT = (
    "the agent reads files edits code runs commands in the shell and reports what it changed "
    "before each step it checks the project layout tests and style guide never guesses paths "
    "prefers small commits explains every change keeps the user informed asks when unsure"
)
WORDS = TEXT.split(" ")
ANSWER = "I will read the notes first."
NEXT = "Good. Now summarise the notes in one sentence."


def prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def tool(rng: random.Random, index: int) -> dict[str, Any]:
    """A tool with a schema as nested as an agent's: strings, enums, bounds, an array of objects."""
    item = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": prose(rng, 12)},
            "line": {"type": "integer", "minimum": 1},
            "kind": {"type": "string", "enum": ["add", "remove", "replace"]},
        },
        "required": ["path"],
        "additionalProperties": False,
    }
    return {
        "name": f"tool_{index:02d}",
        "description": " ".join(prose(rng, 35) for _ in range(4 + index % 12)),
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": prose(rng, 30)},
                "timeout": {"type": "number", "maximum": 600000, "description": prose(rng, 10)},
                "background": {"type": "boolean"},
                "changes": {"type": "array", "items": item, "description": prose(rng, 15)},
            },
            "required": ["command"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    }


def agent_body(model: str, round_: int, turns: int) -> dict[str, Any]:
    """Round `round_`'s request after `turns` exchanges (1: the first request, 2: the next)."""
    rng = random.Random(0)
    system = [
        {"type": "text", "text": f"Session {round_}. You are a coding agent."},
        {
            "type": "text",
            "text": "\n\n".join(prose(rng, 60) for _ in range(20)),
            "cache_control": {"type": "ephemeral"},
        },
    ]
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [{"type": "text", "text": prose(rng, 300)}, {"type": "text", "text": "Read notes.txt."}],
        },
        {"role": "system", "content": prose(rng, 40)},
    ]
    if turns > 1:
        messages += [{"role": "assistant", "content": ANSWER}, {"role": "user", "content": NEXT}]
    return {
        "model": model,
        "system": system,
        "messages": messages,
        "tools": [tool(rng, i) for i in range(24)],
        "max_tokens": 8,
        "temperature": 0,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": "bench"},
        "stream": True,
    }


def first_token(http: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, int]:
    """(seconds to the first streamed piece of the answer, prompt tokens) of one request."""
    started, first, prompt = time.perf_counter(), None, 0
    with http.stream("POST", url, json=body, timeout=3600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            usage = data.get("usage") or data.get("message", {}).get("usage") or {}
            prompt = usage.get("input_tokens") or data.get("tokens_evaluated") or prompt
            if (data.get("type") == "content_block_delta" or data.get("content")) and first is None:
                first = time.perf_counter()
    assert first is not None, "the answer had no piece"
    return first - started, prompt


def start_llama_server(binary: str, model_path: Path, ctx: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # --swa-full: a sliding-window model's whole cache kept, as llama.cpp's library keeps it by
    # default (and so our engine and the direct side), so that a prefix can be reused.
    args = ["-m", str(model_path), "-c", str(ctx), "-np", "1", "-t", str(threads), "--jinja", "--swa-full"]
    args += ["--port", str(port)]
    process = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/health", 300)
    return process, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--ctx", type=int, default=32768)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--llama-server", help="a llama-server binary, the peer")
    parser.add_argument("--home", default=os.environ.get("GPUSTACK_HOME", str(Path.home() / ".gpustack")))
    args = parser.parse_args()

    settings = Settings.load(home=args.home, ctx_size=args.ctx, parallel=1)
    Puller(settings).pull(args.model)
    store = ModelStore(settings.home)
    model_path = store.model_dir(args.model) / store.get(args.model).options["model_file"]

    from llama_cpp import Llama

    # Our engine renders the direct side's tokens; the direct side and the peer take its threads.
    engine = load_model(store, args.model, settings)
    threads = engine.threads
    # Flash attention as llama.cpp's library and server choose it on this device (auto: on).
    llm = Llama(
        str(model_path), n_ctx=args.ctx, n_batch=512, n_ubatch=512, n_threads=threads, flash_attn=True, verbose=False
    )

    def tokens_of(round_: int, turns: int) -> list[int]:
        """The tokens gpustack's text core makes of the request."""
        chat = chat_request(MessagesBody.model_validate(agent_body(args.model, round_, turns)))
        return prepare_chat(engine, chat).prompt_tokens

    def direct(round_: int, turns: int) -> tuple[float, int]:
        tokens = tokens_of(round_, turns)
        started = time.perf_counter()
        # generate() evaluates only what follows the prefix it evaluated last (a slot's cache).
        next(iter(llm.generate(tokens, temp=0)))
        return time.perf_counter() - started, len(tokens)

    server, url = start_server(settings.home, "--preload", args.model, "--ctx-size", str(args.ctx), "--parallel", "1")
    peer = start_llama_server(args.llama_server, model_path, args.ctx, threads) if args.llama_server else None
    http = httpx.Client(headers=HEADERS)
    sides: dict[str, Callable[[int, int], tuple[float, int]]] = {
        "llama.cpp direct": direct,
        "gpustack /v1/messages": lambda r, t: first_token(http, url + "/v1/messages", agent_body(args.model, r, t)),
    }
    if peer is not None:

        def peer_tokens(round_: int, turns: int) -> tuple[float, int]:
            tokens = tokens_of(round_, turns)
            body = {"prompt": tokens, "n_predict": 8, "temperature": 0, "stream": True, "cache_prompt": True}
            return first_token(http, peer[1] + "/completion", body)[0], len(tokens)

        sides["llama-server, same tokens"] = peer_tokens
    results: dict[str, list[tuple[float, int, float, int]]] = {name: [] for name in sides}
    try:
        for round_ in range(args.runs):
            for name, run in sides.items():
                cold, cold_tokens = run(round_, 1)
                warm, warm_tokens = run(round_, 2)
                results[name].append((cold, cold_tokens, warm, warm_tokens))
                print(f"round {round_} {name}: {cold:.1f} s, then {warm:.2f} s", file=sys.stderr)
    finally:
        engine.close()
        for process in [server] + ([peer[0]] if peer else []):
            process.terminate()
            process.wait(20)
    print(f"model {args.model}, context {args.ctx}, {threads} threads, {args.runs} round(s), medians")
    heads = ("first: tokens", "first token s", "prompt tok/s", "next: tokens", "first token s")
    print(f"{'':26}" + "".join(f"{head:>15}" for head in heads))
    for name, runs in results.items():
        cold, cold_tokens, warm, warm_tokens = (statistics.median(x) for x in zip(*runs, strict=True))
        print(f"{name:26}{cold_tokens:15.0f}{cold:15.1f}{cold_tokens / cold:15.0f}{warm_tokens:15.0f}{warm:15.2f}")
    if peer is None:
        print("llama-server: not given (--llama-server PATH; build one with llama.cpp's sources)")


if __name__ == "__main__":
    main()
