"""A model split over llama.cpp's RPC servers: our server with the model loaded here, our server
with its layers split over two `gpustack rpc-server`s on loopback (the model in its child server),
and llama.cpp's llama-server with `--rpc` on the same two servers and the same split, in one run
(one side after another: an RPC server serves one client at a time).

On one machine the RPC servers share its cores with the server: this measures what the split
costs (the protocol, the copies, our child server's relay), not what more machines bring.

    python scripts/bench_rpc.py --llama-server ~/.cache/llama-server-peer-rpc/0.3.36/bin/llama-server \\
        [--model smollm2] [--gpu-layers 20] [--tokens 64] [--runs 3]
(llama-server built with -DGGML_RPC=ON: PEER_CMAKE_ARGS=-DGGML_RPC=ON shared/tools/build_llama_server.sh)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import chat_cases, free_port, start_llama_server, start_server, stream_chat  # noqa: E402

from gpustack_cli.models.gguf_meta import read_metadata  # noqa: E402
from gpustack_cli.models.store import ModelStore  # noqa: E402


def start_rpc_server(home: Path, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gpustack_cli", "rpc-server", "--port", str(port), "--threads", str(threads)],
        env={**os.environ, "GPUSTACK_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("rpc-server did not listen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("GPUSTACK_HOME", "~/.gpustack")).expanduser())
    parser.add_argument("--gpu-layers", type=int, default=20, help="layers offloaded to the RPC servers in all")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--llama-server", type=Path, default=os.environ.get("LLAMA_SERVER"))
    args = parser.parse_args()
    store = ModelStore(args.home)
    model_path = store.model_dir(args.model) / store.get(args.model).options["model_file"]
    eos = int(read_metadata(model_path)["tokenizer.ggml.eos_token_id"])
    common = ("--parallel", "1", "--ctx-size", str(args.ctx), "--threads", str(args.threads))
    cases = chat_cases(args.tokens, eos)
    peer_side = "llama-server, split over RPC"
    with ExitStack() as stack:
        rpcs = []
        for _ in range(2):
            process, endpoint = start_rpc_server(args.home, args.threads)
            stack.callback(process.kill)
            rpcs.append(endpoint)
        rpc = ",".join(rpcs)
        starts = {
            "ours, local (CPU)": lambda: start_server(args.home, "--preload", args.model, "--gpu-layers", "0", *common),
            "ours, split over RPC": lambda: start_server(
                args.home, "--preload", args.model, "--rpc", rpc, "--gpu-layers", str(args.gpu_layers), *common
            ),
        }
        if args.llama_server:
            starts[peer_side] = lambda: start_llama_server(
                args.llama_server,
                model_path,
                "--rpc",
                rpc,
                "-ngl",
                str(args.gpu_layers),
                "-np",
                "1",
                ctx=args.ctx,
                threads=args.threads,
            )
        # One side at a time: an RPC server serves one client at a time.
        rows: dict[tuple[str, str], tuple[float, float, float]] = {}
        for side, start in starts.items():
            process, url = start()
            try:
                warm_up = {"model": args.model, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4}
                stream_chat(url, warm_up)
                for case, fields in cases.items():
                    answers = [
                        stream_chat(
                            url,
                            {
                                "model": args.model,
                                "messages": [{"role": "user", "content": f"Run {run}: write a story about the sea."}],
                                **fields,
                            },
                        )
                        for run in range(args.runs)
                    ]
                    rate = sum(a.tokens - 1 for a in answers) / sum(a.decode for a in answers)
                    first = 1000 * sum(a.first for a in answers) / len(answers)
                    rows[case, side] = (first, sum(a.tokens for a in answers) / len(answers), rate)
            finally:
                process.terminate()
                process.wait(30)
    print(
        f"{args.model}: {args.gpu_layers} layers over 2 loopback RPC servers, the rest on this CPU; "
        f"{args.threads} threads each; one stream at a time, {args.runs} runs a case"
    )
    print("| case | server | first token ms | tokens per answer | tokens/s | vs llama-server |")
    print("|---|---|---|---|---|---|")
    for case in cases:
        peer = rows.get((case, peer_side))
        for side in starts:
            first, tokens, rate = rows[case, side]
            versus = f"{rate / peer[2]:.2f}x" if peer and side != peer_side else ""
            print(f"| {case} | {side} | {first:.0f} | {tokens:.0f} | {rate:.1f} | {versus} |")
    if not args.llama_server:
        print("llama-server: not given (--llama-server PATH, built with -DGGML_RPC=ON)")


if __name__ == "__main__":
    main()
