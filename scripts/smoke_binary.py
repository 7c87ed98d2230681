"""Smoke test of a built gpustack binary, as the release workflow runs it before uploading: the
binary pulls the default chat model, serves it, and answers one chat from the openai client.

    python scripts/smoke_binary.py dist/gpustack/gpustack [--home DIR] [--model smollm2]

Only the openai package and httpx are needed beside the binary (no source tree, no engines).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary", type=Path)
    parser.add_argument("--home", type=Path, help="the store to use (default: a new one, so the pull is real)")
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="gpustack-smoke-"))
    env = {**os.environ, "GPUSTACK_HOME": str(home)}
    binary = str(args.binary.resolve())

    version = subprocess.run([binary, "version"], env=env, capture_output=True, text=True, timeout=120, check=True)
    print(version.stdout.strip())
    pulled = subprocess.run([binary, "pull", args.model], env=env, capture_output=True, text=True, timeout=1800)
    if pulled.returncode != 0 and "already exists" not in pulled.stderr:
        sys.exit(f"pull failed:\n{pulled.stderr}")
    port = free_port()
    server = subprocess.Popen([binary, "serve", "--no-pull", "--port", str(port)], env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("the server did not start")
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="smoke", max_retries=0, timeout=300)
        reply = client.chat.completions.create(
            model=args.model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
        )
        text = reply.choices[0].message.content
        if not text or reply.usage.completion_tokens < 1:
            sys.exit(f"no answer: {reply}")
        print(f"smoke test passed: {args.model} answered {text!r}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
