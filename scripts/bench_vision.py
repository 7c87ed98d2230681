"""A question about an image: our server against llama.cpp's llama-server (`--mmproj`, the same
llama.cpp and libmtmd), in one run: time to the first token (the image's encode and the prompt's
read) and decode speed; then the same conversation's next turn (the image found in the cache);
then, on our server, the longest pause three text streams see while an image request joins them.

Both sides run the same GGUF and projector with one slot, the same context, batch and threads,
greedy, with the end-of-generation token banned (`logit_bias`) so every answer decodes exactly
--tokens tokens. Each round sends a new image (another colour: no side finds it cached) and runs
the sides in a rotating order. The table shows medians.

    python scripts/bench_vision.py --llama-server ~/.cache/llama-server-peer/0.3.36/bin/llama-server \\
        [--model tiny-vision] [--home ~/.cache/gpustack-tests/home] [--tokens 64] [--rounds 5]

The model must be in the store with its projector (the test suite makes `tiny-vision`: SmolLM2
with a tiny projector; with any real vision model the same holds).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import HEADERS, free_port, start_server, wait_ready  # noqa: E402

from gpustack_cli.models.gguf_meta import read_metadata  # noqa: E402
from gpustack_cli.models.store import ModelStore  # noqa: E402

QUESTION = "Describe this picture in detail."


def picture(round_: int, size: int) -> str:
    from PIL import Image, ImageDraw

    colour = ((round_ * 73) % 256, (round_ * 151) % 256, (round_ * 199) % 256)
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).ellipse((size // 8, size // 8, size - size // 8, size - size // 8), fill=colour)
    out = io.BytesIO()
    image.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def body(model: str, messages: list[dict], tokens: int, eos: int) -> dict:
    return {
        "model": model,
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "logit_bias": {str(eos): -100},
    }


def ask(url: str, payload: dict) -> tuple[float, float, str]:
    """(seconds to the first token, tokens per second after it, the text)."""
    started = time.perf_counter()
    first = last = 0.0
    count, text = 0, []
    with httpx.stream("POST", url + "/v1/chat/completions", json=payload, headers=HEADERS, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            delta = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
            if delta:
                now = time.perf_counter()
                first = first or now
                last = now
                count += 1
                text.append(delta)
    rate = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return first - started, rate, "".join(text)


def start_llama_server(binary: Path, model: Path, mmproj: Path, ctx: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # fmt: off
    args = [
        str(binary), "-m", str(model), "--mmproj", str(mmproj), "-c", str(ctx), "-np", "1",
        "-t", str(threads), "-tb", str(threads), "-b", "512", "-ub", "512", "--no-mmproj-offload",
        "--host", "127.0.0.1", "--port", str(port),
    ]
    # fmt: on
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/health", 300)
    return process, url


async def pause_under_image(url: str, model: str, eos: int, size: int) -> float:
    """The longest wait between two tokens of three text streams while an image request joins them."""
    async with httpx.AsyncClient(headers=HEADERS, timeout=600) as client:

        async def text_stream(i: int) -> float:
            payload = body(model, [{"role": "user", "content": f"Story {i}: tell me about the sea."}], 96, eos)
            last, longest = None, 0.0
            async with client.stream("POST", url + "/v1/chat/completions", json=payload) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and '"content"' in line:
                        now = time.perf_counter()
                        longest = max(longest, now - last) if last else 0.0
                        last = now
            return longest

        async def image() -> None:
            await asyncio.sleep(1.0)
            messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": picture(99, size)}}]}]
            messages[0]["content"].append({"type": "text", "text": QUESTION})
            await client.post(url + "/v1/chat/completions", json={**body(model, messages, 4, eos), "stream": False})

        *gaps, _ = await asyncio.gather(text_stream(1), text_stream(2), text_stream(3), image())
        return max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-vision")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("GPUSTACK_HOME", "~/.gpustack")).expanduser())
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--llama-server", type=Path, default=os.environ.get("LLAMA_SERVER"))
    args = parser.parse_args()

    store = ModelStore(args.home)
    manifest = store.get(args.model)
    folder = store.model_dir(args.model)
    model_path = folder / manifest.options["model_file"]
    mmproj = folder / manifest.options["mmproj_file"]
    eos = int(read_metadata(model_path)["tokenizer.ggml.eos_token_id"])

    common = ["--parallel", "1", "--ctx-size", str(args.ctx), "--threads", str(args.threads), "--preload", args.model]
    sides: dict[str, str] = {}
    processes = []
    ours, url = start_server(args.home, *common)
    processes.append(ours)
    sides["gpustack"] = url
    if args.llama_server and args.llama_server.exists():
        peer, peer_url = start_llama_server(args.llama_server, model_path, mmproj, args.ctx, args.threads)
        processes.append(peer)
        sides["llama-server"] = peer_url
    try:
        first: dict[str, list[float]] = {name: [] for name in sides}
        rate: dict[str, list[float]] = {name: [] for name in sides}
        again: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for round_ in range(args.rounds + 1):  # the first round warms each side up
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                turn = [
                    {"type": "image_url", "image_url": {"url": picture(round_, args.image_size)}},
                    {"type": "text", "text": QUESTION},
                ]
                messages = [{"role": "user", "content": turn}]
                ttft, speed, text = ask(sides[name], body(args.model, messages, args.tokens, eos))
                follow = [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": "And why?"}]
                ttft_again, _, _ = ask(sides[name], body(args.model, follow, 8, eos))
                if round_:
                    first[name].append(ttft)
                    rate[name].append(speed)
                    again[name].append(ttft_again)
        print(f"{args.model}, {args.image_size}x{args.image_size} PNG, {args.tokens} tokens, {args.rounds} rounds")
        print("| server | first token ms | next turn, same image: first token ms | tokens/s | vs llama-server |")
        print("|---|---|---|---|---|")
        for name in names:
            speed = statistics.median(rate[name])
            peer = statistics.median(rate["llama-server"]) if "llama-server" in rate else None
            ratio = f"{speed / peer:.2f}x" if peer else "–"
            print(
                f"| {name} | {statistics.median(first[name]) * 1000:.0f} | {statistics.median(again[name]) * 1000:.0f} "
                f"| {speed:.1f} | {ratio} |"
            )
        if "llama-server" not in sides:
            print("llama-server: not given (--llama-server PATH; shared/tools/build_llama_server.sh builds one)")
        gap = asyncio.run(pause_under_image(sides["gpustack"], args.model, eos, args.image_size))
        print(f"gpustack: longest pause of 3 text streams while an image request joins them: {gap * 1000:.0f} ms")
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
