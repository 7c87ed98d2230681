"""A question about an image: our server against llama.cpp's llama-server (`--mmproj`, the same
llama.cpp and libmtmd), in one run: time to the first token (the image's encode and the prompt's
read) and decode speed; then the same conversation's next turn (the image found in the cache);
then, on our server, the longest pause three text streams see while an image request joins them.

Both sides run the same GGUF and projector with one slot, the same context, batch and threads.
Three request shapes (`benchlib.chat_cases`): what chat clients send (sampled at 0.8, up to 256
tokens, the end of generation allowed; with and without a seed) and the favourable case (greedy,
the end of generation banned, exactly --tokens tokens). Each request sends an image no side has
seen; the sides take turns going first. First tokens are medians; tokens/s is all tokens after
the first over all decode time, per case.

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
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import HEADERS, Streamed, chat_cases, start_llama_server, start_server, stream_chat  # noqa: E402

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


async def pause_under_image(url: str, model: str, eos: int, size: int) -> float:
    """The longest wait between two tokens of three text streams while an image request joins them."""
    async with httpx.AsyncClient(headers=HEADERS, timeout=600) as client:

        async def text_stream(i: int) -> float:
            payload = {
                "model": model,
                "messages": [{"role": "user", "content": f"Story {i}: tell me about the sea."}],
                "max_tokens": 96,
                "stream": True,
                "logit_bias": {str(eos): -100},
            }
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
            await client.post(
                url + "/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": 4}
            )

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
        peer, peer_url = start_llama_server(
            args.llama_server,
            model_path,
            "--mmproj",
            str(mmproj),
            "-np",
            "1",
            "--no-mmproj-offload",
            ctx=args.ctx,
            threads=args.threads,
        )
        processes.append(peer)
        sides["llama-server"] = peer_url
    try:
        cases = chat_cases(args.tokens, eos)
        names = list(sides)
        runs: dict[tuple[str, str], list[Streamed]] = {(c, n): [] for c in cases for n in names}
        again: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.rounds + 1):  # the first round warms each side up
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for number, (case, fields) in enumerate(cases.items()):
                image = picture(round_ * len(cases) + number, args.image_size)  # new to every side
                for name in order:
                    turn = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": QUESTION}]
                    messages = [{"role": "user", "content": turn}]
                    answer = stream_chat(sides[name], {"model": args.model, "messages": messages, **fields})
                    if round_:
                        runs[(case, name)].append(answer)
                    if round_ and number == 0:  # the same conversation one exchange longer: the image cached
                        follow = [*messages, {"role": "assistant", "content": answer.text}]
                        follow.append({"role": "user", "content": "And why?"})
                        again[name].append(
                            stream_chat(sides[name], {"model": args.model, "messages": follow, **fields}).first
                        )
        print(f"{args.model}, {args.image_size}x{args.image_size} PNG, {args.rounds} rounds, a new image each request")
        print("| case | server | first token ms | tokens per answer | tokens/s | vs llama-server |")
        print("|---|---|---|---|---|---|")
        for case in cases:
            for name in names:
                got = runs[(case, name)]
                speed = sum(a.tokens - 1 for a in got) / sum(a.decode for a in got)
                peer = runs.get((case, "llama-server"))
                reference = sum(a.tokens - 1 for a in peer) / sum(a.decode for a in peer) if peer else None
                ratio = f"{speed / reference:.2f}x" if reference else "–"
                first = statistics.median(a.first for a in got) * 1000
                tokens = statistics.mean(a.tokens for a in got)
                print(f"| {case} | {name} | {first:.0f} | {tokens:.0f} | {speed:.1f} | {ratio} |")
        for name in names:
            cached = statistics.median(again[name]) * 1000
            print(f"{name}: the next turn about the same image (greedy), first token {cached:.0f} ms")
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
