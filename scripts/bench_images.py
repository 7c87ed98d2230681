"""Seconds per image: our `/v1/images/generations` against the same diffusers pipeline called directly.

Without --model it builds the tests' tiny Stable Diffusion pipeline (random weights) so the run
needs no download; pass a real model (`gpustack pull hf:stabilityai/sd-turbo`) for real figures.

    python scripts/bench_images.py [--model NAME] [--size 256x256] [--steps 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import HEADERS, start_server  # noqa: E402

from gpustack_cli.config import Settings  # noqa: E402
from gpustack_cli.models.pull import Puller  # noqa: E402
from gpustack_cli.models.store import ModelStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--home", default=os.environ.get("GPUSTACK_HOME", str(Path.home() / ".gpustack")))
    args = parser.parse_args()
    settings = Settings.load(home=args.home)
    store = ModelStore(settings.home)
    model = args.model or "tiny-sd"
    if not store.exists(model):
        if args.model:
            Puller(settings).pull(model)
        else:
            from tests.support.tiny_diffusion import build_tiny_pipeline

            Puller(settings).pull(str(build_tiny_pipeline(Path(tempfile.mkdtemp()))), name=model)
    width, height = (int(v) for v in args.size.split("x"))

    import torch
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(str(store.model_dir(model)), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def direct(seed: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            image = pipe(
                "a lighthouse at dawn",
                width=width,
                height=height,
                num_inference_steps=args.steps,
                generator=torch.Generator("cpu").manual_seed(seed),
            ).images[0]
        image.save(Path(tempfile.mkdtemp()) / "x.png")  # what a caller does with it, as the API encodes
        return time.perf_counter() - started

    server, url = start_server(settings.home, "--preload", model)
    http = httpx.Client(base_url=url, timeout=None, headers=HEADERS)

    def api(seed: int) -> float:
        body = {
            "model": model,
            "prompt": "a lighthouse at dawn",
            "size": args.size,
            "num_inference_steps": args.steps,
            "seed": seed,
        }
        started = time.perf_counter()
        http.post("/v1/images/generations", json=body).raise_for_status()
        return time.perf_counter() - started

    try:
        direct(0), api(0)  # warm both
        ours, theirs = [], []
        for i in range(args.rounds):
            theirs.append(direct(i))
            ours.append(api(i))
    finally:
        server.terminate()
        server.wait(30)
    d, o = statistics.median(theirs), statistics.median(ours)
    print(f"model {model}, {args.size}, {args.steps} steps, medians of {args.rounds} rounds")
    print(f"{'':24}{'s per image':>12}")
    print(f"{'diffusers direct':24}{d:12.3f}")
    print(f"{'gpustack HTTP API':24}{o:12.3f}")
    print(f"{'ours / direct':24}{o / d:12.3f}  (target: at most 1.03)")


if __name__ == "__main__":
    main()
