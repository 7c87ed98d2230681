"""Many streaming clients on one GGUF model: our server against llama.cpp's own llama-server and
llama-cpp-python's server, in one run, on the same file, threads, slots and context per slot.

For each number of concurrent clients (1, 4, 8, 16 by default), every side serves that many
clients at once, each sending --requests streamed chats one after another as a chat client does
(distinct prompts; several a client, so that one sampled answer's length does not decide a
one-client figure), in each case of --cases: `sampled` (temperature 0.8,
up to 64 tokens, the end of generation allowed: what chat clients send), `seeded` (the same with
a `seed` in each request), and `greedy` (the end-of-generation token banned so that each answer
is exactly --tokens tokens: the favourable case, where a request's own costs spread over the most
tokens). Tokens are counted from each answer's usage. Rounds run the sides in a rotating order,
and each case's and round's prompts differ: no side reads a prompt from its cache (llama-server
keeps earlier prompts' caches in RAM). The table shows, per case, side and concurrency, the
medians over rounds of: aggregate generated tokens per second (all answers' tokens over the time
from the first request to the last token), median and p99 time to first token, and the median
time between tokens; and each side's throughput as a ratio to llama-server's.

llama-server is any build named with --llama-server; to compare the same llama.cpp, build it from
the sources llama-cpp-python vendors, with the flags the README uses:

    pip download --no-deps --no-binary :all: "llama-cpp-python==$(pip show llama-cpp-python | sed -n 's/Version: //p')"
    tar xzf llama_cpp_python-*.tar.gz && cd llama_cpp_python-*/vendor/llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF
    cmake --build build --target llama-server

llama-cpp-python's server runs when its `server` extra is installed. A side that is missing says
so in its row.

    python scripts/bench_concurrency.py --llama-server ~/.cache/llama-server-peer/0.3.36/bin/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import HEADERS, start_llama_cpp_python, start_llama_server, start_server  # noqa: E402

from gpustack_cli.config import Settings  # noqa: E402
from gpustack_cli.models.pull import Puller  # noqa: E402
from gpustack_cli.models.store import ModelStore  # noqa: E402

PROMPT = "Round {r}, client {c}. Write a detailed story about a lighthouse keeper and the sea."


@dataclass
class Run:
    throughput: float
    first_tokens: list[float]
    between: list[float]


def case_fields(case: str, eos: int, tokens: int, seed: int) -> dict:
    """The sampling fields of a request of `case` (see the module's docstring)."""
    if case == "greedy":
        return {"max_tokens": tokens, "temperature": 0, "logit_bias": {str(eos): -100}}
    fields = {"max_tokens": 64, "temperature": 0.8}
    return {**fields, "seed": seed} if case == "seeded" else fields


async def one_stream(client: httpx.AsyncClient, body: dict) -> tuple[float, float, float, int]:
    """(sent, first token, last token, tokens) of one streamed chat."""
    sent = time.perf_counter()
    first = last = None
    chunks = counted = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                last = time.perf_counter()
                first = first or last
                chunks += 1
            counted = (chunk.get("usage") or {}).get("completion_tokens") or counted
    assert first is not None and last is not None
    return sent, first, last, counted or chunks


async def one_client(client: httpx.AsyncClient, bodies: list[dict]) -> list[tuple[float, float, float, int]]:
    """A client's chats, one after another, as a chat client sends them. A chat whose connection
    broke (llama-server may close a kept-alive connection as the next request goes out on it) is
    sent again once, as the OpenAI SDK retries, timed from the first try."""
    spans = []
    for body in bodies:
        sent = time.perf_counter()
        try:
            span = await one_stream(client, body)
        except httpx.RemoteProtocolError:
            span = await one_stream(client, body)
        spans.append((sent, *span[1:]))
    return spans


async def run_side(url: str, model: str, fields: dict, clients: int, round_: str, requests: int) -> Run:
    async with httpx.AsyncClient(
        base_url=url, timeout=600, limits=httpx.Limits(max_connections=64), headers=HEADERS
    ) as client:
        bodies = [
            [
                {
                    "model": model,
                    "messages": [{"role": "user", "content": PROMPT.format(r=round_, c=c * 100 + k)}],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    **fields,
                    **({"seed": fields["seed"] + c * 100 + k} if "seed" in fields else {}),
                }
                for k in range(requests)
            ]
            for c in range(clients)
        ]
        spans = [span for spans in await asyncio.gather(*(one_client(client, b) for b in bodies)) for span in spans]
    start = min(s for s, _, _, _ in spans)
    end = max(last for _, _, last, _ in spans)
    return Run(
        throughput=sum(n for *_, n in spans) / (end - start),
        first_tokens=[first - sent for sent, first, _, _ in spans],
        between=[(last - first) / (n - 1) for _, first, last, n in spans if n > 1],
    )


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--tokens", type=int, default=128, help="tokens of each greedy answer")
    parser.add_argument("--cases", default="sampled,seeded,greedy")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3, help="chats each client sends, one after another")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--llama-server", type=Path, default=os.environ.get("LLAMA_SERVER"))
    parser.add_argument("--home", default=os.environ.get("GPUSTACK_HOME", str(Path.home() / ".gpustack")))
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    cases = [c for c in args.cases.split(",") if c]

    settings = Settings.load(home=args.home)
    Puller(settings).pull(args.model)
    manifest = ModelStore(settings.home).get(args.model)
    model_path = ModelStore(settings.home).model_dir(args.model) / manifest.options["model_file"]

    from llama_cpp import Llama

    eos = Llama(str(model_path), vocab_only=True, verbose=False).token_eos()
    processes, sides = [], {}
    ours = start_server(
        settings.home,
        "--preload",
        args.model,
        "--parallel",
        str(args.slots),
        "--threads",
        str(args.threads),
        "--max-queue",
        "256",
    )
    processes.append(ours[0])
    sides["gpustack"] = ours[1]
    # The peers get the context per slot ours loaded the model with (its own setting, or the default).
    [loaded] = httpx.get(ours[1] + "/api/ps", headers=HEADERS).json()["models"]
    ctx = loaded["context"]
    missing = {}
    if args.llama_server and args.llama_server.exists():
        peer = start_llama_server(
            args.llama_server,
            model_path,
            "-np",
            str(args.slots),
            "--kv-unified",
            ctx=ctx * args.slots,
            threads=args.threads,
        )
        processes.append(peer[0])
        sides["llama-server"] = peer[1]
    else:
        missing["llama-server"] = "not built (pass --llama-server)"
    python_peer = start_llama_cpp_python(model_path, ctx, args.threads)
    if python_peer is not None:
        processes.append(python_peer[0])
        sides["llama-cpp-python server"] = python_peer[1]
    else:
        missing["llama-cpp-python server"] = "not installed (pip install 'llama-cpp-python[server]')"

    results: dict[tuple[str, str, int], list[Run]] = {}
    failed: dict[tuple[str, str, int], str] = {}
    try:
        for url in sides.values():  # warm up: first requests pay for lazy imports and allocations
            asyncio.run(run_side(url, args.model, case_fields("greedy", eos, 8, 0), 1, "warm-up", 1))
        names = list(sides)
        for case in cases:
            for round_ in range(args.rounds):
                for level in levels:
                    fields = case_fields(case, eos, args.tokens, seed=round_ * 1000)
                    for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                        key = (case, name, level)
                        try:
                            # Prompts of their own for each case and round: no side reads one from its cache.
                            label = f"{case} {round_ * 100 + level}"
                            run = asyncio.run(run_side(sides[name], args.model, fields, level, label, args.requests))
                        except httpx.HTTPError as exc:  # a peer that breaks under concurrency: its row says so
                            failed[key] = f"failed: {type(exc).__name__}"
                            print(f"{case} round {round_} clients {level:>2} {name:<24} failed: {exc}", flush=True)
                            continue
                        results.setdefault(key, []).append(run)
                        line = f"{case} round {round_} clients {level:>2} {name:<24} {run.throughput:6.1f} tok/s"
                        print(line, flush=True)
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)

    print(
        f"\nmodel {args.model}, greedy answers of {args.tokens} tokens, sampled ones of up to 64, "
        f"{args.requests} chats per client one after another, {args.rounds} rounds, {args.threads} threads, "
        f"{args.slots} slots x {ctx} context, medians\n"
    )
    print("| case | clients | server | tok/s | vs llama-server | first token p50 ms | p99 ms | between tokens ms |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for case in cases:
        for level in levels:
            print_rows(case, level, [*sides, *missing], results, failed, missing)


def print_rows(
    case: str,
    level: int,
    names: list[str],
    results: dict[tuple[str, str, int], list[Run]],
    failed: dict[tuple[str, str, int], str],
    missing: dict[str, str],
) -> None:
    """The table's rows of one case and number of clients."""
    reference = results.get((case, "llama-server", level))
    for name in names:
        if name in missing:
            print(f"| {case} | {level} | {name} | {missing[name]} | | | | |")
            continue
        runs = results.get((case, name, level), [])
        if (case, name, level) in failed or not runs:
            print(f"| {case} | {level} | {name} | {failed.get((case, name, level), 'no run')} | | | | |")
            continue
        throughput = statistics.median(r.throughput for r in runs)
        ratio = ""
        if reference and len(reference) == len(runs):
            ratios = [r.throughput / p.throughput for r, p in zip(runs, reference, strict=True)]
            ratio = f"{statistics.median(ratios):.2f}x"
        firsts = [t for r in runs for t in r.first_tokens]
        between = statistics.median(t for r in runs for t in r.between)
        print(
            f"| {case} | {level} | {name} | {throughput:.1f} | {ratio} | {statistics.median(firsts) * 1000:.0f} "
            f"| {p99(firsts) * 1000:.0f} | {between * 1000:.1f} |"
        )


if __name__ == "__main__":
    main()
